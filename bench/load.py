"""The load generator, run in its own process so it shares no interpreter with what it measures.

Reads one JSON job from stdin (URLs, access tokens: never from argv or disk), prints JSON.

    {"target": "mcp" | "http", "url": ..., "tokens": [one per session], "seconds": S,
     "warm_calls": W, "pids": {"name": pid, ...}}

Every session connects and makes `warm_calls` calls (its first call, and its caches warm: the
MCP server's token cache, the workload's SVID and Vault token). Only once **every** session is
warm does the timed window open: from then each session calls in a loop until `seconds` have
passed. A call is `list_users {"count": 1}` over MCP streamable HTTP with the product's client
(`target` mcp) or a `POST` with a small body (`target` http). At the window's open and close
the CPU time (utime + stime, /proc/<pid>/stat) of each process in `pids` and of this one is read:
the result has each process's CPU milliseconds over the window."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from iia.agent import McpToolClient

ARGS = {"count": 1}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float | None:
    """utime + stime of `pid` (all its threads) in milliseconds, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) * 1000.0 / TICK


def cpu_of(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: cpu_ms(pid) for name, pid in pids.items()}


class Window:
    """Opens when every session is warm; closes `seconds` later."""

    def __init__(self, sessions: int, seconds: float, pids: dict[str, int]) -> None:
        self.sessions, self.seconds, self.pids = sessions, seconds, pids
        self.warm = 0
        self.opened = asyncio.Event()
        self.deadline = 0.0
        self.started = 0.0
        self.cpu_before: dict[str, float | None] = {}

    def ready(self) -> None:
        self.warm += 1
        if self.warm == self.sessions:
            self.cpu_before = cpu_of(self.pids)
            self.started = time.perf_counter()
            self.deadline = self.started + self.seconds
            self.opened.set()


async def _session(call: Callable[[], Awaitable[None]], window: Window, warm_calls: int,
                   latencies: list[float], errors: list[str]) -> int:
    for _ in range(warm_calls):
        await call()  # a failure here fails the point: it was never measured
    window.ready()
    await window.opened.wait()
    done = 0
    while time.perf_counter() < window.deadline:
        started = time.perf_counter()
        try:
            await call()
        except Exception as exc:  # counted and reported, not measured as a latency
            errors.append(f"{exc.__class__.__name__}: {exc}"[:300])
            await asyncio.sleep(0.01)
            continue
        latencies.append((time.perf_counter() - started) * 1000)
        done += 1
    return done


async def run(job: dict[str, Any]) -> dict[str, Any]:
    tokens: list[str] = job["tokens"]
    pids = {**{k: int(v) for k, v in job.get("pids", {}).items()}, "load": os.getpid()}
    window = Window(len(tokens), float(job["seconds"]), pids)
    latencies: list[float] = []
    errors: list[str] = []
    warm_calls = int(job.get("warm_calls", 2))

    async def mcp_session(token: str) -> int:
        async with McpToolClient(job["url"], lambda: token, timeout=120) as mcp:
            async def call() -> None:
                result = await mcp.call_tool("list_users", ARGS)
                if result.is_error:
                    raise RuntimeError(result.text)
            return await _session(call, window, warm_calls, latencies, errors)

    async def http_session(token: str) -> int:
        async with httpx.AsyncClient(timeout=120) as http:
            async def call() -> None:
                (await http.post(job["url"], content=b'{"count": 1}')).raise_for_status()
            return await _session(call, window, warm_calls, latencies, errors)

    session = mcp_session if job["target"] == "mcp" else http_session
    counts = await asyncio.gather(*(session(t) for t in tokens))
    elapsed = time.perf_counter() - window.started
    after = cpu_of(pids)
    cpu = {name: (None if window.cpu_before.get(name) is None or after[name] is None
                  else round(after[name] - window.cpu_before[name], 1))  # type: ignore[operator]
           for name in pids}
    return {"calls": sum(counts), "seconds": elapsed,
            "calls_per_s": sum(counts) / max(elapsed, 1e-9), "latencies": latencies,
            "errors": len(errors), "first_errors": errors[:3], "cpu_ms": cpu,
            "sessions": len(tokens)}


async def cold(job: dict[str, Any]) -> dict[str, Any]:
    """One session's connect (MCP initialize), first and second `list_users`, in ms: against a
    freshly started MCP server process, the first call pays for every cache (JWKS, SVID, Vault
    login) and every lazy import."""
    token = job["tokens"][0]
    started = time.perf_counter()
    async with McpToolClient(job["url"], lambda: token, timeout=120) as mcp:
        connected = time.perf_counter()
        out = {"connect_ms": round((connected - started) * 1000, 2)}
        for key in ("first_call_ms", "second_call_ms"):
            began = time.perf_counter()
            result = await mcp.call_tool("list_users", ARGS)
            if result.is_error:
                raise RuntimeError(result.text)
            out[key] = round((time.perf_counter() - began) * 1000, 2)
    return out


def main() -> None:
    job = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(cold(job) if job.get("kind") == "cold" else run(job))))


if __name__ == "__main__":
    main()
