"""The MCP server as an OAuth 2.0 resource server: validating the user's bearer token.

RFC 9068 JWT access tokens from the IdP, validated with authlib's RFC 9068 claims validator
(`authlib.oauth2.rfc9068.JWTAccessTokenClaims`) over a joserfc signature check:

* the JWS `typ` is `at+jwt` or `application/at+jwt` (RFC 9068 §4; compared case-insensitively,
  RFC 7515 §4.1.9). authlib lets a token without `typ` through; we do not: an ID token or any
  other JWT signed by the IdP is not an access token;
* `alg` is ES256 and the signature verifies with the key the IdP's JWKS publishes under `kid`;
* `iss` is the IdP, `aud` includes this MCP server (RFC 8707 resource), not expired (5 s
  leeway), and `sub`, `client_id`, `iat`, `jti` (RFC 9068 §2.2) and `sid` are present;
* it is not a delegated token (`act`), its `client_id` is one of the allowed clients (another
  application of the same tenant can get tokens for this resource too: they are not ours to
  honour) or the token says the tenant issued it to a client that registered itself (RFC 7591)
  or presented a Client ID Metadata Document (`client_registration`, iia.protocol: the tenant
  issues such tokens for this resource only when its setting lets those clients use the
  agent), and its session is one this server has not dropped.

authlib's `JWTBearerTokenValidator` does the same claims check but collapses every refusal into
one sentence-less `invalid_token`, takes no leeway and has no place for our key cache, so this
module calls the pieces it is made of. The IdP's JWKS is kept in an `iia.jwks.JwksCache`
(fetched once, one rate-limited single-flight refetch on an unknown `kid`, failed fetches
rate-limited too).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from authlib.oauth2.rfc9068.claims import JWTAccessTokenClaims
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import ECKey

from iia.errors import IIAError
from iia.jwks import JwksCache, JwksUnavailableError
from iia.net import http_client
from iia.oauth.client import IdpUnavailableError
from iia.protocol import ACCESS_TOKEN_JWT_TYPES, REGISTERED_CLIENT_CLAIM, REGISTRATION_KINDS
from iia.sessions import SessionRevocations

__all__ = ["Caller", "InvalidTokenError", "UserTokenVerifier"]

ALGORITHM = "ES256"
LEEWAY = 5  # seconds of clock skew allowed on exp, nbf and iat


class InvalidTokenError(IIAError, code="invalid_token", status=401):
    """RFC 6750 §3.1 `invalid_token`: answered with 401 and a WWW-Authenticate challenge."""


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
                 revocations: SessionRevocations, allowed_clients: Collection[str],
                 http: httpx.Client | None = None, min_refresh: float = 1.0) -> None:
        if not allowed_clients:
            raise ValueError("at least one client must be allowed to call the MCP server")
        self.issuer = issuer
        self.audience = audience
        self.allowed_clients = frozenset(allowed_clients)
        self.revocations = revocations
        self._http = http or http_client(5.0)
        self.jwks = JwksCache(jwks_uri, http=self._http, min_refresh=min_refresh,
                              what="identity provider's signing keys")
        self._jose_keys: dict[str, tuple[object, ECKey]] = {}
        self.key_imports = 0  # instrumentation (iia.ops): keys converted for joserfc

    # -- keys -------------------------------------------------------------------------------

    @property
    def jwks_uri(self) -> str | Callable[[], str | None]:
        return self.jwks.uri

    @jwks_uri.setter
    def jwks_uri(self, uri: str | Callable[[], str | None]) -> None:
        self.jwks.uri = uri

    @property
    def min_refresh(self) -> float:
        return self.jwks.min_refresh

    def _key(self, kid: str) -> ECKey | None:
        """The IdP's key `kid` as joserfc's key (converted once per key the cache holds)."""
        try:
            raw = self.jwks.key(kid)
        except JwksUnavailableError as exc:
            raise IdpUnavailableError(exc.description) from exc
        if raw is None:
            return None
        known = self._jose_keys.get(kid)
        if known is not None and known[0] is raw:
            return known[1]
        try:
            key = ECKey.import_key(raw)
        except (JoseError, ValueError, TypeError):
            return None  # not an EC key: it cannot have signed an ES256 token
        self._jose_keys[kid] = (raw, key)
        self.key_imports += 1
        return key

    def can_verify_offline(self, token: str) -> bool:
        """True when the token's key is cached, so `verify` will do no I/O."""
        try:
            return self.jwks.cached(str(_header(token).get("kid", "")))
        except InvalidTokenError:
            return True  # malformed: refused without I/O

    def forget_keys(self) -> None:
        """Drop the cached JWKS: the next token triggers a fetch."""
        self.jwks.forget()

    def close(self) -> None:
        self._http.close()

    # -- tokens -----------------------------------------------------------------------------

    def verify(self, token: str) -> Caller:
        header = _header(token)
        if str(header.get("typ", "")).lower() not in ACCESS_TOKEN_JWT_TYPES:
            raise InvalidTokenError("the bearer token is not an access token (typ at+jwt)")
        if header.get("alg") != ALGORITHM:
            raise InvalidTokenError(f"algorithm {header.get('alg')!r} is not accepted")
        key = self._key(str(header.get("kid", "")))
        if key is None:
            raise InvalidTokenError("the token is not signed by a key of the identity provider")
        try:
            signed = jwt.decode(token, key, algorithms=[ALGORITHM])
            claims = JWTAccessTokenClaims(signed.claims, signed.header, {
                "iss": {"essential": True, "value": self.issuer},
                "aud": {"essential": True, "value": self.audience},
                "exp": {"essential": True}, "iat": {"essential": True},
                "sub": {"essential": True}, "jti": {"essential": True},
                "client_id": {"essential": True}, "sid": {"essential": True}})
            claims.validate(leeway=LEEWAY)
        except JoseError as exc:
            raise InvalidTokenError(self._why(exc)) from exc
        if "act" in claims:
            raise InvalidTokenError("a delegated token cannot call the MCP server")
        client = claims["client_id"]
        registered = claims.get(REGISTERED_CLIENT_CLAIM) in REGISTRATION_KINDS
        if not isinstance(client, str) or (client not in self.allowed_clients
                                           and not registered):
            raise InvalidTokenError(f"the access token was issued to the client "
                                    f"{str(client)[:100]!r}, which may not call this MCP server")
        reason = self.revocations.reason(str(claims["sid"]))
        if reason is not None:
            self.revocations.refused(str(claims["sid"]))
            raise InvalidTokenError(f"the session was ended: {reason}")
        return Caller(token=token, sub=str(claims["sub"]), email=str(claims.get("email", "")),
                      sid=str(claims["sid"]), claims=dict(claims))

    def _why(self, exc: JoseError) -> str:
        """The sentence for a refusal by joserfc or authlib's RFC 9068 claims validator."""
        if isinstance(exc, BadSignatureError):
            return "the token's signature does not verify with the identity provider's key"
        if isinstance(exc, ExpiredTokenError):
            return "the access token has expired"
        if isinstance(exc, MissingClaimError):
            return f"the access token lacks the claims {exc.claim}"
        if isinstance(exc, InvalidClaimError) and exc.claim == "aud":
            return f"the access token is not for {self.audience}"
        if isinstance(exc, InvalidClaimError) and exc.claim == "iss":
            return "the access token is from another issuer"
        if isinstance(exc, InvalidClaimError):
            return f"the access token's {exc.claim} is invalid: {exc.description}"
        return f"the access token is invalid: {exc.description or exc.error}"


def _header(token: str) -> dict[str, Any]:
    """The JWS header of `token`, unverified (which key, which algorithm, which type)."""
    try:
        return dict(jws.extract_compact(token.encode()).headers())
    except (JoseError, ValueError, UnicodeError) as exc:
        raise InvalidTokenError("the bearer token is not a JWT") from exc
