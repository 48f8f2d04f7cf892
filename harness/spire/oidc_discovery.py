"""An OIDC discovery document and JWKS for the trust domain's JWT-SVID keys, like SPIRE's
`oidc-discovery-provider`. Relying parties that speak OIDC but not SPIFFE (Vault's JWT auth, the
simulated Verify) validate JWT-SVIDs with the keys published here.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from harness.spire.authority import JwtAuthority

__all__ = ["discovery_app"]


def discovery_app(authority: JwtAuthority) -> Starlette:
    issuer = authority.issuer.rstrip("/")

    async def configuration(request: Request) -> JSONResponse:
        return JSONResponse({
            "issuer": issuer,
            "jwks_uri": f"{issuer}/keys",
            "authorization_endpoint": "",
            "response_types_supported": ["id_token"],
            "subject_types_supported": [],
            "id_token_signing_alg_values_supported": ["ES256"],
        })

    async def keys(request: Request) -> JSONResponse:
        return JSONResponse(authority.bundle.jwks(use="sig"),
                            headers={"Cache-Control": "max-age=30"})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/.well-known/openid-configuration", configuration),
        Route("/keys", keys),
        Route("/healthz", health),
    ])
