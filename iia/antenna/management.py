"""Who may manage streams at Antenna (SSF 1.0 §7; the CAEP Interoperability Profile: OAuth 2.0,
`authorization_schemes` `urn:ietf:rfc:6749`).

An outside receiver manages its streams with an access token the IdP issued to its registered
client by the client credentials grant (RFC 6749 §4.4) with scope `ssf.manage` and `resource` =
Antenna's issuer (RFC 8707): a JWT access token (RFC 9068) that `OAuthManagement` checks with
the IdP's published keys (`iia.jwks.JwksCache`):

    header  typ at+jwt (RFC 9068 §2.1: no ID token or other JWT passes), alg ES256 or RS256,
            kid of the IdP's JWKS
    claims  iss = the IdP's issuer, aud contains Antenna's issuer, exp in the future (30 s
            leeway), scope contains `ssf.manage`, client_id (or sub): the stream's owner

The owner is `oauth:<client_id>`, so it never meets a name of `Antenna.register_client` (the
lab's own receivers, tokens issued in-process, kept as digests in SQLite). The IdP's keys
unreachable fails closed: 503 naming the IdP (`ManagementUnavailable`), never a guess.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import jwt

from iia.errors import DependencyError
from iia.jwks import JwksCache, JwksUnavailableError

__all__ = ["MANAGE_SCOPE", "OWNER_PREFIX", "ManagementUnavailable", "OAuthManagement"]

MANAGE_SCOPE = "ssf.manage"
OWNER_PREFIX = "oauth:"
ALGORITHMS = ("ES256", "RS256")
ACCESS_TOKEN_TYP = "at+jwt"  # noqa: S105 - a media type, no secret


class ManagementUnavailable(DependencyError, dependency="idp"):
    """The IdP's keys cannot be fetched: no management token can be checked."""


class OAuthManagement:
    """Checks IdP-issued management access tokens for Antenna at `audience`."""

    def __init__(self, *, issuer: str, jwks_uri: str | Callable[[], str | None], audience: str,
                 scope: str = MANAGE_SCOPE, leeway: float = 30.0,
                 http: httpx.Client | None = None) -> None:
        self.issuer = issuer
        self.audience = audience.rstrip("/")
        self.scope = scope
        self.leeway = leeway
        self.keys = JwksCache(jwks_uri, http=http, what="IdP's signing keys", dependency="idp")

    def owner(self, token: str) -> str | None:
        """`oauth:<client>` for a valid management token; None for anything else."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        alg, kid = header.get("alg"), header.get("kid")
        if header.get("typ", "").lower() not in (ACCESS_TOKEN_TYP, "application/at+jwt") or \
                alg not in ALGORITHMS or not isinstance(kid, str):
            return None
        try:
            key = self.keys.key(kid)
        except JwksUnavailableError as exc:
            raise ManagementUnavailable(f"cannot check the management token: {exc.description}"
                                        ) from exc
        if key is None:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": ["iss", "aud", "exp", "iat"]})
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        scopes = claims.get("scope")
        if not isinstance(scopes, str) or self.scope not in scopes.split():
            return None
        client = claims.get("client_id") or claims.get("sub")
        if not isinstance(client, str) or not client:
            return None
        return OWNER_PREFIX + client
