"""OAuth 2.0 error responses as the simulated Verify renders them (RFC 6749 §5.2).

One exception per wire code; `response()` renders the JSON body and status, so a handler raises
and the token endpoint answers exactly what the spec says.

    OAuthError ── InvalidRequest ─────────┬─ SessionEndedRequest   (+ "session_ended": true)
               ├─ InvalidGrant ───────────┴─ SessionEndedGrant     (+ "session_ended": true)
               ├─ InvalidClient, UnauthorizedClient, UnsupportedGrantType, InvalidScope,
               │  InvalidTarget, InvalidAuthorizationDetails
               ├─ AccessDenied ── AuthenticationRequestDenied (CIBA §13, HTTP 403)
               ├─ InvalidBindingMessage (CIBA §13; UnknownUserId and ExpiredLoginHintToken,
               │  the other §13 codes this tenant answers, are in harness/verify/ciba.py)
               └─ AuthorizationPending, SlowDown, ExpiredToken (CIBA §11)
    SessionEnded: the mixin of a refusal made *because the user's IdP session has ended* (ended,
    revoked or lapsed); only it puts `iia.protocol.SESSION_ENDED` in the body, so a client knows
    without reading `error_description`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Self

from starlette.responses import JSONResponse

from iia.protocol import SESSION_ENDED

if TYPE_CHECKING:
    from harness.verify.sessions import Session

__all__ = [
    "NO_STORE",
    "AccessDenied",
    "AuthenticationRequestDenied",
    "AuthorizationPending",
    "ExpiredToken",
    "InvalidAuthorizationDetails",
    "InvalidBindingMessage",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "OAuthError",
    "SessionEnded",
    "SessionEndedGrant",
    "SessionEndedRequest",
    "SlowDown",
    "UnauthorizedClient",
    "UnsupportedGrantType",
]


# RFC 6749 §5.1: on every response that carries a token or a token error
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class OAuthError(Exception):
    error: ClassVar[str] = "server_error"
    status: ClassVar[int] = 400

    def __init__(self, description: str, **extra: Any) -> None:
        super().__init__(description)
        self.description = description
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.description, **self.extra}

    def response(self) -> JSONResponse:
        headers = dict(NO_STORE)
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="verify"'
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    error = "invalid_target"


class AccessDenied(OAuthError):
    """At the token endpoint: HTTP 400 like every RFC 6749 §5.2 error (the policy's id rides in
    the body)."""

    error = "access_denied"


class AuthenticationRequestDenied(AccessDenied):
    """CIBA §13: `access_denied` at the backchannel authentication endpoint is HTTP 403."""

    status = 403


class InvalidAuthorizationDetails(OAuthError):
    """RFC 9396 §5: authorization_details is malformed or asks for what is not registered."""

    error = "invalid_authorization_details"


class InvalidBindingMessage(OAuthError):
    """OpenID CIBA Core §13: the binding_message is invalid or unacceptable (here: missing,
    or longer than the phone shows)."""

    error = "invalid_binding_message"


class AuthorizationPending(OAuthError):
    """OpenID CIBA §11: the user has not answered yet."""

    error = "authorization_pending"


class SlowDown(OAuthError):
    """OpenID CIBA §11: polling faster than the interval."""

    error = "slow_down"


class ExpiredToken(OAuthError):
    """OpenID CIBA §11: the auth_req_id expired before the user answered."""

    error = "expired_token"


class SessionEnded(OAuthError):
    """Mixin: the request was refused because the user's IdP session has ended (ended, revoked or
    lapsed). The body carries the extension member `iia.protocol.SESSION_ENDED` = true beside
    `error` (RFC 6749 §5.2 allows extension members); the wire code is the other base's."""

    @classmethod
    def because(cls, what: str, session: Session | None) -> Self:
        """`<what> has ended (<why>)`: the session's end reason, or that it lapsed (a lapsed
        session has none, and the store forgets lapsed sessions)."""
        why = session.end_reason if session is not None and session.end_reason else "it lapsed"
        return cls(f"{what} has ended ({why})")

    def body(self) -> dict[str, Any]:
        return {**super().body(), SESSION_ENDED: True}


class SessionEndedGrant(SessionEnded, InvalidGrant):
    """`invalid_grant` because the grant's session is over: the subject token's (RFC 8693) or the
    session a CIBA approval was asked for (CIBA §11)."""


class SessionEndedRequest(SessionEnded, InvalidRequest):
    """`invalid_request` at the backchannel authentication endpoint because the
    login_hint_token's session is over (CIBA §13)."""
