"""Security Event Tokens (RFC 8417) in the SSF 1.0 SET profile.

    header  typ: secevent+jwt, alg: ES256, kid
    claims  iss, aud, jti, iat, txn (a transaction id joining related SETs), sub_id (the subject,
            SSF §3: not `sub`), events: exactly one {type-uri: payload}; never `exp`

The signing key is generated at start-up and lives only in memory; `jwks()` publishes it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

__all__ = ["SET_TYPE", "SetSigner"]

SET_TYPE = "secevent+jwt"


class SetSigner:
    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = secrets.token_urlsafe(12)

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(ECAlgorithm.to_jwk(self._key.public_key()))
        jwk.update({"kid": self.kid, "alg": "ES256", "use": "sig"})
        return {"keys": [jwk]}

    def claims(self, *, audience: str, event_type: str, event: Mapping[str, Any],
               subject: Mapping[str, Any], txn: str | None = None,
               jti: str | None = None, iat: int | None = None) -> dict[str, Any]:
        return {"iss": self.issuer, "aud": audience, "jti": jti or secrets.token_urlsafe(16),
                "iat": iat or int(time.time()), "txn": txn or secrets.token_urlsafe(8),
                "sub_id": dict(subject), "events": {event_type: dict(event)}}

    def sign(self, claims: Mapping[str, Any], *, typ: str = SET_TYPE) -> str:
        return jwt.encode(dict(claims), self._key, algorithm="ES256",
                          headers={"typ": typ, "kid": self.kid})
