"""The MCP server as an OAuth 2.0 resource server: validating the user's bearer token.

RFC 9068 JWT access tokens from the IdP: `typ: at+jwt`, ES256 signature by a key of the IdP's
JWKS, `iss` = the IdP, `aud` = this MCP server (RFC 8707 resource), not expired, carrying `sub`,
`sid`, `jti`, `client_id`; and a session this server has not dropped. The JWKS is fetched once and
kept; a token naming an unknown `kid` triggers one refetch, shared by every request that waits on
it and rate-limited, so a key rotation costs one fetch and an unknown-kid flood costs at most one
per `min_refresh` seconds. A failed fetch is rate-limited the same way: while the IdP is down,
requests with an uncached key fail closed at once instead of each waiting on a timeout. Counters
(`jwks_fetches`, `jwks_failures`, `key_parses`) prove the warm path does none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from jwt import PyJWKSet
from jwt.exceptions import PyJWKSetError

from iia.errors import IIAError
from iia.oauth.client import IdpUnavailableError
from iia.sessions import SessionRevocations

__all__ = ["Caller", "InvalidTokenError", "UserTokenVerifier"]


class InvalidTokenError(IIAError):
    """RFC 6750 §3.1 `invalid_token`: answered with 401 and a WWW-Authenticate challenge."""

    code = "invalid_token"
    status = 401


@dataclass(frozen=True)
class Caller:
    """The user on whose behalf this request runs. The token is kept to exchange it, and only
    for that: it is never logged, shown, or sent anywhere but the IdP's token endpoint."""

    token: str = field(repr=False)
    sub: str
    email: str
    sid: str
    claims: Mapping[str, Any] = field(repr=False)


class UserTokenVerifier:
    def __init__(self, *, issuer: str, audience: str, jwks_uri: str | Callable[[], str],
                 revocations: SessionRevocations, http: httpx.Client | None = None,
                 min_refresh: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks_uri = jwks_uri
        self.revocations = revocations
        self.min_refresh = min_refresh
        self._http = http or httpx.Client(timeout=5)
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._failure: str | None = None
        self.jwks_fetches = 0
        self.jwks_failures = 0
        self.key_parses = 0

    # -- keys -------------------------------------------------------------------------------

    def _key(self, kid: str) -> Any:
        key = self._keys.get(kid)
        if key is not None:
            return key
        with self._lock:  # single flight: one refetch, the others wait and re-check
            key = self._keys.get(kid)
            if key is not None:
                return key
            now = time.monotonic()
            if self._fetched_at is None or now - self._fetched_at >= self.min_refresh:
                self._refresh(now)
            elif self._failure is not None:  # the last fetch failed moments ago: no retry yet
                raise IdpUnavailableError(self._failure)
            return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        try:
            url = self.jwks_uri if isinstance(self.jwks_uri, str) else self.jwks_uri()
            response = self._http.get(url)
            response.raise_for_status()
            jwks = PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, PyJWKSetError) as exc:
            self.jwks_failures += 1
            self._fetched_at = now
            self._failure = (f"cannot fetch the identity provider's signing keys "
                             f"({exc.__class__.__name__})")
            raise IdpUnavailableError(self._failure) from exc
        self._failure = None
        self.jwks_fetches += 1
        keys = {}
        for jwk in jwks.keys:
            if jwk.key_id:
                keys[jwk.key_id] = jwk.key
                self.key_parses += 1
        self._keys = keys
        self._fetched_at = now

    def can_verify_offline(self, token: str) -> bool:
        """True when the token's key is cached, so `verify` will do no I/O."""
        try:
            return str(jwt.get_unverified_header(token).get("kid", "")) in self._keys
        except jwt.PyJWTError:
            return True  # malformed: refused without I/O

    def forget_keys(self) -> None:
        """Drop the cached JWKS: the next token triggers a fetch."""
        with self._lock:
            self._keys = {}
            self._fetched_at = None
            self._failure = None

    def close(self) -> None:
        self._http.close()

    # -- tokens -----------------------------------------------------------------------------

    def verify(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidTokenError("the bearer token is not a JWT") from exc
        if header.get("typ") != "at+jwt":
            raise InvalidTokenError("the bearer token is not an access token (typ at+jwt)")
        if header.get("alg") != "ES256":
            raise InvalidTokenError(f"algorithm {header.get('alg')!r} is not accepted")
        key = self._key(str(header.get("kid", "")))
        if key is None:
            raise InvalidTokenError("the token is not signed by a key of the identity provider")
        try:
            claims = jwt.decode(token, key, algorithms=["ES256"], audience=self.audience,
                                issuer=self.issuer, leeway=5,
                                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti",
                                                     "sid", "client_id"]})
        except jwt.ExpiredSignatureError as exc:
            raise InvalidTokenError("the access token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise InvalidTokenError(f"the access token is not for {self.audience}") from exc
        except jwt.InvalidIssuerError as exc:
            raise InvalidTokenError("the access token is from another issuer") from exc
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"the access token is invalid: {exc}") from exc
        if "act" in claims:
            raise InvalidTokenError("a delegated token cannot call the MCP server")
        reason = self.revocations.reason(str(claims["sid"]))
        if reason is not None:
            self.revocations.refused(str(claims["sid"]))
            raise InvalidTokenError(f"the session was ended: {reason}")
        return Caller(token=token, sub=str(claims["sub"]), email=str(claims.get("email", "")),
                      sid=str(claims["sid"]), claims=claims)
