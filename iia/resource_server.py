"""The MCP server as an OAuth 2.0 resource server: validating the user's bearer token.

RFC 9068 JWT access tokens from the IdP: `typ: at+jwt`, ES256 signature by a key of the IdP's
JWKS, `iss` = the IdP, `aud` = this MCP server (RFC 8707 resource), not expired, carrying `sub`,
`sid`, `jti`, and a `client_id` (RFC 9068 §2.2) of the configured allowed clients (another
application of the same tenant can get tokens for this resource too: they are not ours to
honour); and a session this server has not dropped. The IdP's JWKS is kept in an
`iia.jwks.JwksCache` (fetched once, one rate-limited single-flight refetch on an unknown `kid`,
failed fetches rate-limited too); its counters prove the warm path does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from iia.errors import IIAError
from iia.jwks import JwksCache, JwksUnavailableError
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
                 revocations: SessionRevocations, allowed_clients: Collection[str],
                 http: httpx.Client | None = None, min_refresh: float = 1.0) -> None:
        if not allowed_clients:
            raise ValueError("at least one client must be allowed to call the MCP server")
        self.issuer = issuer
        self.audience = audience
        self.allowed_clients = frozenset(allowed_clients)
        self.revocations = revocations
        self._http = http or httpx.Client(timeout=5)
        self.jwks = JwksCache(jwks_uri, http=self._http, min_refresh=min_refresh,
                              what="identity provider's signing keys")

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

    @property
    def jwks_fetches(self) -> int:
        return self.jwks.fetches

    @property
    def jwks_failures(self) -> int:
        return self.jwks.failures

    @property
    def key_parses(self) -> int:
        return self.jwks.key_parses

    def _key(self, kid: str) -> Any:
        try:
            return self.jwks.key(kid)
        except JwksUnavailableError as exc:
            raise IdpUnavailableError(exc.description) from exc

    def can_verify_offline(self, token: str) -> bool:
        """True when the token's key is cached, so `verify` will do no I/O."""
        try:
            return self.jwks.cached(str(jwt.get_unverified_header(token).get("kid", "")))
        except jwt.PyJWTError:
            return True  # malformed: refused without I/O

    def forget_keys(self) -> None:
        """Drop the cached JWKS: the next token triggers a fetch."""
        self.jwks.forget()

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
        client = claims["client_id"]
        if not isinstance(client, str) or client not in self.allowed_clients:
            raise InvalidTokenError(f"the access token was issued to the client "
                                    f"{str(client)[:100]!r}, which may not call this MCP server")
        reason = self.revocations.reason(str(claims["sid"]))
        if reason is not None:
            self.revocations.refused(str(claims["sid"]))
            raise InvalidTokenError(f"the session was ended: {reason}")
        return Caller(token=token, sub=str(claims["sub"]), email=str(claims.get("email", "")),
                      sid=str(claims["sid"]), claims=claims)
