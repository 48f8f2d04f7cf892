"""The client side of OAuth 2.0 Token Exchange (RFC 8693 §2.1) with one RFC 9396
`authorization_details` object: the user's token as subject, the workload's JWT-SVID as actor."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from iia.identity import WorkloadIdentity
from iia.oauth.client import AuthorizationServerClient
from iia.rar import wire

__all__ = ["GRANT_TYPE", "OboToken", "exchange"]

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
JWT = "urn:ietf:params:oauth:token-type:jwt"


@dataclass(frozen=True)
class OboToken:
    """An on-behalf-of token. `token` never appears in a repr; `claims` are for display and
    correlation (the admin API verifies the signature)."""

    token: str = field(repr=False)
    expires_in: int
    claims: Mapping[str, Any]
    obtained_at: float

    @property
    def jti(self) -> str:
        return str(self.claims.get("jti", ""))


def exchange(server: AuthorizationServerClient, identity: WorkloadIdentity, *,
             subject_token: str, details: Mapping[str, Any], audience: str) -> OboToken:
    """Exchange `subject_token` for a token for exactly `details`, acting as this workload.
    Raises the typed OAuthError the server returns (AccessDeniedError carries `policy_id`)."""
    actor = identity.svid(server.issuer)
    form = {
        "grant_type": GRANT_TYPE,
        "subject_token": subject_token, "subject_token_type": ACCESS_TOKEN,
        "actor_token": actor.token, "actor_token_type": JWT,
        "audience": audience,
        "requested_token_type": ACCESS_TOKEN,
        "authorization_details": wire(details),
    }
    body = identity.with_credential(lambda credential: server.token(form, credential))
    token = str(body["access_token"])
    claims = jwt.decode(token, options={"verify_signature": False})
    return OboToken(token=token, expires_in=int(body.get("expires_in", 0)), claims=claims,
                    obtained_at=time.time())
