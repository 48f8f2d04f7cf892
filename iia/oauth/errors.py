"""OAuth 2.0 error responses (RFC 6749 §5.2), typed by their `error` code.

`error_from_response` turns a token-endpoint error body into the subclass that carries its code,
so callers branch on types (`except InvalidClientError`) and tests assert on `.code`. The IdP's
explicit "the user's session has ended" member (`iia.protocol.SESSION_ENDED`) becomes the typed
`session_ended` attribute: nothing reads it out of the description.
"""

from __future__ import annotations

from collections.abc import Mapping

from iia.errors import IIAError
from iia.protocol import SESSION_ENDED

__all__ = [
    "AccessDeniedError",
    "InvalidClientError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidTargetError",
    "OAuthError",
    "error_from_response",
]


class OAuthError(IIAError, status=400, dependency="idp"):
    """An OAuth error returned by the authorization server (`error` + `error_description`).
    `extra` holds the body's other members; `session_ended` is True only when the IdP said, in
    its `session_ended` member, that it refused because the user's session is over."""

    def __init__(self, description: str, *, code: str | None = None,
                 upstream_status: int | None = None,
                 extra: Mapping[str, object] | None = None) -> None:
        super().__init__(description,
                         upstream_code=str(upstream_status) if upstream_status else None)
        if code is not None:
            self.code = code  # an error code we have no subclass for keeps its wire value
        self.extra: dict[str, object] = dict(extra or {})
        self.session_ended: bool = self.extra.get(SESSION_ENDED) is True

    @property
    def policy_id(self) -> str | None:
        """The id of the IdP policy that refused (Verify puts it beside `error`)."""
        policy = self.extra.get("policy_id")
        return str(policy) if policy else None

    @property
    def ends_session(self) -> bool:
        """Same as `session_ended` (the name older callers use)."""
        return self.session_ended


class InvalidRequestError(OAuthError, code="invalid_request"):
    """The request is malformed (a parameter missing, repeated or unsupported)."""


class InvalidClientError(OAuthError, code="invalid_client", status=401):
    """Client authentication failed: unknown client, or a secret that is wrong or stale."""


class InvalidGrantError(OAuthError, code="invalid_grant"):
    """The grant (the subject or actor token, the code, the auth_req_id) is not good."""


class AccessDeniedError(OAuthError, code="access_denied", status=403):
    """The IdP's policy refused (its id in `policy_id`), or the user denied."""


class InvalidTargetError(OAuthError, code="invalid_target"):
    """RFC 8693 §2.2.2: the requested audience/resource is unknown or not allowed."""


_BY_CODE: dict[str, type[OAuthError]] = {
    cls.code: cls
    for cls in (InvalidRequestError, InvalidClientError, InvalidGrantError, AccessDeniedError,
                InvalidTargetError)
}


def error_from_response(status: int, body: object) -> OAuthError:
    """Build the typed error for an RFC 6749 §5.2 error body (or a body that is not one)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return OAuthError(f"the identity provider answered HTTP {status} without an OAuth error",
                          upstream_status=status)
    code = str(body["error"])
    description = body.get("error_description") or code
    extra = {str(k): v for k, v in body.items() if k not in ("error", "error_description")}
    cls = _BY_CODE.get(code)
    if cls is None:
        return OAuthError(str(description), code=code, upstream_status=status, extra=extra)
    return cls(str(description), upstream_status=status, extra=extra)
