"""Shared Signals (SSF 1.0) receiving side: the one validator of pushed Security Event Tokens
(RFC 8417, RFC 8935) that every receiver uses, the product's and the harness's."""

from __future__ import annotations

from iia.ssf.set_validation import (
    ALLOWED_ALGORITHMS,
    AccessDenied,
    AlreadyReceived,
    AuthenticationFailed,
    InvalidAudience,
    InvalidIssuer,
    InvalidKey,
    InvalidRequest,
    SetClaims,
    SetRefused,
    SetValidator,
    Transmitter,
    TransmitterKeysUnavailable,
)

__all__ = ["ALLOWED_ALGORITHMS", "AccessDenied", "AlreadyReceived", "AuthenticationFailed",
           "InvalidAudience", "InvalidIssuer", "InvalidKey", "InvalidRequest", "SetClaims",
           "SetRefused", "SetValidator", "Transmitter", "TransmitterKeysUnavailable"]
