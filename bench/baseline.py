"""The anchors `make bench` measures the enforced call against, each served by its own OS process
(like every zone of the lab) so its CPU is its own:

    python -m bench.baseline admin   the simulated Verify admin API (the same `AdminApi` class,
                                     directory and fixtures as the Verify process) admitting one
                                     static API-client token: the unenforced SCIM read
    python -m bench.baseline mcp     an MCP server (same SDK, same stateless streamable HTTP as
                                     the product) whose `list_users` sends that same SCIM read
                                     (`GET /Users?count=1`) with the static token: no user token,
                                     no workload identity, no exchange, no policy
    python -m bench.baseline noop    an MCP server on the same SDK whose `list_users` returns at
                                     once (what the SDK and transport cost), and a bare
                                     starlette route `POST /bare` (what uvicorn + starlette cost)

Each binds a loopback port, prints `port N` on its first line of stdout, and serves until
SIGTERM. The static token comes in the environment (`BENCH_STATIC_TOKEN`), never argv or disk;
the admin API's URL in `BENCH_ADMIN_URL`, the fixtures in `IIA_FIXTURES_DIR`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from iia.catalog import CatalogContext, tool
from iia.net import run_loop

__all__ = ["admin_app", "baseline_app", "noop_app"]

ROLES = ("admin", "mcp", "noop")


def _mcp_app(name: str, call: Callable[[dict[str, Any]], Awaitable[str]],
             extra: list[Route] | None = None) -> Starlette:
    """A Starlette app serving one MCP tool, `list_users`, at /mcp (stateless, JSON responses,
    as the product's MCP server)."""
    spec = tool("list_users")

    async def list_tools(ctx: ServerRequestContext[Any],
                         params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[types.Tool(
            name="list_users", description=name, input_schema=dict(spec.input_schema))])

    async def call_tool(ctx: ServerRequestContext[Any],
                        params: types.CallToolRequestParams) -> types.CallToolResult:
        text = await call(params.arguments or {})
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server: Server[Any] = Server(name, on_list_tools=list_tools, on_call_tool=call_tool)
    manager = StreamableHTTPSessionManager(app=server, stateless=True, json_response=True)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(lifespan=lifespan, routes=[
        Route("/mcp", endpoint=StreamableHTTPASGIApp(manager), methods=["GET", "POST", "DELETE"]),
        *(extra or [])])


def baseline_app(admin_api_url: str, static_token: str) -> tuple[Starlette, httpx.Client]:
    """The unenforced MCP server: the SCIM read from a worker thread over a pooled sync httpx
    client, as the product's chain makes its calls."""
    http = httpx.Client(timeout=10)
    spec = tool("list_users")

    def read(arguments: dict[str, Any]) -> str:
        request = spec.request(arguments, CatalogContext())
        response = http.request(request.method, admin_api_url + request.path,
                                params=dict(request.params),
                                headers={"Authorization": f"Bearer {static_token}"})
        response.raise_for_status()
        return json.dumps(spec.compact(response.json()))

    async def call(arguments: dict[str, Any]) -> str:
        return await anyio.to_thread.run_sync(read, arguments)

    return _mcp_app("baseline", call), http


def noop_app() -> Starlette:
    """The no-op MCP tool at /mcp and the bare starlette route at /bare."""
    async def call(arguments: dict[str, Any]) -> str:
        return "ok"

    async def bare(request: Request) -> PlainTextResponse:
        await request.body()
        return PlainTextResponse("ok")

    return _mcp_app("noop", call, [Route("/bare", bare, methods=["POST"])])


def admin_app(fixtures: Path, static_token: str, base_url: str) -> Starlette:
    """The simulated Verify admin API over the fixtures' directory, admitting `static_token`
    (the same classes the Verify process builds in `VerifyTenant`)."""
    from harness.keyset import RotatingKeySet
    from harness.verify.admin_api import AdminApi
    from harness.verify.audit import AuditTrail
    from harness.verify.directory import Directory
    from harness.verify.rar import RarRegistry
    from harness.verify.sessions import SessionStore
    from harness.verify.tokens import TokenService

    sessions = SessionStore()
    tokens = TokenService(base_url + "/oidc/endpoint/default",
                          RotatingKeySet(rotation_period=86400.0, retain=1000.0), sessions)
    admin = AdminApi(directory=Directory(fixtures), tokens=tokens, sessions=sessions,
                     registry=RarRegistry(fixtures / "policy" / "rar_types.json"),
                     audit=AuditTrail(), base_url=base_url + "/v2.0",
                     static_tokens=[static_token])
    return Starlette(routes=[Mount("/v2.0", app=admin.app())])


async def _serve(role: str) -> None:
    from harness.net import HttpService, bind_loopback, serve_until_signalled

    sock = bind_loopback()
    port = sock.getsockname()[1]
    http: httpx.Client | None = None
    if role == "admin":
        fixtures = Path(os.environ["IIA_FIXTURES_DIR"])
        app = admin_app(fixtures, os.environ["BENCH_STATIC_TOKEN"], f"http://127.0.0.1:{port}")
    elif role == "mcp":
        app, http = baseline_app(os.environ["BENCH_ADMIN_URL"].rstrip("/") + "/v2.0",
                                 os.environ["BENCH_STATIC_TOKEN"])
    else:
        app = noop_app()
    service = HttpService(f"bench-{role}", app, sock, lifespan=role != "admin")
    print(f"port {port}", flush=True)
    try:
        await serve_until_signalled([service])
    finally:
        if http is not None:
            http.close()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ROLES:
        sys.exit(f"usage: python -m bench.baseline {{{'|'.join(ROLES)}}}")
    # the product's event loop (uvloop where installed), so the anchors differ from it only in
    # what they do per call
    run_loop(_serve(args[0]))


if __name__ == "__main__":
    main()
