"""`GET /ops/counters` on the MCP server: the warm path's counters, read-only (issue #15).

What a benchmark or an operator needs to tell a warm tool call from a cold one without reaching
into the process: how many times, since this process started, it fetched the IdP's JWKS and
parsed its keys, fetched a JWT-SVID, logged in to Vault, read the credential from Vault, sent a
token exchange, and took a tool call. A warm call adds one Vault read and one token exchange and
nothing else: no JWKS fetch, no key parse, no SVID fetch, no Vault login.

Counts only: no token, secret, key, user or session appears. The answer is JSON:

    {"process": {"name": "iia", "pid": 1234, "started_at": "2026-12-02T10:00:00Z",
                 "uptime_s": 12.3, "cpu_ms": 456.7, "event_loop": "uvloop"},
     "counters": {"tool_calls": 0, "jwks_fetches": 0, "jwks_fetch_failures": 0,
                  "jwks_key_parses": 0, "jwks_key_imports": 0, "svid_fetches": 0,
                  "vault_logins": 0, "vault_secret_reads": 0, "token_exchanges": 0,
                  "token_requests": 0, "ciba_requests": 0, "introspections": 0}}

Every counter is a total since the process started (a restarted process starts at zero again,
with a new `pid` and `started_at`); per-call figures are differences over a window divided by
the difference in `tool_calls`. `cpu_ms` is the process's CPU time (user and system, all
threads); `event_loop` the loop serving the request (`uvloop` or `asyncio`, `iia.net.run_loop`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from iia.oauth.token_exchange import GRANT_TYPE

if TYPE_CHECKING:
    from iia.mcp_server.app import McpServer

__all__ = ["COUNTERS", "COUNTERS_PATH", "counters", "counters_endpoint"]

COUNTERS_PATH = "/ops/counters"

# the counters, in the order they are answered
COUNTERS = ("tool_calls", "jwks_fetches", "jwks_fetch_failures", "jwks_key_parses",
            "jwks_key_imports", "svid_fetches", "vault_logins", "vault_secret_reads",
            "token_exchanges", "token_requests", "ciba_requests", "introspections")

_STARTED_WALL = time.time()
_STARTED = time.monotonic()


def _event_loop() -> str | None:
    try:
        module = type(asyncio.get_running_loop()).__module__
    except RuntimeError:  # not called from a loop
        return None
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def counters(mcp: McpServer) -> dict[str, Any]:
    """The process and its counters, as `GET /ops/counters` answers them."""
    jwks, idp = mcp.verifier.jwks, mcp.idp
    values = {
        "tool_calls": mcp.chain.calls,
        "jwks_fetches": jwks.fetches,
        "jwks_fetch_failures": jwks.failures,
        "jwks_key_parses": jwks.key_parses,
        "jwks_key_imports": mcp.verifier.key_imports,
        "svid_fetches": mcp.identity.svids.fetches,
        "vault_logins": mcp.identity.vault.logins,
        "vault_secret_reads": mcp.identity.vault.reads,
        "token_exchanges": idp.grants.get(GRANT_TYPE, 0),
        "token_requests": idp.requests.get("token_endpoint", 0),
        "ciba_requests": idp.requests.get("backchannel_authentication_endpoint", 0),
        "introspections": idp.requests.get("introspection_endpoint", 0),
    }
    started = datetime.fromtimestamp(_STARTED_WALL, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"process": {"name": "iia", "pid": os.getpid(), "started_at": started,
                        "uptime_s": round(time.monotonic() - _STARTED, 1),
                        "cpu_ms": round(time.process_time() * 1000, 1),
                        "event_loop": _event_loop()},
            "counters": {name: values[name] for name in COUNTERS}}


def counters_endpoint(mcp: McpServer) -> Callable[[Request], Awaitable[Response]]:
    """The starlette endpoint answering `counters(mcp)`, never cached."""

    async def endpoint(request: Request) -> Response:
        return JSONResponse(counters(mcp), headers={"cache-control": "no-store"})

    return endpoint
