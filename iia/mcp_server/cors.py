"""CORS (the Fetch standard's CORS protocol) for the MCP endpoint and its Protected Resource
Metadata (RFC 9728), for the configured origins only (`IIA_CORS_ORIGINS`; empty: none).

* **A configured origin** gets its preflight (`OPTIONS` with `Access-Control-Request-Method`)
  answered 204: that exact origin in `Access-Control-Allow-Origin` (never `*`, and no
  `Access-Control-Allow-Credentials`: the bearer token is a header the page sets, not a
  cookie), the methods, the request headers an MCP client sends, and a max age. Its real
  requests go on, and every answer (a 401 too) carries the origin and exposes
  `WWW-Authenticate`, `Mcp-Session-Id` and `MCP-Protocol-Version`, which a browser client
  must read to sign in and to speak the protocol.
* **Any other origin** gets no CORS header at all. Its preflight is refused 403 and so is
  its real request, before authentication or the MCP transport see it, so nothing runs.
  The exception is what the SDK's DNS-rebinding check already lets through
  (`passthrough`: loopback origins, for local tools): their real requests go on, without
  CORS headers, so a page there still cannot read an answer.
* **No `Origin`** (not a browser, or same-origin): untouched.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iia.errors import ConfigurationError
from iia.settings import web_origin

__all__ = ["ALLOW_HEADERS", "EXPOSE_HEADERS", "CorsGate"]

ALLOW_HEADERS = ("authorization", "content-type", "mcp-protocol-version", "mcp-session-id",
                 "last-event-id", "mcp-method", "mcp-name")
# the SDK's per-argument routing headers (Mcp-Param-<name>), echoed when a preflight asks
PARAM_HEADER = re.compile(r"mcp-param-[a-z0-9_-]{1,100}")
EXPOSE_HEADERS = "WWW-Authenticate, Mcp-Session-Id, MCP-Protocol-Version"
MAX_AGE = "600"
INVALID_REQUEST = -32600  # JSON-RPC 2.0


def _matches(origin: str, pattern: str) -> bool:
    """The SDK's origin pattern (mcp.server.transport_security): exact, or `base:*` for any
    port."""
    return origin == pattern or (pattern.endswith(":*") and origin.startswith(pattern[:-1]))


class CorsGate:
    def __init__(self, app: ASGIApp, origins: Collection[str], *, methods: tuple[str, ...],
                 passthrough: Collection[str] = (), jsonrpc: bool = True) -> None:
        self.app = app
        self.origins = frozenset(origins)
        self.methods = methods
        self.passthrough = tuple(passthrough)
        self.jsonrpc = jsonrpc  # refusals as JSON-RPC errors (the MCP endpoint) or OAuth's

    def allowed(self, origin: str) -> bool:
        """True only for a configured origin (compared in its RFC 6454 serialisation)."""
        try:
            return web_origin("Origin", origin) in self.origins
        except ConfigurationError:
            return False  # "null", or not an origin at all

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.allowed(origin)
        if scope["method"] == "OPTIONS":
            if allowed and "access-control-request-method" in headers:
                await self._preflight(origin, headers, send)
            elif allowed:
                await _send(send, 405, {"error": "method_not_allowed"},
                            [(b"allow", ", ".join(self.methods).encode())])
            else:
                await self._refuse(origin, send)
            return
        if not allowed:
            if any(_matches(origin, p) for p in self.passthrough):
                await self.app(scope, receive, send)
            else:
                await self._refuse(origin, send)
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [
                    *message.get("headers", []), *self._common(origin),
                    (b"access-control-expose-headers", EXPOSE_HEADERS.encode())]}
            await send(message)

        await self.app(scope, receive, with_cors)

    @staticmethod
    def _common(origin: str) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin")]

    async def _preflight(self, origin: str, headers: Headers, send: Send) -> None:
        requested = [h.strip().lower() for h in
                     headers.get("access-control-request-headers", "").split(",") if h.strip()]
        allow = list(ALLOW_HEADERS) + [h for h in requested if PARAM_HEADER.fullmatch(h)]
        await send({"type": "http.response.start", "status": 204, "headers": [
            *self._common(origin),
            (b"access-control-allow-methods", ", ".join(self.methods).encode()),
            (b"access-control-allow-headers", ", ".join(allow).encode()),
            (b"access-control-max-age", MAX_AGE.encode())]})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, origin: str, send: Send) -> None:
        sentence = (f"the origin {origin[:100]!r} may not call this server from a browser "
                    "(it is not in IIA_CORS_ORIGINS)")
        body: dict[str, object]
        if self.jsonrpc:
            body = {"jsonrpc": "2.0", "id": None, "error": {
                "code": INVALID_REQUEST, "message": sentence,
                "data": {"http_status": 403, "error": "origin_not_allowed"}}}
        else:
            body = {"error": "origin_not_allowed", "error_description": sentence}
        await _send(send, 403, body, [])


async def _send(send: Send, status: int, body: object,
                extra: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        (b"cache-control", b"no-store"), *extra]})
    await send({"type": "http.response.body", "body": data})
