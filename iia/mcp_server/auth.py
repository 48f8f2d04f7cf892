"""Bearer-token authentication of every MCP HTTP request (MCP authorization spec, RFC 6750,
RFC 9728).

Each POST (one JSON-RPC message in stateless streamable HTTP) is authenticated on its own, so a
session revoked between two tool calls gets 401 on the next one. A refusal is a 401 with
`WWW-Authenticate: Bearer error="invalid_token", error_description="<why>",
resource_metadata="<PRM URL>"` and a JSON-RPC error body, so MCP clients surface the reason.
On success the SDK's `AuthenticatedUser` and `AccessToken` are put in the ASGI scope, where the
SDK's `get_access_token()` finds them.

When the token cannot be checked at all (the IdP's keys are unreachable) the answer is 503 with
JSON-RPC code -32002 and no `invalid_token`: the token may be fine, and a client must not end the
user's session over the IdP's outage. Nothing runs either way.
"""

from __future__ import annotations

import json

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Receive, Scope, Send

from iia.errors import IIAError
from iia.resource_server import InvalidTokenError, UserTokenVerifier

__all__ = ["AUTH_UNAVAILABLE", "UNAUTHORIZED", "BearerAuth"]

UNAUTHORIZED = -32001  # JSON-RPC error code for a refused bearer token
AUTH_UNAVAILABLE = -32002  # JSON-RPC error code for "cannot check the token right now"


def _header_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'")


class BearerAuth:
    def __init__(self, app: ASGIApp, verifier: UserTokenVerifier, resource_metadata_url: str):
        self.app = app
        self.verifier = verifier
        self.resource_metadata_url = resource_metadata_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await self._refuse(send, None, "a bearer access token is required")
            return
        token = token.strip()
        try:
            if self.verifier.can_verify_offline(token):  # the usual case: no thread hop
                caller = self.verifier.verify(token)
            else:  # a key to fetch: do the I/O off the event loop
                caller = await anyio.to_thread.run_sync(self.verifier.verify, token)
        except InvalidTokenError as exc:
            await self._refuse(send, "invalid_token", exc.description)
            return
        except IIAError as exc:  # the IdP's keys are unreachable: fail closed, say so
            await self._unavailable(send, f"cannot validate the access token now: "
                                          f"{exc.description}")
            return
        access = AccessToken(token=caller.token, client_id=str(caller.claims.get("client_id")),
                             scopes=[], expires_at=int(caller.claims["exp"]),
                             resource=self.verifier.audience, subject=caller.sub,
                             claims=dict(caller.claims))
        scope["user"] = AuthenticatedUser(access)
        scope["auth"] = AuthCredentials([])
        scope["iia.caller"] = caller
        await self.app(scope, receive, send)

    async def _refuse(self, send: Send, error: str | None, description: str) -> None:
        challenge = 'Bearer realm="iia-mcp"'
        if error:
            challenge += f', error="{error}", error_description="{_header_value(description)}"'
        challenge += f', resource_metadata="{self.resource_metadata_url}"'
        await _send_error(send, 401, UNAUTHORIZED, description, error or "unauthorized",
                          [(b"www-authenticate", challenge.encode())])

    async def _unavailable(self, send: Send, description: str) -> None:
        await _send_error(send, 503, AUTH_UNAVAILABLE, description, "temporarily_unavailable",
                          [(b"retry-after", b"1")])


async def _send_error(send: Send, status: int, code: int, description: str, error: str,
                      extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {
        "code": code, "message": description,
        "data": {"http_status": status, "error": error}}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), *extra]})
    await send({"type": "http.response.body", "body": body})
