"""Sessions the MCP server has dropped: a user session that was revoked (CAEP session-revoked,
or the IdP saying so at token exchange) gets 401 at once, before any other check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["SessionRevocations"]


class SessionRevocations:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked: dict[str, tuple[float, str]] = {}
        self._first_refusal: dict[str, float] = {}
        self._listeners: list[Callable[[str, str], None]] = []

    def revoke(self, sid: str, reason: str) -> bool:
        """Drop a session; True when it was not dropped already."""
        with self._lock:
            if sid in self._revoked:
                return False
            self._revoked[sid] = (self._clock(), reason)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(sid, reason)
        return True

    def reason(self, sid: str) -> str | None:
        with self._lock:
            entry = self._revoked.get(sid)
        return entry[1] if entry else None

    def revoked_at(self, sid: str) -> float | None:
        with self._lock:
            entry = self._revoked.get(sid)
        return entry[0] if entry else None

    def refused(self, sid: str) -> None:
        """Note a request refused because its session was dropped (the first one counts)."""
        with self._lock:
            self._first_refusal.setdefault(sid, self._clock())

    def first_refusal(self, sid: str) -> float | None:
        with self._lock:
            return self._first_refusal.get(sid)

    def on_revoke(self, listener: Callable[[str, str], None]) -> None:
        with self._lock:
            self._listeners.append(listener)
