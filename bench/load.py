"""The load generator, run in its own process so it does not share the lab's interpreter.

Reads a JSON job from stdin (URLs, access tokens: never from argv or disk) and prints JSON.
Every call is `list_users {"count": 1}` over MCP streamable HTTP with the real client."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx

from iia.agent import McpToolClient

ARGS = {"count": 1}


async def _timed(mcp: McpToolClient) -> float:
    started = time.perf_counter()
    result = await mcp.call_tool("list_users", ARGS)
    elapsed = (time.perf_counter() - started) * 1000
    if result.is_error:
        raise RuntimeError(result.text)
    return elapsed


async def latency(url: str, token: str, calls: int, warmup: int) -> list[float]:
    async with McpToolClient(url, lambda: token) as mcp:
        for _ in range(warmup):
            await _timed(mcp)
        return [await _timed(mcp) for _ in range(calls)]


async def cold(url: str, token: str, cold_url: str, samples: int) -> list[float]:
    out = []
    async with httpx.AsyncClient() as http, McpToolClient(url, lambda: token) as mcp:
        for _ in range(samples):
            (await http.post(cold_url)).raise_for_status()
            out.append(await _timed(mcp))
    return out


async def throughput(url: str, tokens: list[str], seconds: float) -> dict[str, Any]:
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []

    async def worker(token: str) -> int:
        done = 0
        async with McpToolClient(url, lambda: token) as mcp:
            await _timed(mcp)  # connect and warm this session
            while time.perf_counter() < deadline:
                latencies.append(await _timed(mcp))
                done += 1
        return done

    started = time.perf_counter()
    counts = await asyncio.gather(*(worker(t) for t in tokens))
    elapsed = time.perf_counter() - started
    return {"calls": sum(counts), "seconds": elapsed,
            "calls_per_s": sum(counts) / max(elapsed, 1e-9), "latencies": latencies}


async def main() -> None:
    job = json.loads(sys.stdin.read())
    kind = job["kind"]
    if kind == "latency":
        out: Any = await latency(job["url"], job["token"], job["calls"], job["warmup"])
    elif kind == "cold":
        out = await cold(job["url"], job["token"], job["cold_url"], job["samples"])
    else:
        out = await throughput(job["url"], job["tokens"], job["seconds"])
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
