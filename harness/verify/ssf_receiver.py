"""The tenant's SSF receiver: CAEP `session-revoked` pushed by a transmitter (RFC 8935) ends the
session, so its access tokens stop validating (introspection: inactive), its token exchanges
fail with `invalid_grant`, and its on-behalf-of tokens get 401 at the admin API.

Pushed SETs are validated by `iia.ssf.SetValidator` (the one validator every receiver in the lab
uses); every refusal is recorded in the audit trail with its RFC 8935 error code. A SET whose
`jti` was accepted before is refused (`invalid_request`) and not acted on twice.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from harness.verify.audit import AuditTrail, Decision
from harness.verify.directory import Directory
from harness.verify.sessions import SessionStore
from iia.ssf import AlreadyReceived, SetRefused, SetValidator, Transmitter

KEEP_RECEIVED = 2000  # SETs remembered with what was done about them

__all__ = ["SESSION_REVOKED", "SsfReceiver"]

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


@dataclass
class ReceivedSet:
    jti: str
    event_type: str
    acted_on: list[str]  # sids ended


class SsfReceiver:
    def __init__(self, *, issuer: str, directory: Directory, sessions: SessionStore,
                 audit: AuditTrail) -> None:
        self.audience = issuer
        self.issuer = issuer
        self.directory = directory
        self.sessions = sessions
        self.audit = audit
        self._lock = threading.Lock()
        self.validator = SetValidator(self.audience)
        self.received: dict[str, ReceivedSet] = {}

    def trust(self, transmitter_issuer: str, jwks_uri: str,
              authorization: str | None = None) -> None:
        """Subscribe to a transmitter: accept its SETs, signed by keys at `jwks_uri`; with
        `authorization`, pushes must carry exactly that Authorization header."""
        self.validator.trust(Transmitter(transmitter_issuer, jwks_uri, authorization))

    @contextlib.contextmanager
    def trusting(self, transmitter_issuer: str, jwks_uri: str,
                 authorization: str | None = None) -> Iterator[None]:
        """Trust another transmitter for a while (tests), then the one trusted before."""
        before = self.validator.trusted
        self.trust(transmitter_issuer, jwks_uri, authorization)
        try:
            yield
        finally:
            self.validator.trust(before)

    async def push(self, request: Request) -> Response:
        try:
            claims, _ = await self.validator.read(request)
        except AlreadyReceived as exc:
            return exc.response()  # acknowledged again, acted on once
        except SetRefused as exc:
            self.audit.record(Decision(kind="ssf", outcome="refused", error=exc.err,
                                       reason=exc.description))
            return exc.response()
        self.receive(claims)
        return Response(status_code=202)

    def receive(self, claims: Mapping[str, Any]) -> ReceivedSet:
        jti = str(claims["jti"])
        event_type, event = next(iter(claims["events"].items()))
        with self._lock:
            seen = self.received.get(jti)
            if seen is not None:
                return seen  # acknowledged again, acted on once
            record = ReceivedSet(jti=jti, event_type=event_type, acted_on=[])
            self.received[jti] = record
            while len(self.received) > KEEP_RECEIVED:  # bounded (issue #20): the newest
                del self.received[next(iter(self.received))]  # the validator still knows it
        if event_type == SESSION_REVOKED:
            subject = claims.get("sub_id") or (event or {}).get("subject") or {}
            reason = _reason(event)
            record.acted_on = self._revoke(subject, reason)
        self.audit.record(Decision(kind="ssf", outcome="accepted", reason=event_type,
                                   jti=jti, details={"sessions_ended": len(record.acted_on)}))
        return record

    def _revoke(self, subject: Mapping[str, Any], reason: str) -> list[str]:
        fmt = subject.get("format")
        if fmt == "complex":
            session = subject.get("session") or {}
            if session.get("id"):
                return self._end_session(str(session["id"]), reason, subject.get("user"))
            return self._revoke(subject.get("user") or {}, reason)
        if fmt == "opaque" and subject.get("id"):
            return self._end_session(str(subject["id"]), reason, None)
        if fmt == "email" and subject.get("email"):
            user = self.directory.user_by_username(str(subject["email"]))
            return self.sessions.end_all_for_user(user.id, reason) if user and user.id else []
        if fmt == "iss_sub" and subject.get("iss") == self.issuer and subject.get("sub"):
            return self.sessions.end_all_for_user(str(subject["sub"]), reason)
        return []

    def _end_session(self, sid: str, reason: str, user: Mapping[str, Any] | None) -> list[str]:
        session = self.sessions.get(sid)
        if session is None:
            return []
        if user and user.get("format") == "email" and user.get("email") != session.email:
            return []  # the SET names a session of someone else: do nothing
        return [sid] if self.sessions.end(sid, reason) else []


def _reason(event: Any) -> str:
    if isinstance(event, dict):
        admin = event.get("reason_admin")
        if isinstance(admin, dict) and admin:
            return "CAEP session-revoked: " + str(next(iter(admin.values())))
        if isinstance(admin, str):
            return "CAEP session-revoked: " + admin
    return "CAEP session-revoked"
