"""The unenforced baseline: the same SCIM read as the enforced `list_users`, through an MCP tool
(same SDK, same stateless streamable HTTP) that holds a static admin token. No user token, no
workload identity, no exchange, no policy: what enforcement is measured against."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iia.catalog import CatalogContext, tool

__all__ = ["baseline_app"]


def baseline_app(admin_api_url: str, static_token: str,
                 cold_start: Callable[[], None]) -> tuple[Starlette, httpx.Client]:
    http = httpx.Client(timeout=10)
    spec = tool("list_users")

    def read(arguments: dict[str, Any]) -> str:
        request = spec.request(arguments, CatalogContext())
        response = http.request(request.method, admin_api_url + request.path,
                                params=dict(request.params),
                                headers={"Authorization": f"Bearer {static_token}"})
        response.raise_for_status()
        import json

        return json.dumps(spec.compact(response.json()))

    async def list_tools(ctx: ServerRequestContext[Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(
            name="list_users", description="unenforced", input_schema=dict(spec.input_schema))])

    async def call_tool(ctx: ServerRequestContext[Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        text = await anyio.to_thread.run_sync(read, params.arguments or {})
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server: Server[Any] = Server("baseline", on_list_tools=list_tools, on_call_tool=call_tool)
    manager = StreamableHTTPSessionManager(app=server, stateless=True, json_response=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    async def cold(request: Request) -> JSONResponse:
        cold_start()
        return JSONResponse({"cold": True})

    return Starlette(lifespan=lifespan, routes=[
        Route("/mcp", endpoint=StreamableHTTPASGIApp(manager), methods=["GET", "POST", "DELETE"]),
        Route("/bench/cold", cold, methods=["POST"]),
    ]), http
