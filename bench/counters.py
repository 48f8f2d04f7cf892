"""The warm path's counters of the product process, read over HTTP (issue #15).

The MCP server answers `GET /ops/counters` (iia.mcp_server.ops) on its own origin: totals since
its process started of JWKS fetches, key parses, SVID fetches, Vault logins and secret reads,
token exchanges and tool calls. A benchmark reads them at a window's open and close:

    before = fetch_counters(counters_url(endpoints["mcp"]))
    ...  # the timed window
    after = fetch_counters(counters_url(endpoints["mcp"]))
    per_call(before, after)  # {"jwks_fetches": 0.0, "vault_secret_reads": 1.0, ...}
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

__all__ = ["PATH", "counters_url", "fetch_counters", "per_call"]

PATH = "/ops/counters"


def counters_url(mcp_url: str) -> str:
    """The counters' URL on the origin of the MCP endpoint `mcp_url` (e.g. .../mcp)."""
    parts = urlsplit(mcp_url)
    return urlunsplit((parts.scheme, parts.netloc, PATH, "", ""))


def fetch_counters(url: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """`{"process": {...}, "counters": {name: total}}` as the MCP server answers it; raises
    httpx.HTTPError when it does not answer 200 with that shape."""
    response = httpx.get(url, timeout=timeout, headers={"Accept": "application/json"})
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    if not isinstance(body.get("counters"), dict) or not isinstance(body.get("process"), dict):
        raise httpx.DecodingError(f"{url} did not answer the counters' shape")
    return body


def per_call(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    """Each counter's increase per tool call between two readings of the same process (None
    for all when no call was made or the process restarted in between)."""
    names = [n for n in after["counters"] if n != "tool_calls"]
    calls = after["counters"]["tool_calls"] - before["counters"]["tool_calls"]
    if calls <= 0 or after["process"]["pid"] != before["process"]["pid"]:
        return dict.fromkeys(names)
    return {n: round((after["counters"][n] - before["counters"].get(n, 0)) / calls, 3)
            for n in names}
