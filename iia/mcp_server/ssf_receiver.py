"""The MCP server's SSF receiver (RFC 8935 push): a CAEP `session-revoked` SET from a
transmitter it subscribed to drops the session at once, so the agent's next call gets 401.

Two transmitters, each with its own validator and push path: Antenna (iia's own, `/ssf/events`)
and the identity provider's (`/ssf/idp/events`, subscribed at start by
iia.mcp_server.ssf_subscription). A drop from the IdP's SET is emitted as `ssf:session_revoked`.
`from_set()` tells a revocation listener that the drop it hears of came from a SET (so the MCP
server does not publish again what a transmitter just said).

Every rule a pushed SET must pass (the subscribed Authorization header, `typ`, the algorithm
allowlist, a known key, iss, aud, one event, no `exp`, no top-level `sub`, `iat`, a `jti` not
accepted before) is `iia.ssf.SetValidator`'s, shared with the lab's other receivers; a refusal
is its RFC 8935 §2.3 error body.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from iia.events import EventBus
from iia.protocol import CAEP_EVENT
from iia.sessions import SessionRevocations
from iia.ssf import SetClaims, SetRefused, SetValidator, Transmitter

__all__ = ["SESSION_REVOKED", "SsfPushReceiver"]

_RECEIVING = threading.local()

SESSION_REVOKED = CAEP_EVENT["session-revoked"]


class SsfPushReceiver:
    def __init__(self, *, audience: str, revocations: SessionRevocations,
                 events: EventBus | None = None) -> None:
        self.audience = audience
        self.revocations = revocations
        self.events = events
        self._lock = threading.Lock()
        self.validator = SetValidator(audience)  # Antenna's SETs
        self.idp_validator = SetValidator(audience)  # the identity provider's SETs
        self.received: list[SetClaims] = []
        self._closed = False
        self.on_revoked: Callable[[str, str], None] | None = None

    def subscribe(self, issuer: str, jwks_uri: str, authorization: str | None = None) -> None:
        """Trust SETs from `issuer`, signed with keys at `jwks_uri`; when `authorization` is
        set, pushes must carry exactly that Authorization header (RFC 8935 §2)."""
        self.validator.trust(Transmitter(issuer, jwks_uri, authorization))

    @staticmethod
    def from_set() -> bool:
        """True inside `receive`: the revocation under way was said by a transmitter."""
        return bool(getattr(_RECEIVING, "active", False))

    def receive(self, claims: SetClaims) -> str | None:
        """Act on a SET the validator accepted (its jti once: a replay was refused); the sid
        dropped, if any."""
        with self._lock:
            self.received.append(claims)
            del self.received[:-1000]  # bounded: the newest thousand
        event_type, event = next(iter(claims["events"].items()))
        if event_type != SESSION_REVOKED:
            return None
        subject = claims.get("sub_id") or {}
        sid = (subject.get("session") or {}).get("id") if subject.get("format") == "complex" \
            else subject.get("id") if subject.get("format") == "opaque" else None
        if not sid:
            return None
        reason = (event.get("reason_admin") or {}).get("en") if isinstance(event, dict) \
            else None
        _RECEIVING.active = True
        try:
            dropped = self.revocations.revoke(str(sid),
                                              f"CAEP session-revoked: {reason or 'revoked'}")
        finally:
            _RECEIVING.active = False
        return str(sid) if dropped else None

    def _closing(self) -> Response | None:
        """A push that arrives while the server shuts down: 503, the transmitter retries."""
        if not self._closed:
            return None
        return JSONResponse({"err": "temporarily_unavailable", "description": "the MCP server "
                             "is shutting down; send the SET again later"}, status_code=503)

    async def push(self, request: Request) -> Response:
        if (closing := self._closing()) is not None:
            return closing
        try:
            claims, _ = await self.validator.read(request)
        except SetRefused as exc:
            return exc.response()
        self.receive(claims)
        return Response(status_code=202)

    async def idp_push(self, request: Request) -> Response:
        """A SET from the identity provider's transmitter; a session it ends is dropped and
        `ssf:session_revoked` emitted before the 202."""
        if (closing := self._closing()) is not None:
            return closing
        try:
            claims, _ = await self.idp_validator.read(request)
        except SetRefused as exc:
            return exc.response()
        sid = self.receive(claims)
        if sid is not None and self.events is not None:
            event = next(iter(claims["events"].values()))
            reason = (event.get("reason_admin") or {}).get("en") or "session revoked"
            self.events.emit("ssf:session_revoked", outcome="denied", session_id=sid,
                             reason=f"the identity provider ended the session: {reason}",
                             details={"transmitter": claims["iss"], "jti": claims["jti"]})
        return Response(status_code=202)

    def close(self) -> None:
        self._closed = True
        self.validator.close()
        self.idp_validator.close()
