"""OAuth 2.0 error responses (RFC 6749 §5.2), typed by their `error` code.

`error_from_response` turns a token-endpoint error body into the subclass that carries its code,
so callers branch on types (`except InvalidClientError`) and tests assert on `.code`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from iia.errors import IIAError

__all__ = [
    "AccessDeniedError",
    "InvalidClientError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidTargetError",
    "OAuthError",
    "error_from_response",
]


class OAuthError(IIAError):
    """An OAuth error returned by the authorization server (`error` + `error_description`)."""

    code: ClassVar[str] = "server_error"
    status = 400

    def __init__(self, description: str, *, code: str | None = None, dependency: str = "idp",
                 upstream_status: int | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(description, dependency=dependency,
                         upstream_code=str(upstream_status) if upstream_status else None)
        if code is not None:
            self.code = code  # an error code we have no subclass for keeps its wire value
        self.extra = dict(extra or {})

    @property
    def policy_id(self) -> str | None:
        """The id of the IdP policy that refused (Verify puts it beside `error`)."""
        policy = self.extra.get("policy_id")
        return str(policy) if policy else None

    @property
    def ends_session(self) -> bool:
        """The IdP refused because the user's session is over (RFC 8693 has no code of its
        own for this: it is `invalid_grant` about the subject token's session)."""
        return self.code == "invalid_grant" and "session" in self.description


class InvalidRequestError(OAuthError):
    code = "invalid_request"


class InvalidClientError(OAuthError):
    """Client authentication failed: unknown client, or a secret that is wrong or stale."""

    code = "invalid_client"
    status = 401


class InvalidGrantError(OAuthError):
    code = "invalid_grant"


class AccessDeniedError(OAuthError):
    code = "access_denied"
    status = 403


class InvalidTargetError(OAuthError):
    """RFC 8693 §2.2.2: the requested audience/resource is unknown or not allowed."""

    code = "invalid_target"


_BY_CODE: dict[str, type[OAuthError]] = {
    cls.code: cls
    for cls in (InvalidRequestError, InvalidClientError, InvalidGrantError, AccessDeniedError,
                InvalidTargetError)
}


def error_from_response(status: int, body: Any) -> OAuthError:
    """Build the typed error for an RFC 6749 §5.2 error body (or a body that is not one)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return OAuthError(f"the identity provider answered HTTP {status} without an OAuth error",
                          upstream_status=status)
    code = body["error"]
    description = body.get("error_description") or code
    extra = {k: v for k, v in body.items() if k not in ("error", "error_description")}
    cls = _BY_CODE.get(code)
    if cls is None:
        return OAuthError(str(description), code=code, upstream_status=status, extra=extra)
    return cls(str(description), upstream_status=status, extra=extra)
