"""Server-side chat sessions: the browser holds only a random cookie; the user's tokens and the
conversation stay here. Tokens are refreshed (RFC 6749 §6) shortly before they expire."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import jwt

from iia.chat.cards import People

if TYPE_CHECKING:
    from anthropic.types import MessageParam

__all__ = ["TRANSCRIPT_LIMIT", "ChatSession", "ChatSessionStore"]

# what the chat page showed of this session's conversation, replayed after a reload: at most this
# many entries (a user line, an answer, a tool card's start or end, ...); the oldest go first
TRANSCRIPT_LIMIT = 400


@dataclass
class ChatSession:
    id: str = field(repr=False)
    email: str
    sub: str
    sid: str
    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    expires_at: float = 0.0
    created_at: float = field(default_factory=time.time)
    messages: list[MessageParam] = field(default_factory=list)
    ended: str | None = None  # why the session ended, when it did
    # the IDs of the user's groups, as the IdP's latest ID token asserts them (`groups`)
    groups: tuple[str, ...] = ()
    # who is who, from what the agent read in this conversation (tool cards name people)
    people: People = field(default_factory=People, repr=False)
    # the conversation as the page showed it, in order: {"event": ..., "data": {...}} entries
    # (`record`), the same events /chat streamed; never a token
    transcript: list[dict[str, Any]] = field(default_factory=list, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def update_tokens(self, body: dict[str, Any], now: float) -> None:
        self.access_token = body["access_token"]
        self.refresh_token = body.get("refresh_token", self.refresh_token)
        if body.get("id_token"):
            self.id_token = body["id_token"]
            self.groups = _groups(body["id_token"])
        self.expires_at = now + float(body.get("expires_in", 300))


    def record(self, event: str, data: dict[str, Any]) -> None:
        """Keep one thing the page was shown (`event` as /chat streams it), so a reloaded page
        can show the conversation again. Consecutive text deltas of one answer are joined."""
        last = self.transcript[-1] if self.transcript else None
        if event == "text" and last is not None and last["event"] == "text":
            last["data"] = {"delta": last["data"]["delta"] + str(data.get("delta", ""))}
            return
        self.transcript.append({"event": event, "data": data})
        if len(self.transcript) > TRANSCRIPT_LIMIT:
            del self.transcript[:len(self.transcript) - TRANSCRIPT_LIMIT]


def _groups(id_token: str) -> tuple[str, ...]:
    """The `groups` claim of an ID token this app received from the token endpoint itself (the
    first one's signature is checked at sign-in; a refreshed one comes over the same direct
    channel, OpenID Connect Core §3.1.3.7). Anything but a list of strings is no groups."""
    try:
        groups = jwt.decode(id_token, options={"verify_signature": False}).get("groups")
    except jwt.PyJWTError:
        return ()
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return ()
    return tuple(groups)


class ChatSessionStore:
    def __init__(self, *, token_endpoint: Callable[[], str], client_id: str, ttl: float,
                 http: httpx.Client | None = None, clock: Callable[[], float] = time.time):
        self._token_endpoint = token_endpoint
        self.client_id = client_id
        self.ttl = ttl
        self._http = http or httpx.Client(timeout=10)
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, ChatSession] = {}

    def create(self, tokens: dict[str, Any]) -> ChatSession:
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        session = ChatSession(id=secrets.token_urlsafe(32), email=str(claims.get("email", "")),
                              sub=str(claims["sub"]), sid=str(claims["sid"]),
                              access_token=tokens["access_token"], created_at=self._clock())
        session.update_tokens(tokens, self._clock())
        with self._lock:
            now = self._clock()  # bounded (issue #20): lapsed sessions go as a new one comes
            for sid in [k for k, v in self._sessions.items() if now - v.created_at > self.ttl]:
                del self._sessions[sid]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> ChatSession | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and self._clock() - session.created_at > self.ttl:
                del self._sessions[session_id]
                return None
            return session

    def remove(self, session_id: str) -> ChatSession | None:
        with self._lock:
            return self._sessions.pop(session_id, None)

    def token(self, session: ChatSession) -> str:
        """The access token, refreshed first when it expires within a minute. Blocking: call it
        from a worker thread. One refresh at a time per session (a refresh token is single-use:
        two concurrent refreshes would look like token theft to the IdP)."""
        if session.expires_at - self._clock() > 60 or not session.refresh_token:
            return session.access_token
        with session.lock:
            if session.expires_at - self._clock() > 60 or not session.refresh_token:
                return session.access_token  # another thread refreshed it meanwhile
            try:
                response = self._http.post(self._token_endpoint(), data={
                    "grant_type": "refresh_token", "refresh_token": session.refresh_token,
                    "client_id": self.client_id})
            except httpx.HTTPError:
                return session.access_token  # the MCP server will say if it is no longer good
            if response.status_code == 200:
                session.update_tokens(response.json(), self._clock())
            return session.access_token
