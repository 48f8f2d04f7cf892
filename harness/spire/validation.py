"""JWT-SVID validation (SPIFFE JWT-SVID specification §3, §4), by py-spiffe.

Used by the Workload API's ValidateJWTSVID and by every relying party in the harness that accepts
a JWT-SVID (the simulated Verify's token exchange takes one as the actor token). py-spiffe's
`JwtSvid.parse_and_validate` does the validation (§4: an allowed asymmetric `alg`, `typ` JWT or
JOSE, a `kid` of the bundle, the signature, `exp`, `aud` contains the audience, `sub` a SPIFFE ID
of the bundle's trust domain) against a `JwtBundle` of the subject's trust domain; this module
picks that bundle, adds what py-spiffe 0.3.2 does not do, and says in one sentence why a token
failed:

* `_required_claims`: §3 requires `sub`, `aud` and `exp`; py-spiffe 0.3.2 raises `KeyError`
  (not one of its errors) on a token without `exp` that is otherwise valid;
* `_jwt_bundle`: only asymmetric public keys enter the bundle (py-spiffe reads each key's PEM);
* `_not_expired_at`: py-spiffe checks `exp` on the wall clock only; a caller with its own clock
  (`now`) gets that clock's verdict too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from spiffe.bundle.jwt_bundle.errors import AuthorityNotFoundError
from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle
from spiffe.errors import PySpiffeError
from spiffe.spiffe_id.spiffe_id import SpiffeId, TrustDomain
from spiffe.svid.errors import InvalidAlgorithmError, InvalidTypeError
from spiffe.svid.jwt_svid import JwtSvid

__all__ = ["SvidValidationError", "trust_domain_of", "validate_jwt_svid"]

_PUBLIC_KEYS = (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey,
                ed448.Ed448PublicKey)
_REQUIRED = ("sub", "aud", "exp")  # JWT-SVID §3


class SvidValidationError(ValueError):
    """The token is not a valid JWT-SVID for this audience; the message says why."""


def trust_domain_of(spiffe_id: str) -> str:
    """The trust domain of a SPIFFE ID (SPIFFE-ID §2), parsed by py-spiffe."""
    try:
        return SpiffeId(spiffe_id).trust_domain.name
    except PySpiffeError as exc:
        raise SvidValidationError(f"subject {spiffe_id!r} is not a SPIFFE ID: {exc}") from exc


def validate_jwt_svid(
    token: str,
    bundles: Mapping[str, Mapping[str, Any]],
    audience: str,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Validate `token` against `bundles` (trust domain -> {kid: public key}); return its claims.

    Raises SvidValidationError with a human-readable reason on any failure.
    """
    claims = _unverified_claims(token)
    _required_claims(claims)
    bundle = _jwt_bundle(trust_domain_of(str(claims["sub"])), bundles)
    try:
        svid = JwtSvid.parse_and_validate(token, bundle, {audience})
    except PySpiffeError as exc:
        raise SvidValidationError(_why(exc, audience)) from exc
    _not_expired_at(svid.expiry, now)
    return claims  # the claims of exactly the token whose signature just verified


def _unverified_claims(token: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise SvidValidationError(f"malformed token: {exc}") from exc
    return claims


def _required_claims(claims: Mapping[str, Any]) -> None:
    """JWT-SVID §3: `sub`, `aud` and `exp` are required (and `sub` is a string)."""
    missing = [c for c in _REQUIRED if c not in claims]
    if missing:
        raise SvidValidationError(f"token has no {', '.join(missing)} claim (JWT-SVID §3 "
                                  "requires sub, aud and exp)")
    if not isinstance(claims["sub"], str):
        raise SvidValidationError("token has no subject")


def _jwt_bundle(trust_domain: str, bundles: Mapping[str, Mapping[str, Any]]) -> JwtBundle:
    """py-spiffe's JwtBundle of the subject's trust domain: its asymmetric public keys by kid."""
    keys = bundles.get(trust_domain)
    if keys is None:
        raise SvidValidationError(f"no bundle for trust domain {trust_domain!r}")
    return JwtBundle(TrustDomain(trust_domain),
                     {kid: key for kid, key in keys.items() if isinstance(key, _PUBLIC_KEYS)})


def _not_expired_at(expiry: int, now: float | None) -> None:
    """`exp` against the caller's clock, when it has one (py-spiffe used the wall clock)."""
    if now is not None and expiry <= now:
        raise SvidValidationError("token has expired")


def _why(exc: PySpiffeError, audience: str) -> str:
    """py-spiffe's error, in this module's words (its pyjwt cause says which check failed)."""
    cause = exc.__cause__
    if isinstance(cause, jwt.ExpiredSignatureError):
        return "token has expired"
    if isinstance(cause, jwt.InvalidAudienceError):
        return f"audience {audience!r} is not in the token's audiences"
    if isinstance(cause, jwt.InvalidSignatureError):
        return "signature does not verify with the bundle key"
    if isinstance(exc, InvalidAlgorithmError):
        return f"algorithm is not allowed for JWT-SVIDs ({exc})"
    if isinstance(exc, InvalidTypeError):
        return f"token type is not a JWT-SVID's ({exc})"
    if isinstance(exc, AuthorityNotFoundError):
        return f"key is not in the bundle of the token's trust domain ({exc})"
    return f"invalid token: {exc}"
