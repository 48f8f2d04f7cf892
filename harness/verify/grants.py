"""The grants the simulated Verify's token endpoint serves, as authlib grant classes.

    authorization_code   AuthorizationCodeGrant: authlib's, with PKCE S256 required
                         (`S256CodeChallenge`, RFC 7636; `plain` refused); the code store,
                         single use and the session it ends on replay are OidcProvider's
    refresh_token        RefreshTokenGrant: authlib's, a new refresh token on every use; the
                         spent one is refused and its reuse ends the session (RFC 9700 §4.14)
    token-exchange       TokenExchangeGrant (RFC 8693 + RFC 9396 + Cedar): harness/verify/
                         token_exchange.py decides, this class authenticates the client
    ciba                 CibaGrant (OpenID CIBA §10.1): harness/verify/ciba.py decides
    client_credentials   ClientCredentialsGrant (RFC 6749 §4.4): only for the SSF stream
                         management scope; harness/verify/ssf_transmitter.py issues the token

Each grant authenticates the client through authlib (VerifyAuthorizationServer) and serves
only a client registered for its grant type (`unauthorized_client`). A grant class is bound
to the object that owns its protocol step with `bound(GrantClass, owner)`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import InvalidRequestError, UnauthorizedClientError
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from starlette.responses import Response

from harness.verify.client_auth import Client
from harness.verify.tokens import Grantee, RefreshGrant
from iia.protocol import CIBA_GRANT, TOKEN_EXCHANGE_GRANT

__all__ = ["AuthorizationCodeGrant", "CibaGrant", "ClientCredentialsGrant", "RefreshTokenGrant",
           "S256CodeChallenge", "TokenExchangeGrant", "bound"]

# authlib's three methods, at the token endpoint; whether the client may use the grant is
# checked next (check_grant_type), so a public client asking for a grant it is not registered
# for is told `unauthorized_client`, not `invalid_client`
TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

G = TypeVar("G")


def bound(grant: type[G], owner: object) -> type[G]:
    """`grant` bound to the object that owns its protocol step (registered on the server)."""
    return type(grant.__name__, (grant,), {"owner": owner})


class DelegatedGrant(Protocol):
    def grant(self, client: Client, form: Mapping[str, str]) -> Response: ...


class CodeOwner(Protocol):
    """What the code and refresh grants ask of the OpenID Provider (harness/verify/oidc.py)."""

    def save_code(self, code: str, request: Any) -> None: ...
    def spend_code(self, code: str, client: Client, redirect_uri: str | None) -> Any: ...
    def grantee_of_code(self, record: Any) -> Grantee: ...
    def spend_refresh_token(self, token: str, client: Client) -> RefreshGrant: ...
    def grantee_of_refresh(self, grant: RefreshGrant, resource: str | None) -> Grantee: ...
    def id_token(self, client: Client, grantee: Grantee, access_token: str | None) -> str: ...


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """RFC 7636 with S256 only, and required at the authorization endpoint: authlib's
    `CodeChallenge(required=True)` requires a verifier of public clients at the token endpoint
    but lets an authorization request without a challenge through."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    CODE_CHALLENGE_METHODS: ClassVar[dict[str, Any]] = {"S256": compare_s256_code_challenge}

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        challenge, method = data.get("code_challenge"), data.get("code_challenge_method")
        if not challenge:
            raise InvalidRequestError("PKCE is required: send code_challenge (S256)")
        if method not in self.SUPPORTED_CODE_CHALLENGE_METHOD:
            raise InvalidRequestError("code_challenge_method must be S256; plain is refused")
        super().validate_code_challenge(grant, redirect_uri)


def _with_id_token(grant: Any, response: tuple[int, dict[str, Any], Any]) -> None:
    """OpenID Connect Core §3.1.3.3 / §12.2: an ID token with every token response whose
    scope has `openid` (authlib's hook after create_token_response), with the `at_hash` of the
    access token beside it (§3.1.3.6)."""
    _, token, _ = response
    if "openid" in str(token.get("scope", "")).split():
        token["id_token"] = grant.owner.id_token(grant.request.client, grant.request.user,
                                                 token.get("access_token"))


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    owner: ClassVar[CodeOwner]
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_ENDPOINT_AUTH_METHODS

    def __init__(self, request: Any, server: Any) -> None:
        super().__init__(request, server)
        self.register_hook("after_create_token_response", _with_id_token)

    def save_authorization_code(self, code: str, request: Any) -> None:
        self.owner.save_code(code, request)

    def query_authorization_code(self, code: str, client: Client) -> Any:
        """Spends the code at once (a second presentation is a replay, whatever the first
        one's outcome)."""
        return self.owner.spend_code(code, client, self.request.payload.redirect_uri)

    def delete_authorization_code(self, authorization_code: Any) -> None:
        """Nothing left to do: the code was spent when it was presented."""

    def authenticate_user(self, authorization_code: Any) -> Grantee:
        return self.owner.grantee_of_code(authorization_code)


class RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    owner: ClassVar[CodeOwner]
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_ENDPOINT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation (RFC 9700 §4.14.2)

    def __init__(self, request: Any, server: Any) -> None:
        super().__init__(request, server)
        self.register_hook("after_create_token_response", _with_id_token)

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshGrant:
        """Spends the token at once; presenting a spent one ends its session."""
        return self.owner.spend_refresh_token(refresh_token, self.request.client)

    def authenticate_user(self, refresh_token: RefreshGrant) -> Grantee:
        return self.owner.grantee_of_refresh(refresh_token, self.request.payload.data.get(
            "resource"))

    def revoke_old_credential(self, refresh_token: RefreshGrant) -> None:
        """Nothing left to do: the token was spent when it was presented."""


class _DelegatingGrant(grants.BaseGrant, grants.TokenEndpointMixin):  # type: ignore[misc]
    """A grant whose decision lives in another module: authlib authenticates the client and
    checks it is registered for the grant type, `owner.grant(client, form)` does the rest."""

    owner: ClassVar[DelegatedGrant]
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_ENDPOINT_AUTH_METHODS

    def validate_token_request(self) -> None:
        client: Client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(f"{client.client_id} may not use {self.GRANT_TYPE}")
        self.request.client = client

    def create_token_response(self) -> tuple[int, Any, list[tuple[str, str]]]:
        response = self.owner.grant(self.request.client, self.request.source.form)
        headers = [(k, v) for k, v in response.headers.items()
                   if k.lower() not in ("content-length", "content-type")]
        return response.status_code, json.loads(bytes(response.body)), headers


class TokenExchangeGrant(_DelegatingGrant):
    """RFC 8693 §2: decided by harness/verify/token_exchange.py (TokenExchange.grant)."""

    GRANT_TYPE = TOKEN_EXCHANGE_GRANT


class CibaGrant(_DelegatingGrant):
    """OpenID CIBA §10.1: decided by harness/verify/ciba.py (Ciba.grant)."""

    GRANT_TYPE = CIBA_GRANT


class ClientCredentialsGrant(_DelegatingGrant):
    """RFC 6749 §4.4, for a confidential client registered for it: an access token for SSF
    stream management (harness/verify/ssf_transmitter.py ManagementTokens.grant)."""

    GRANT_TYPE = "client_credentials"
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012
