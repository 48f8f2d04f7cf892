"""Validation of pushed Security Event Tokens (RFC 8417, RFC 8935, the SSF 1.0 SET profile).

A SET is accepted when its JWS header says `typ: secevent+jwt` and an allowed asymmetric `alg`,
its `kid` names a key of the transmitter's JWKS and the signature verifies, `iss` is the
transmitter, `aud` includes this receiver, and it carries `jti`, `iat` and exactly one event.
Failures carry the RFC 8935 §2.3 error codes: `invalid_request`, `invalid_key`,
`invalid_issuer`, `invalid_audience`.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from harness.jwks import RemoteJwks

__all__ = ["SET_TYPE", "PushError", "SetValidator", "read_push"]

SET_TYPE = "secevent+jwt"
ALLOWED_ALGORITHMS = ("ES256", "ES384", "RS256", "RS384", "RS512", "PS256")


class PushError(Exception):
    """RFC 8935 §2.3: answered with HTTP 400 (401 for authentication) and
    {"err": code, "description": ...}."""

    def __init__(self, err: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.err = err
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"err": self.err, "description": self.description}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


async def read_push(request: Request, validator: SetValidator | None,
                    authorization: str | None) -> dict[str, Any]:
    """Receive one pushed SET (RFC 8935 §2): the expected Authorization header, the media type,
    then `validator` (in a worker thread: it may fetch the transmitter's JWKS)."""
    if authorization and request.headers.get("authorization") != authorization:
        raise PushError("authentication_failed", "missing or wrong Authorization", 401)
    body = (await request.body()).decode(errors="replace").strip()
    if validator is None:
        raise PushError("invalid_issuer", "this receiver trusts no transmitter yet")
    if not request.headers.get("content-type", "").startswith("application/secevent+jwt"):
        raise PushError("invalid_request", "Content-Type must be application/secevent+jwt")
    return await run_in_threadpool(validator.validate, body)


class SetValidator:
    def __init__(self, *, issuer: str, audience: str, jwks_uri: str) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks = RemoteJwks(jwks_uri)

    def validate(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise PushError("invalid_request", "the body is not a JWS compact SET") from exc
        if header.get("typ") != SET_TYPE:
            raise PushError("invalid_request", f"typ must be {SET_TYPE!r}, "
                                               f"not {header.get('typ')!r}")
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise PushError("invalid_key", f"algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        try:
            keys = self.jwks.keys(kid)
        except httpx.HTTPError as exc:
            raise PushError("invalid_key", "the transmitter's JWKS cannot be fetched") from exc
        key = keys.get(kid) if kid else None
        if key is None:
            raise PushError("invalid_key", f"key {kid!r} is not in the transmitter's JWKS")
        try:
            claims = jwt.decode(token, key, algorithms=[alg],
                                options={"verify_aud": False, "verify_iss": False,
                                         "verify_exp": False, "require": ["iss", "iat", "jti"]})
        except jwt.InvalidSignatureError as exc:
            raise PushError("invalid_key", "the signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise PushError("invalid_request", f"malformed SET: {exc}") from exc
        if claims.get("iss") != self.issuer:
            raise PushError("invalid_issuer", f"issuer {claims.get('iss')!r} is not the "
                                              "transmitter this receiver trusts")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.audience not in audiences:
            raise PushError("invalid_audience", f"the SET is not addressed to {self.audience}")
        events = claims.get("events")
        if not isinstance(events, dict) or len(events) != 1:
            raise PushError("invalid_request", "a SET carries exactly one event")
        return claims
