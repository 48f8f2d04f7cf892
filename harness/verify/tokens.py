"""Tokens the tenant mints and checks.

* access tokens: RFC 9068 JWT profile (`typ: at+jwt`), for the MCP server resource, minted by
  authlib's `JWTBearerTokenGenerator` (`AccessTokenGenerator`: our claims, the tenant's clock,
  the current key of the rotating key set, its `kid` in the header);
* ID tokens (OpenID Connect Core §2), signed with the algorithm the client registered
  (`id_token_signed_response_alg`, OpenID Connect Dynamic Client Registration §2): RS256 by
  default, as that section says, or ES256; `at_hash` (Core §3.1.3.6) when issued beside an
  access token;
  both carry `groups` (RFC 9068 §2.2.3.1, RFC 7643 §4.1.2: the IDs of the user's groups) when the
  tenant wires `groups_of` (its directory);
* on-behalf-of tokens from token exchange (RFC 8693 §4.1 `act`, RFC 9396 `authorization_details`),
  for the admin API;
* refresh tokens: opaque, rotated on every use, reuse of a spent one ends the session
  (RFC 9700 §4.14.2); the generator makes them, `keep_refresh_token` stores what they grant.

Every token carries `sid`; `validate` refuses a token whose session has ended, whose `jti` was
revoked (RFC 7009), or that is not exactly what the caller expects. The signature check is not
repeated for a string this service signed itself (an on-behalf-of token, presented once at the
admin API moments after token exchange minted it) or verified before with `remember` (the user's
access token, the subject of every token exchange): such a string is known to carry this
tenant's signature, and counts while the key that signed it is live. Expiry, revocation and the
session are checked at every call.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import jwt
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core.util import create_half_hash
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey, KeySet
from jwt.types import Options

from harness.expiring import ExpiringSet
from harness.keyset import RotatingKeySet
from harness.verify.client_auth import ID_TOKEN_ALGS, Client
from harness.verify.sessions import Session, SessionStore
from iia.protocol import REGISTERED_CLIENT_CLAIM

__all__ = ["ACCESS_TOKEN_ALG", "ID_TOKEN_ALGS", "AccessTokenGenerator", "Grantee",
           "RefreshGrant", "TokenInvalid", "TokenService", "member_groups"]

# Access, on-behalf-of and approval tokens are ES256 only: their one consumer is the lab's own
# resource servers, RFC 9068 §2.1 asks only for an asymmetric alg, and short P-256 signatures
# keep every tool call's tokens small. ID tokens are for any OpenID client: RS256 (which
# OpenID Connect Discovery §3 requires the OP to support, the registration default) or ES256.
ACCESS_TOKEN_ALG = "ES256"  # noqa: S105 - an algorithm, no secret


class TokenInvalid(ValueError):
    """A token failed validation; the message says why (safe to show the caller)."""


@dataclass
class RefreshGrant:
    sid: str
    user_id: str
    client_id: str
    scope: str
    resource: str
    expires_at: float
    used: bool = False

    # -- authlib's TokenMixin (refresh and revocation endpoints) -------------------------------

    def check_client(self, client: Any) -> bool:
        return bool(self.client_id == client.get_client_id())

    def get_scope(self) -> str:
        return self.scope


@dataclass(frozen=True)
class Grantee:
    """Whom a user token is for: authlib's `user` of a grant (its session, the resource the
    token is for, the agent it may act for, the login's nonce and the user's name)."""

    session: Session
    resource: str
    may_act: str | None = None
    nonce: str | None = None
    name: str | None = None

    def get_user_id(self) -> str:
        return self.session.user_id


class AccessTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 user access tokens by authlib's generator, with this tenant's claims (`sid`,
    `email`, `groups`, `may_act`), times from the tenant's clock and the current key."""

    def __init__(self, service: TokenService) -> None:
        super().__init__(service.issuer, alg="ES256",
                         refresh_token_generator=lambda **_: secrets.token_urlsafe(32),
                         expires_generator=lambda client, grant_type: service.access_ttl)
        self.service = service

    def get_jwks(self) -> KeySet:
        key = self.service.keys.current  # one key: joserfc puts its kid in the header
        assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)  # ACCESS_TOKEN_ALG
        return KeySet([ECKey.import_key(key.private_key, {"kid": key.kid, "alg": "ES256"})])

    def get_audiences(self, client: Any, user: Grantee, scope: str) -> str:
        return user.resource

    def get_auth_time(self, user: Grantee) -> int:
        return int(user.session.created_at)

    def get_extra_claims(self, client: Any, grant_type: str, user: Grantee,
                         scope: str) -> dict[str, Any]:
        now = int(self.service.clock())
        claims: dict[str, Any] = {"iat": now, "exp": now + self.service.access_ttl,
                                  "sid": user.session.sid, "email": user.session.email}
        if self.service.groups_of is not None:
            claims["groups"] = list(self.service.groups_of(user.session.user_id))
        if user.may_act:
            claims["may_act"] = {"sub": user.may_act}
        registration = getattr(client, "registration", None)
        if registration:  # a client that registered itself (RFC 7591) or a metadata document
            claims[REGISTERED_CLIENT_CLAIM] = registration
        return claims


def member_groups(tenant: Any) -> Callable[[str], list[str]]:
    """`TokenService.groups_of` for a tenant: the IDs of the directory's groups the user is in
    (read at minting time, so a token shows the membership of when it was issued)."""
    return lambda user_id: [g.id for g in tenant.directory.groups_of(user_id) if g.id]


_KNOWN = 1024  # tokens remembered as signed by this service (TokenService._know)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(
        self,
        issuer: str,
        keys: RotatingKeySet,
        sessions: SessionStore,
        *,
        access_ttl: int = 900,
        obo_ttl: int = 900,
        refresh_ttl: int = 8 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < access_ttl <= 900:
            raise ValueError("access tokens live at most 15 minutes")
        self.issuer = issuer
        self.keys = keys
        self.sessions = sessions
        self.access_ttl = access_ttl
        self.obo_ttl = obo_ttl
        self.refresh_ttl = refresh_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._revoked_jtis = ExpiringSet(lambda: self._clock())
        self._refresh: dict[str, RefreshGrant] = {}
        # user id -> the IDs of the groups the user is a member of, read when a token is minted
        self.groups_of: Callable[[str], Sequence[str]] | None = None
        self.generator = AccessTokenGenerator(self)
        # (digest of the token, typ, audience) -> (kid, claims) of tokens known to be signed
        # by this service: minted here, or verified with `remember`; the oldest go first
        self._signed: dict[tuple[str, str, str | None], tuple[str, dict[str, Any]]] = {}

    def clock(self) -> float:
        return self._clock()

    # -- minting ----------------------------------------------------------------------------

    def _base(self, session: Session, ttl: int) -> dict[str, Any]:
        now = int(self._clock())
        return {"iss": self.issuer, "sub": session.user_id, "sid": session.sid,
                "email": session.email, "iat": now, "exp": now + ttl,
                "jti": secrets.token_urlsafe(16)}

    def access_token(self, session: Session, *, client_id: str, audience: str, scope: str,
                     may_act: str | None) -> tuple[str, dict[str, Any]]:
        """A user access token outside a grant (the authorization server's grants go through
        `generator` themselves): the token and its claims."""
        token: str = self.generator.access_token_generator(
            client=Client(client_id=client_id, public=True, grant_types=frozenset()),
            grant_type="authorization_code", scope=scope,
            user=Grantee(session=session, resource=audience, may_act=may_act))
        return token, jwt.decode(token, options={"verify_signature": False})

    def id_token(self, session: Session, *, client_id: str, nonce: str | None,
                 name: str | None, alg: str = "RS256", access_token: str | None = None,
                 extra: Mapping[str, Any] | None = None) -> str:
        """OpenID Connect Core §2, signed with `alg` (the client's registered
        id_token_signed_response_alg); `at_hash` (§3.1.3.6) of `access_token` when given;
        `extra` claims (a CIBA answer's auth_req_id and passkey attestation)."""
        if alg not in ID_TOKEN_ALGS:
            raise ValueError(f"ID tokens are signed with {' or '.join(ID_TOKEN_ALGS)}, "
                             f"not {alg!r}")
        claims = self._base(session, self.access_ttl)
        claims.update({"aud": client_id, "azp": client_id, "auth_time": int(session.created_at)})
        claims.update(extra or {})
        if self.groups_of is not None:
            claims["groups"] = list(self.groups_of(session.user_id))
        if nonce:
            claims["nonce"] = nonce
        if name:
            claims["name"] = name
        if access_token:
            claims["at_hash"] = create_half_hash(access_token, alg).decode()
        return self.keys.sign(claims, typ="JWT", alg=alg)

    def sessionless_id_token(self, *, user_id: str, email: str, client_id: str,
                             extra: Mapping[str, Any]) -> str:
        """An ID Token that opens no session (a CIBA denial: the user authenticated on their
        device to refuse, and nothing is signed in by it), for the client only, short-lived."""
        now = int(self._clock())
        claims = {"iss": self.issuer, "sub": user_id, "email": email, "aud": client_id,
                  "iat": now, "exp": now + 60, "auth_time": now,
                  "jti": secrets.token_urlsafe(16), **extra}
        return self.keys.sign(claims, typ="JWT")

    def obo_token(self, subject: Mapping[str, Any], *, client_id: str, actor: str,
                  audience: str, authorization_details: Sequence[Mapping[str, Any]]
                  ) -> tuple[str, dict[str, Any]]:
        now = int(self._clock())
        claims = {
            "iss": self.issuer, "sub": subject["sub"], "aud": audience, "sid": subject["sid"],
            "email": subject.get("email"), "client_id": client_id, "iat": now,
            "exp": now + self.obo_ttl, "jti": secrets.token_urlsafe(16),
            "act": {"sub": actor},
            "authorization_details": [dict(d) for d in authorization_details],
        }
        key = self.keys.current
        token = self.keys.sign(claims, typ="at+jwt", key=key)
        # what the admin API's decode(typ="at+jwt", audience=None) will be shown
        self._know(token, "at+jwt", None, key.kid, claims)
        return token, claims

    def approval_token(self, session: Session, *, client_id: str, approval_id: str,
                       authorization_details: Sequence[Mapping[str, Any]]
                       ) -> tuple[str, dict[str, Any]]:
        """The token a CIBA poll returns once the user approved: a short receipt, for the
        client only (aud = client_id), unusable at any resource server."""
        claims = self._base(session, 60)
        claims.update({"aud": client_id, "client_id": client_id, "scope": "openid",
                       "approval_id": approval_id,
                       "authorization_details": [dict(d) for d in authorization_details]})
        return self.keys.sign(claims, typ="at+jwt"), claims

    def keep_refresh_token(self, token: str, session: Session, *, client_id: str, scope: str,
                           resource: str) -> None:
        """Store what a refresh token the generator made grants (only its digest is kept)."""
        with self._lock:
            now = self._clock()  # bounded (issue #20): an expired grant is refused anyway
            for key in [k for k, g in self._refresh.items() if g.expires_at <= now]:
                del self._refresh[key]
            self._refresh[_hash(token)] = RefreshGrant(
                sid=session.sid, user_id=session.user_id, client_id=client_id, scope=scope,
                resource=resource, expires_at=self._clock() + self.refresh_ttl)

    def use_refresh_token(self, token: str, client_id: str) -> RefreshGrant:
        """Spend a refresh token (rotation). Presenting a spent one ends its session."""
        with self._lock:
            grant = self._refresh.get(_hash(token))
            if grant is None or grant.client_id != client_id:
                raise TokenInvalid("unknown refresh token")
            if grant.used:
                reused = grant
            else:
                reused = None
                grant.used = True
        if reused is not None:
            self.sessions.end(reused.sid, "refresh token reuse detected")
            raise TokenInvalid("refresh token was already used; the session has been ended")
        if grant.expires_at <= self._clock():
            raise TokenInvalid("refresh token expired")
        if not self.sessions.alive(grant.sid):
            raise TokenInvalid("the session of this refresh token has ended")
        return grant

    def revoke_refresh_token(self, token: str, client_id: str) -> bool:
        with self._lock:
            grant = self._refresh.get(_hash(token))
            if grant is None or grant.client_id != client_id:
                return False
            grant.used = True
            return True

    def refresh_grant(self, token: str) -> RefreshGrant | None:
        with self._lock:
            return self._refresh.get(_hash(token))

    # -- checking ---------------------------------------------------------------------------

    def revoke_jti(self, jti: str, until: float) -> None:
        self._revoked_jtis.add(jti, until)

    def revoked(self, jti: str) -> bool:
        return jti in self._revoked_jtis

    def decode(self, token: str, *, typ: str = "at+jwt", audience: str | None = None,
               check_session: bool = True, remember: bool = False) -> dict[str, Any]:
        """Verify a token this tenant issued and return its claims, or raise TokenInvalid.
        `remember`: a token whose signature verifies is known as signed from then on (see the
        module docstring); the checks that can change over time run at every call."""
        claims = self._signed_claims(token, typ, audience, remember)
        now = self._clock()
        if not isinstance(claims["exp"], int | float) or claims["exp"] <= now:
            raise TokenInvalid("the token has expired")
        if not isinstance(claims["iat"], int | float) or claims["iat"] > now + 5:
            raise TokenInvalid("the token was issued in the future")
        if self.revoked(claims["jti"]):
            raise TokenInvalid("the token has been revoked")
        if check_session and not self.sessions.alive(claims["sid"]):
            session = self.sessions.get(claims["sid"])
            why = f" ({session.end_reason})" if session and session.end_reason else ""
            raise TokenInvalid(f"the token's session has ended{why}")
        return claims

    def _signed_claims(self, token: str, typ: str, audience: str | None,
                       remember: bool) -> dict[str, Any]:
        """The claims of a token whose header, signature (by a live key of this tenant),
        issuer, audience and required claims verify, or TokenInvalid. A token known as signed
        here (`_know`) counts while its key is live."""
        with self._lock:
            known = self._signed.get((_hash(token), typ, audience))
        if known is not None and any(k.kid == known[0] for k in self.keys.live_keys()):
            return copy.deepcopy(known[1])
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenInvalid("the token is not a JWT") from exc
        alg = header.get("alg")
        # an ID token (typ JWT) may be RS256 or ES256; every other token only ES256
        if alg not in (ID_TOKEN_ALGS if typ == "JWT" else (ACCESS_TOKEN_ALG,)):
            raise TokenInvalid(f"algorithm {header.get('alg')!r} is not accepted")
        if header.get("typ") != typ:
            raise TokenInvalid(f"token type {header.get('typ')!r} is not {typ!r}")
        key = self.keys.public_keys(str(alg)).get(header.get("kid", ""))
        if key is None:
            raise TokenInvalid("the token was not signed by a key of this tenant")
        options: dict[str, Any] = {"require": ["iss", "sub", "exp", "iat", "jti", "sid"],
                                   "verify_aud": audience is not None,
                                   # times are checked against this tenant's clock (decode)
                                   "verify_exp": False, "verify_iat": False, "verify_nbf": False}
        try:
            claims = jwt.decode(token, key, algorithms=[str(alg)], issuer=self.issuer,
                                audience=audience, options=cast(Options, options))
        except jwt.InvalidAudienceError as exc:
            raise TokenInvalid(f"the token's audience is not {audience}") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenInvalid("the token was not issued by this tenant") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenInvalid("the token's signature does not verify") from exc
        except jwt.PyJWTError as exc:
            raise TokenInvalid(f"invalid token: {exc}") from exc
        if remember:
            self._know(token, typ, audience, str(header["kid"]), claims)
        return claims

    def _know(self, token: str, typ: str, audience: str | None, kid: str,
              claims: Mapping[str, Any]) -> None:
        """Remember that `token` carries this service's signature by `kid` (a copy of its
        claims), forgetting the oldest beyond `_KNOWN` (a forgotten one is verified again)."""
        with self._lock:
            while len(self._signed) >= _KNOWN:
                del self._signed[next(iter(self._signed))]
            self._signed[(_hash(token), typ, audience)] = (kid, copy.deepcopy(dict(claims)))
