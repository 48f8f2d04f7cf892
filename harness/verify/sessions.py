"""IdP sessions. Every token the tenant issues carries its session's `sid` and dies with it.

A session ends at logout, when the user is deactivated or has their sessions revoked through the
admin API, and when a CAEP `session-revoked` event arrives at the SSF receiver. A session made
for a short-lived purpose (the one behind a CIBA approval's receipt) is created with a lifetime:
it lapses on its own, quietly (no listener hears of it, so no CAEP event), and lapsed sessions are
dropped from memory as new ones are created.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.listeners import Listeners

__all__ = ["Session", "SessionStore"]


@dataclass
class Session:
    sid: str
    user_id: str
    email: str
    client_id: str
    created_at: float
    ended_at: float | None = None
    end_reason: str | None = None
    expires_at: float | None = None
    clock: Callable[[], float] = field(default=time.time, repr=False, compare=False)

    @property
    def alive(self) -> bool:
        return self.ended_at is None and not self.lapsed

    @property
    def lapsed(self) -> bool:
        return self.expires_at is not None and self.clock() >= self.expires_at


class SessionStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._listeners: Listeners[[Session]] = Listeners()

    def create(self, user_id: str, email: str, client_id: str,
               lifetime: float | None = None) -> Session:
        now = self._clock()
        session = Session(sid=secrets.token_urlsafe(12), user_id=user_id, email=email,
                          client_id=client_id, created_at=now,
                          expires_at=None if lifetime is None else now + lifetime,
                          clock=self._clock)
        with self._lock:
            for sid in [s.sid for s in self._sessions.values() if s.lapsed]:
                del self._sessions[sid]
            self._sessions[session.sid] = session
        return session

    def get(self, sid: str) -> Session | None:
        with self._lock:
            return self._sessions.get(sid)

    def alive(self, sid: str | None) -> bool:
        session = self.get(sid) if sid else None
        return session is not None and session.alive

    def end(self, sid: str, reason: str) -> bool:
        """End a session; True when it was alive (so the caller knows it acted)."""
        with self._lock:
            session = self._sessions.get(sid)
            if session is None or not session.alive:
                return False
            session.ended_at = self._clock()
            session.end_reason = reason
        self._listeners.notify(session)
        return True

    def end_all_for_user(self, user_id: str, reason: str) -> list[str]:
        with self._lock:
            sids = [s.sid for s in self._sessions.values() if s.user_id == user_id and s.alive]
        return [sid for sid in sids if self.end(sid, reason)]

    def end_where(self, which: Callable[[Session], bool], reason: str) -> list[str]:
        """End every live session `which` picks; the sids that ended."""
        with self._lock:
            sids = [s.sid for s in self._sessions.values() if s.alive and which(s)]
        return [sid for sid in sids if self.end(sid, reason)]

    def sessions_of(self, user_id: str) -> list[Session]:
        with self._lock:
            return [s for s in self._sessions.values() if s.user_id == user_id]

    def on_end(self, listener: Callable[[Session], None]) -> Callable[[], None]:
        """Be told of every session that ends; returns the unsubscribe."""
        return self._listeners.add(listener)
