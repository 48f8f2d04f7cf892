"""The MCP server's SSF receiver (RFC 8935 push): a CAEP `session-revoked` SET from the
transmitter it subscribed to drops the session at once, so the agent's next call gets 401.

A SET is accepted when it is a JWS with `typ: secevent+jwt`, ES256, a `kid` of the transmitter's
JWKS, a good signature, `iss` = the transmitter, `aud` = this server, and one event; a `jti` seen
before is acknowledged again and not acted on twice. Errors use RFC 8935 §2.3 codes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
import jwt
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from iia.jwks import JwksCache, JwksUnavailableError
from iia.sessions import SessionRevocations

__all__ = ["SESSION_REVOKED", "SsfPushReceiver"]

SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


class _Refused(Exception):
    def __init__(self, err: str, description: str) -> None:
        super().__init__(description)
        self.err = err
        self.description = description


class SsfPushReceiver:
    def __init__(self, *, audience: str, revocations: SessionRevocations) -> None:
        self.audience = audience
        self.revocations = revocations
        self._lock = threading.Lock()
        self._issuer: str | None = None
        self._jwks_uri: str | None = None
        self._authorization: str | None = None
        self._seen: set[str] = set()
        self._http = httpx.Client(timeout=5)
        # min_refresh=0: an unknown kid always refetches (a transmitter's rotation must not
        # make a revocation wait); the fetch holds the cache's lock, not the receiver's
        self._jwks = JwksCache(lambda: self._jwks_uri, http=self._http, min_refresh=0.0,
                               what="transmitter's keys", dependency="ssf_transmitter")
        self.received: list[dict[str, Any]] = []
        self.on_revoked: Callable[[str, str], None] | None = None

    def subscribe(self, issuer: str, jwks_uri: str, authorization: str | None = None) -> None:
        """Trust SETs from `issuer`, signed with keys at `jwks_uri`; when `authorization` is
        set, pushes must carry exactly that Authorization header (RFC 8935 §2)."""
        self._issuer, self._jwks_uri, self._authorization = issuer, jwks_uri, authorization
        self._jwks.forget()

    def _key(self, kid: str) -> Any:
        try:
            return self._jwks.key(kid)
        except JwksUnavailableError as exc:
            raise _Refused("invalid_key", "the transmitter's keys cannot be fetched") from exc

    def validate(self, token: str) -> dict[str, Any]:
        if self._issuer is None:
            raise _Refused("invalid_issuer", "this receiver trusts no transmitter")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _Refused("invalid_request", "the body is not a JWS") from exc
        if header.get("typ") != "secevent+jwt":
            raise _Refused("invalid_request", "typ must be secevent+jwt")
        if header.get("alg") != "ES256":
            raise _Refused("invalid_key", f"algorithm {header.get('alg')!r} is not accepted")
        key = self._key(str(header.get("kid", "")))
        if key is None:
            raise _Refused("invalid_key", "unknown key id")
        try:
            claims = jwt.decode(token, key, algorithms=["ES256"], options={
                "verify_aud": False, "verify_iss": False, "verify_exp": False,
                "require": ["iss", "iat", "jti"]})
        except jwt.InvalidSignatureError as exc:
            raise _Refused("invalid_key", "the signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise _Refused("invalid_request", f"malformed SET: {exc}") from exc
        if claims["iss"] != self._issuer:
            raise _Refused("invalid_issuer", "unexpected issuer")
        aud = claims.get("aud")
        if self.audience not in (aud if isinstance(aud, list) else [aud]):
            raise _Refused("invalid_audience", f"the SET is not addressed to {self.audience}")
        if not isinstance(claims.get("events"), dict) or len(claims["events"]) != 1:
            raise _Refused("invalid_request", "a SET carries exactly one event")
        return claims

    def receive(self, claims: dict[str, Any]) -> None:
        jti = str(claims["jti"])
        with self._lock:
            if jti in self._seen:
                return
            self._seen.add(jti)
            self.received.append(claims)
        event_type, event = next(iter(claims["events"].items()))
        if event_type != SESSION_REVOKED:
            return
        subject = claims.get("sub_id") or {}
        sid = (subject.get("session") or {}).get("id") if subject.get("format") == "complex" \
            else subject.get("id") if subject.get("format") == "opaque" else None
        if sid:
            reason = (event.get("reason_admin") or {}).get("en") if isinstance(event, dict) \
                else None
            self.revocations.revoke(str(sid), f"CAEP session-revoked: {reason or 'revoked'}")

    async def push(self, request: Request) -> Response:
        if self._authorization and request.headers.get("authorization") != self._authorization:
            return JSONResponse({"err": "authentication_failed",
                                 "description": "missing or wrong Authorization"},
                                status_code=401)
        if not request.headers.get("content-type", "").startswith("application/secevent+jwt"):
            return JSONResponse({"err": "invalid_request",
                                 "description": "Content-Type must be application/secevent+jwt"},
                                status_code=400)
        token = (await request.body()).decode(errors="replace").strip()
        try:
            claims = await run_in_threadpool(self.validate, token)
        except _Refused as exc:
            return JSONResponse({"err": exc.err, "description": exc.description}, 400)
        self.receive(claims)
        return Response(status_code=202)

    def close(self) -> None:
        self._http.close()
