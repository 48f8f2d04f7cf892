"""JWT-SVID validation (SPIFFE JWT-SVID specification §3, §4).

Used by the Workload API's ValidateJWTSVID and by every relying party in the harness that accepts
a JWT-SVID (the simulated Verify's token exchange takes one as the actor token). A token is valid
when its header names an allowed asymmetric algorithm and a `kid` in the bundle of the trust
domain its `sub` belongs to, the signature verifies with that key, it has not expired, and its
`aud` contains the audience the relying party expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt

__all__ = ["ALLOWED_ALGORITHMS", "SvidValidationError", "trust_domain_of", "validate_jwt_svid"]

# The JWT-SVID spec allows these JOSE algorithms; `none` and HMAC are never acceptable.
ALLOWED_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384",
                      "PS512")


class SvidValidationError(ValueError):
    """The token is not a valid JWT-SVID for this audience; the message says why."""


def trust_domain_of(spiffe_id: str) -> str:
    if not spiffe_id.startswith("spiffe://"):
        raise SvidValidationError(f"subject {spiffe_id!r} is not a SPIFFE ID")
    td = spiffe_id[len("spiffe://"):].split("/", 1)[0]
    if not td:
        raise SvidValidationError(f"subject {spiffe_id!r} has no trust domain")
    return td


def validate_jwt_svid(
    token: str,
    bundles: Mapping[str, Mapping[str, Any]],
    audience: str,
    *,
    leeway: float = 0.0,
    now: float | None = None,
) -> dict[str, Any]:
    """Validate `token` against `bundles` (trust domain -> {kid: public key}); return its claims.

    Raises SvidValidationError with a human-readable reason on any failure.
    """
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise SvidValidationError(f"malformed token: {exc}") from exc
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise SvidValidationError(f"algorithm {alg!r} is not allowed for JWT-SVIDs")
    if header.get("typ") not in (None, "JWT", "JOSE"):
        raise SvidValidationError(f"token type {header.get('typ')!r} is not a JWT-SVID")
    kid = header.get("kid")
    if not kid:
        raise SvidValidationError("token header has no key ID")
    sub = unverified.get("sub")
    if not isinstance(sub, str):
        raise SvidValidationError("token has no subject")
    td = trust_domain_of(sub)
    bundle = bundles.get(td)
    if bundle is None:
        raise SvidValidationError(f"no bundle for trust domain {td!r}")
    key = bundle.get(kid)
    if key is None:
        raise SvidValidationError(f"key {kid!r} is not in the bundle of trust domain {td!r}")
    options: dict[str, Any] = {"require": ["sub", "aud", "exp"]}
    try:
        if now is None:
            claims = jwt.decode(token, key, algorithms=[alg], audience=audience, leeway=leeway,
                                options=options)
        else:
            claims = jwt.decode(token, key, algorithms=[alg], audience=audience,
                                options={**options, "verify_exp": False, "verify_iat": False})
            if claims["exp"] + leeway <= now:
                raise jwt.ExpiredSignatureError("Signature has expired")
    except jwt.ExpiredSignatureError as exc:
        raise SvidValidationError("token has expired") from exc
    except jwt.InvalidAudienceError as exc:
        raise SvidValidationError(f"audience {audience!r} is not in the token's audiences") from exc
    except jwt.InvalidSignatureError as exc:
        raise SvidValidationError("signature does not verify with the bundle key") from exc
    except jwt.PyJWTError as exc:
        raise SvidValidationError(f"invalid token: {exc}") from exc
    return claims
