"""Protocol constants, defined once: the URNs, media types and JOSE `typ` values the chain speaks.

Every module of `iia` and `harness` (and the tests) names a protocol identifier through this
module, so a typo cannot make two sides disagree. Each value is the spec's own string.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACCESS_TOKEN_JWT_TYPES",
    "ACCESS_TOKEN_TYP",
    "CAEP_EVENT",
    "CIBA_AUTH_REQ_ID_CLAIM",
    "CIBA_GRANT",
    "DELIVERY_POLL",
    "DELIVERY_PUSH",
    "ID_TOKEN_TYPE",
    "PASSKEY_ANSWER_CLAIM",
    "REGISTERED_CLIENT_CLAIM",
    "REGISTRATION_DOCUMENT",
    "REGISTRATION_DYNAMIC",
    "REGISTRATION_KINDS",
    "SESSION_ENDED",
    "SET_MEDIA_TYPE",
    "SET_TYP",
    "SSF_VERIFICATION",
    "TOKEN_EXCHANGE_GRANT",
    "TOKEN_TYPE_ACCESS_TOKEN",
    "TOKEN_TYPE_JWT",
]

# RFC 8693 §2.1 and §3: token exchange and its token type identifiers
TOKEN_EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
TOKEN_TYPE_ACCESS_TOKEN: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TOKEN_TYPE_JWT: Final = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
ID_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105

# OpenID CIBA Core §10.1: the grant type of the token request that redeems an auth_req_id
CIBA_GRANT: Final = "urn:openid:params:grant-type:ciba"

# OpenID CIBA Core §10.3.1: the ID Token claim naming the auth_req_id it answers (required there
# in push mode; this IdP sends it in ping and poll mode too, so the client can check that an ID
# Token is the answer to its own request and not another's)
CIBA_AUTH_REQ_ID_CLAIM: Final = "urn:openid:params:jwt:claim:auth_req_id"

# This lab's ID Token claim of how the user answered a CIBA push with a passkey (the IdP verified
# the WebAuthn assertion bound to the push): {"credentialIdDigest": base64url SHA-256 of the
# credential id, cut to 22 characters; "userVerified": the assertion's UV flag; "answer":
# "approve" | "deny"}. On an approval it is in the token response's ID Token; on a denial, in
# the ID Token the `access_denied` error carries as its `id_token` member (RFC 6749 §5.2
# extension member).
PASSKEY_ANSWER_CLAIM: Final = "passkey_answer"

# RFC 9068 §2.1: the JWS `typ` of a JWT access token; §4 accepts both spellings (RFC 7515 §4.1.9)
ACCESS_TOKEN_TYP: Final = "at+jwt"  # noqa: S105
ACCESS_TOKEN_JWT_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})

# RFC 8417 §2.3 (SET `typ`) and RFC 8935 §2 (the media type of a pushed SET)
SET_TYP: Final = "secevent+jwt"
SET_MEDIA_TYPE: Final = "application/secevent+jwt"

# OpenID SSF 1.0 §6.1.1 delivery methods: push (RFC 8935) and poll (RFC 8936)
DELIVERY_PUSH: Final = "urn:ietf:rfc:8935"
DELIVERY_POLL: Final = "urn:ietf:rfc:8936"

# OpenID CAEP 1.0 §3 event types and SSF 1.0 §8.1.4.1 stream verification
_CAEP: Final = "https://schemas.openid.net/secevent/caep/event-type/"
CAEP_EVENT: Final = {
    "session-revoked": _CAEP + "session-revoked",
    "credential-change": _CAEP + "credential-change",
    "assurance-level-change": _CAEP + "assurance-level-change",
    "token-claims-change": _CAEP + "token-claims-change",
}
SSF_VERIFICATION: Final = "https://schemas.openid.net/secevent/ssf/event-type/verification"

# This lab's explicit "the user's session has ended" signal: an OAuth error response from the IdP
# (RFC 6749 §5.2, extension member) carries `"session_ended": true` when it refused because the
# user's IdP session is over, so a client never has to read it out of `error_description`.
SESSION_ENDED: Final = "session_ended"

# A user access token issued to a client the tenant did not configure carries how the client
# came to be known, in this claim (a claim of this tenant's, like `sid`): "rfc7591" (it registered
# itself, RFC 7591) or "cimd" (its client_id is the URL of its Client ID Metadata Document). The
# tenant issues such a token for the MCP server only when its setting lets those clients use the
# agent; the MCP server accepts a client outside its allow-list only with this claim.
REGISTERED_CLIENT_CLAIM: Final = "client_registration"
REGISTRATION_DYNAMIC: Final = "rfc7591"
REGISTRATION_DOCUMENT: Final = "cimd"
REGISTRATION_KINDS: Final = frozenset({REGISTRATION_DYNAMIC, REGISTRATION_DOCUMENT})
