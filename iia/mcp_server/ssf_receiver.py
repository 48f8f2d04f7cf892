"""The MCP server's SSF receiver (RFC 8935 push): a CAEP `session-revoked` SET from the
transmitter it subscribed to drops the session at once, so the agent's next call gets 401.

Every rule a pushed SET must pass (the subscribed Authorization header, `typ`, the algorithm
allowlist, a known key, iss, aud, one event, no `exp`, no top-level `sub`, `iat`, a `jti` not
accepted before) is `iia.ssf.SetValidator`'s, shared with the lab's other receivers; a refusal
is its RFC 8935 §2.3 error body.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from iia.protocol import CAEP_EVENT
from iia.sessions import SessionRevocations
from iia.ssf import SetClaims, SetRefused, SetValidator, Transmitter

__all__ = ["SESSION_REVOKED", "SsfPushReceiver"]

SESSION_REVOKED = CAEP_EVENT["session-revoked"]


class SsfPushReceiver:
    def __init__(self, *, audience: str, revocations: SessionRevocations) -> None:
        self.audience = audience
        self.revocations = revocations
        self._lock = threading.Lock()
        self.validator = SetValidator(audience)
        self.received: list[SetClaims] = []
        self.on_revoked: Callable[[str, str], None] | None = None

    def subscribe(self, issuer: str, jwks_uri: str, authorization: str | None = None) -> None:
        """Trust SETs from `issuer`, signed with keys at `jwks_uri`; when `authorization` is
        set, pushes must carry exactly that Authorization header (RFC 8935 §2)."""
        self.validator.trust(Transmitter(issuer, jwks_uri, authorization))

    def receive(self, claims: SetClaims) -> None:
        """Act on a SET the validator accepted (its jti once: a replay was refused)."""
        with self._lock:
            self.received.append(claims)
        event_type, event = next(iter(claims["events"].items()))
        if event_type != SESSION_REVOKED:
            return
        subject = claims.get("sub_id") or {}
        sid = (subject.get("session") or {}).get("id") if subject.get("format") == "complex" \
            else subject.get("id") if subject.get("format") == "opaque" else None
        if sid:
            reason = (event.get("reason_admin") or {}).get("en") if isinstance(event, dict) \
                else None
            self.revocations.revoke(str(sid), f"CAEP session-revoked: {reason or 'revoked'}")

    async def push(self, request: Request) -> Response:
        try:
            claims, _ = await self.validator.read(request)
        except SetRefused as exc:
            return exc.response()
        self.receive(claims)
        return Response(status_code=202)

    def close(self) -> None:
        self.validator.close()
