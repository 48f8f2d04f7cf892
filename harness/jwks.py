"""A remote JWKS, fetched over HTTP and cached. A token naming a key the cache lacks triggers a
refetch, at most once per `min_refresh` seconds, so unknown-kid floods cannot turn the caller
into a fetch amplifier."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from jwt import PyJWKSet
from jwt.exceptions import PyJWKSetError

__all__ = ["RemoteJwks"]


class RemoteJwks:
    def __init__(self, url: str, *, min_refresh: float = 1.0, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.min_refresh = min_refresh
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self.fetches = 0

    def _fetch(self) -> None:
        response = httpx.get(self.url, timeout=self.timeout)
        response.raise_for_status()
        try:
            jwks = PyJWKSet.from_dict(response.json())
            keys = {k.key_id: k.key for k in jwks.keys if k.key_id}
        except PyJWKSetError:
            keys = {}  # an empty set is a valid answer
        self._keys = keys
        self._fetched_at = self._clock()
        self.fetches += 1

    def keys(self, kid: str | None = None) -> dict[str, Any]:
        """kid -> public key; refetched when `kid` is unknown (rate-limited). Raises
        httpx.HTTPError when the JWKS cannot be fetched at all."""
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or (kid is not None and kid not in self._keys
                                            and now - self._fetched_at >= self.min_refresh):
                self._fetch()
            return dict(self._keys)
