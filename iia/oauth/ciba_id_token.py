"""The ID Token of a CIBA answer, validated by the client, and what it attests of the answer.

OpenID CIBA Core §10.1.1 gives the client an ID Token with the tokens, and the client "MUST
validate" it as OpenID Connect Core §3.1.3.7 says. Checked here, in order:

* the JWS `alg` is ES256 (the IdP's `id_token_signing_alg_values_supported`) and the signature
  verifies with the key the IdP's JWKS publishes under `kid` (an `iia.jwks.JwksCache`);
* `iss` is the IdP, `aud` names this client (and `azp` is this client when `aud` names several),
  `exp` not passed and `iat` present (5 s leeway), `sub` present;
* the CIBA auth_req_id claim (`iia.protocol.CIBA_AUTH_REQ_ID_CLAIM`, §10.3.1), when present, is
  the request this client made: the ID Token of another push does not answer this one.

What it attests: how the user answered (`iia.protocol.PASSKEY_ANSWER_CLAIM`): the digest of the
passkey's credential id and the assertion's user-verification flag. It is taken only from an ID
Token that validated, only when the token also names this auth_req_id (bound to this push) and
only when its `answer` is the one the token endpoint gave (approve with the tokens, deny with
`access_denied`). An IdP that does not attest a passkey answer (a real tenant need not) leaves
`None`: the approval stands on the IdP's word, as CIBA has it, and events say nothing of a passkey.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from iia.errors import IIAError
from iia.jwks import JwksCache, JwksUnavailableError
from iia.oauth.client import IdpUnavailableError
from iia.protocol import CIBA_AUTH_REQ_ID_CLAIM, PASSKEY_ANSWER_CLAIM

__all__ = ["CibaIdTokenVerifier", "InvalidIdTokenError", "PasskeyAnswer"]

ALGORITHM = "ES256"
LEEWAY = 5  # seconds of clock skew allowed on exp and iat
_DIGEST = re.compile(r"[A-Za-z0-9_-]{16,64}")  # base64url, what the IdP names a passkey by


class InvalidIdTokenError(IIAError, code="invalid_id_token", status=403, dependency="idp"):
    """The ID Token of a CIBA answer does not validate (OpenID Connect Core §3.1.3.7)."""


@dataclass(frozen=True)
class PasskeyAnswer:
    """How the user answered, as the IdP attests it: never the credential id itself."""

    credential_id_digest: str
    user_verified: bool

    def event_details(self) -> dict[str, Any]:
        """The fields of `agent:hitl_approved` / `agent:hitl_denied` (wire names)."""
        return {"credentialIdDigest": self.credential_id_digest,
                "userVerified": self.user_verified}


class CibaIdTokenVerifier:
    """Validates the ID Tokens the IdP at `issuer` gives a CIBA client; keys from `jwks_uri`
    (a URL, or a callable naming it once discovery is done)."""

    def __init__(self, issuer: str, jwks_uri: str | Callable[[], str | None], *,
                 http: httpx.Client | None = None, min_refresh: float = 1.0) -> None:
        self.issuer = issuer.rstrip("/")
        self.jwks = JwksCache(jwks_uri, http=http, min_refresh=min_refresh,
                              what="identity provider's signing keys")

    def verify(self, id_token: object, *, client_id: str, auth_req_id: str,
               answer: str) -> PasskeyAnswer | None:
        """Validate `id_token` for this client and request; the passkey answer it attests for
        `answer` ("approve" or "deny"), or None. Raises InvalidIdTokenError."""
        claims = self._claims(id_token, client_id)
        bound = claims.get(CIBA_AUTH_REQ_ID_CLAIM)
        if bound is not None and bound != auth_req_id:
            raise InvalidIdTokenError("the ID Token answers another authentication request "
                                      "than this one (its auth_req_id differs)")
        attested = claims.get(PASSKEY_ANSWER_CLAIM)
        if bound is None or attested is None:
            return None  # no passkey answer bound to this push is attested
        return _passkey_answer(attested, answer)

    def _claims(self, id_token: object, client_id: str) -> dict[str, Any]:
        if not isinstance(id_token, str) or not id_token:
            raise InvalidIdTokenError("the token response carries no ID Token (OpenID CIBA "
                                      "§10.1.1)")
        try:
            header = dict(jws.extract_compact(id_token.encode()).headers())
        except (JoseError, ValueError, UnicodeError) as exc:
            raise InvalidIdTokenError("the ID Token is not a JWT") from exc
        if header.get("alg") != ALGORITHM:
            raise InvalidIdTokenError(f"the ID Token's algorithm {header.get('alg')!r} is not "
                                      f"{ALGORITHM}")
        key = self._key(str(header.get("kid", "")))
        if key is None:
            raise InvalidIdTokenError("the ID Token is not signed by a key of the identity "
                                      "provider")
        try:
            signed = jwt.decode(id_token, key, algorithms=[ALGORITHM])
            jwt.JWTClaimsRegistry(
                leeway=LEEWAY, iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": client_id}, exp={"essential": True},
                iat={"essential": True}, sub={"essential": True}).validate(signed.claims)
        except JoseError as exc:
            raise InvalidIdTokenError(f"the ID Token does not validate: "
                                      f"{exc.description or exc.error}") from exc
        claims = dict(signed.claims)
        if isinstance(claims["aud"], list) and len(claims["aud"]) > 1 \
                and claims.get("azp") != client_id:
            raise InvalidIdTokenError("the ID Token names several audiences and its azp is not "
                                      "this client (OpenID Connect Core §3.1.3.7)")
        return claims

    def _key(self, kid: str) -> ECKey | None:
        try:
            raw = self.jwks.key(kid)
        except JwksUnavailableError as exc:
            raise IdpUnavailableError(exc.description) from exc
        if raw is None:
            return None
        try:
            return ECKey.import_key(raw)
        except (JoseError, ValueError, TypeError):
            return None  # not an EC key: it cannot have signed an ES256 token


def _passkey_answer(attested: object, answer: str) -> PasskeyAnswer:
    """The attested answer, well-formed and the one the token endpoint gave."""
    if not isinstance(attested, Mapping):
        raise InvalidIdTokenError(f"the ID Token's {PASSKEY_ANSWER_CLAIM} is not an object")
    digest, verified = attested.get("credentialIdDigest"), attested.get("userVerified")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) \
            or not isinstance(verified, bool):
        raise InvalidIdTokenError(f"the ID Token's {PASSKEY_ANSWER_CLAIM} is malformed")
    if attested.get("answer") != answer:
        raise InvalidIdTokenError(f"the ID Token attests the answer "
                                  f"{str(attested.get('answer'))[:20]!r}, but the token endpoint "
                                  f"answered {answer!r}")
    return PasskeyAnswer(credential_id_digest=digest, user_verified=verified)
