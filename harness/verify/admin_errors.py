"""The admin API's refusals, as RFC 7644 §3.12 SCIM errors that also carry their RFC 6750 §3.1
wire code for the `WWW-Authenticate` challenge."""

from __future__ import annotations

from typing import ClassVar

from scim2_models import ForbiddenException, SCIMException, UnauthorizedException

__all__ = ["REALM", "InvalidToken", "MissingToken", "NoPassthrough", "NotCovered", "challenge"]

REALM = "verify"


class MissingToken(UnauthorizedException):
    """401 without an error code: the request has no bearer token (RFC 6750 §3.1)."""

    error: ClassVar[str | None] = None


class InvalidToken(UnauthorizedException):
    """401 `invalid_token`: malformed, expired, revoked, wrong audience, session ended, or
    already used (RFC 6750 §3.1)."""

    error: ClassVar[str | None] = "invalid_token"


class NoPassthrough(ForbiddenException):
    """403: a user's own token, not an on-behalf-of token (no `act`, RFC 8693 §4.1)."""

    _default_detail = ("no passthrough: the admin API accepts only on-behalf-of tokens from "
                       "token exchange")


class NotCovered(ForbiddenException):
    """403 `insufficient_scope`: the token is valid but its authorization_details do not cover
    this request (RFC 6750 §3.1, RFC 9396)."""

    error: ClassVar[str | None] = "insufficient_scope"


def _quoted(text: str) -> str:
    """An RFC 6750 §3 `error_description`: printable ASCII without `"` or `\\`."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "'" for c in text)


def challenge(exception: SCIMException) -> str:
    """RFC 6750 §3: the Bearer challenge, with the error code and description when there is
    one (none for a request that carried no token)."""
    error = getattr(exception, "error", None)
    if error is None:
        return f'Bearer realm="{REALM}"'
    return (f'Bearer realm="{REALM}", error="{error}", '
            f'error_description="{_quoted(str(exception))}"')
