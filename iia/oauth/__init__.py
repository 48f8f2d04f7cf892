"""OAuth 2.0 client side: token endpoint calls and their typed errors."""

from __future__ import annotations

from iia.oauth.errors import (
    AccessDeniedError,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidTargetError,
    OAuthError,
    error_from_response,
)

__all__ = [
    "AccessDeniedError",
    "InvalidClientError",
    "InvalidGrantError",
    "InvalidRequestError",
    "InvalidTargetError",
    "OAuthError",
    "error_from_response",
]
