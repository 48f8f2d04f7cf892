"""Sessions the MCP server has dropped: a user session that was revoked (CAEP session-revoked,
or the IdP saying so at token exchange) gets 401 at once, before any other check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["REMEMBER_SECONDS", "SessionRevocations"]


REMEMBER_SECONDS = 86_400.0  # a day: far longer than any access token of a dropped session lives


class SessionRevocations:
    """Bounded (issue #20): a dropped session is remembered `remember` seconds (default a day,
    longer than any access token that names it lives; the IdP mints no new one for it), then
    forgotten when another session is dropped."""

    def __init__(self, clock: Callable[[], float] = time.time,
                 remember: float = REMEMBER_SECONDS) -> None:
        self._clock = clock
        self.remember = remember
        self._lock = threading.Lock()
        self._revoked: dict[str, tuple[float, str]] = {}
        self._first_refusal: dict[str, float] = {}
        self._listeners: list[Callable[[str, str], None]] = []

    def revoke(self, sid: str, reason: str) -> bool:
        """Drop a session; True when it was not dropped already."""
        with self._lock:
            if sid in self._revoked:
                return False
            now = self._clock()
            for old in [k for k, (at, _) in self._revoked.items() if now - at > self.remember]:
                del self._revoked[old]
                self._first_refusal.pop(old, None)
            self._revoked[sid] = (now, reason)
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
