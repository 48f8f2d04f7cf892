"""Security Event Tokens (RFC 8417) in the SSF 1.0 SET profile.

    header  typ: secevent+jwt, alg: ES256 (the default) or RS256 (the CAEP Interoperability
            Profile's; a stream asks for it with `set_signing_alg`), kid: that algorithm's key
    claims  iss, aud, jti, iat, txn (a transaction id joining related SETs), sub_id (the subject,
            SSF §3: not `sub`), events: exactly one {type-uri: payload}; never `exp`

The signing keys (one P-256, one RSA 2048) are generated at start-up and live only in memory;
`jwks()` publishes both, each with its `alg`, so a receiver picks the key by `kid`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

__all__ = ["ALGORITHMS", "DEFAULT_ALG", "SET_TYPE", "SetSigner"]

SET_TYPE = "secevent+jwt"
DEFAULT_ALG = "ES256"
ALGORITHMS = ("ES256", "RS256")


class SetSigner:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._keys: dict[str, Any] = {
            "ES256": ec.generate_private_key(ec.SECP256R1()),
            "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.kids = {alg: secrets.token_urlsafe(12) for alg in ALGORITHMS}
        self.kid = self.kids[DEFAULT_ALG]

    def jwks(self) -> dict[str, Any]:
        keys = []
        for alg, to_jwk in (("ES256", ECAlgorithm.to_jwk), ("RS256", RSAAlgorithm.to_jwk)):
            jwk = json.loads(to_jwk(self._keys[alg].public_key()))
            jwk.update({"kid": self.kids[alg], "alg": alg, "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}

    def claims(self, *, audience: str, event_type: str, event: Mapping[str, Any],
               subject: Mapping[str, Any], txn: str | None = None,
               jti: str | None = None, iat: int | None = None) -> dict[str, Any]:
        return {"iss": self.issuer, "aud": audience, "jti": jti or secrets.token_urlsafe(16),
                "iat": iat or int(time.time()), "txn": txn or secrets.token_urlsafe(8),
                "sub_id": dict(subject), "events": {event_type: dict(event)}}

    def sign(self, claims: Mapping[str, Any], *, typ: str = SET_TYPE,
             alg: str = DEFAULT_ALG) -> str:
        if alg not in ALGORITHMS:
            raise ValueError(f"SETs are signed with {' or '.join(ALGORITHMS)}, not {alg!r}")
        return jwt.encode(dict(claims), self._keys[alg], algorithm=alg,
                          headers={"typ": typ, "kid": self.kids[alg]})
