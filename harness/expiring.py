"""A thread-safe set whose members expire: spent token ids, revoked jtis, recently rotated
secrets. Expired members are pruned now and then (not on every call), and never count as
members in between."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

__all__ = ["ExpiringSet"]


class ExpiringSet:
    def __init__(self, clock: Callable[[], float] = time.time, prune_every: float = 5.0) -> None:
        self._clock = clock
        self._prune_every = prune_every
        self._lock = threading.Lock()
        self._until: dict[Hashable, float] = {}
        self._pruned = 0.0

    def _prune(self, now: float) -> None:
        if now - self._pruned > self._prune_every:
            self._until = {k: t for k, t in self._until.items() if t > now}
            self._pruned = now

    def add(self, key: Hashable, until: float) -> bool:
        """Add `key` until `until`; False when it is already a member (checked and added
        atomically, so exactly one of two racing callers wins)."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            if self._until.get(key, 0.0) > now:
                return False
            self._until[key] = until
            return True

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return self._until.get(key, 0.0) > self._clock()
