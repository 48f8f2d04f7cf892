"""The simulated Verify tenant: OIDC discovery, JWKS and the token endpoint.

Paths mirror a Verify tenant: the OIDC provider lives under `/oidc/endpoint/default`, the admin
API under `/v2.0/`. This first cut authenticates confidential clients (with the rotating secret
from Vault) and serves the `client_credentials` grant for `iia-mcp-server`; its tokens carry no
entitlement for the admin API.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from harness.keyset import RotatingKeySet
from harness.verify.client_auth import Client, ClientRegistry, authenticate_client
from harness.verify.errors import (
    InvalidRequest,
    OAuthError,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from harness.verify.rotation import RotatingClientSecret

__all__ = ["VerifyTenant"]

OIDC_BASE = "/oidc/endpoint/default"
CLIENT_CREDENTIALS = "client_credentials"


class VerifyTenant:
    def __init__(
        self,
        base_url: str,
        *,
        mcp_client_secret: RotatingClientSecret,
        access_token_ttl: int = 900,
        key_rotation_period: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.issuer = f"{self.base_url}{OIDC_BASE}"
        self.token_endpoint = f"{self.issuer}/token"
        self.access_token_ttl = access_token_ttl
        self.keys = RotatingKeySet(rotation_period=key_rotation_period,
                                   retain=access_token_ttl + 60, clock=clock)
        self._clock = clock
        self.clients = ClientRegistry({
            mcp_client_secret.client_id: Client(
                client_id=mcp_client_secret.client_id, public=False,
                grant_types=frozenset({CLIENT_CREDENTIALS}), secret=mcp_client_secret),
        })

    # -- endpoints --------------------------------------------------------------------------

    async def discovery(self, request: Request) -> JSONResponse:
        return JSONResponse({
            "issuer": self.issuer,
            "token_endpoint": self.token_endpoint,
            "jwks_uri": f"{self.issuer}/jwks",
            "grant_types_supported": [CLIENT_CREDENTIALS],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })

    async def jwks(self, request: Request) -> JSONResponse:
        return JSONResponse(self.keys.jwks(use="sig"))

    async def token(self, request: Request) -> Response:
        try:
            form = {k: str(v) for k, v in (await request.form()).items()}
            client = authenticate_client(request, form, self.clients)
            grant_type = form.get("grant_type")
            if not grant_type:
                raise InvalidRequest("grant_type is required")
            if grant_type not in (CLIENT_CREDENTIALS,):
                raise UnsupportedGrantType(f"grant type {grant_type!r} is not supported")
            if grant_type not in client.grant_types:
                raise UnauthorizedClient(f"{client.client_id} may not use {grant_type}")
            return self._client_credentials(client)
        except OAuthError as exc:
            return exc.response()

    def _client_credentials(self, client: Client) -> JSONResponse:
        now = int(self._clock())
        token = self.keys.sign({
            "iss": self.issuer, "sub": client.client_id, "aud": self.issuer,
            "client_id": client.client_id, "iat": now, "exp": now + self.access_token_ttl,
            "jti": secrets.token_urlsafe(16),
        }, typ="at+jwt")
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": self.access_token_ttl},
                            headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route(f"{OIDC_BASE}/.well-known/openid-configuration", self.discovery),
            Route(f"{OIDC_BASE}/jwks", self.jwks),
            Route(f"{OIDC_BASE}/token", self.token, methods=["POST"]),
            Route("/healthz", self.health),
        ])
