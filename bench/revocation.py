"""Revocation latency on the process topology: CAEP session-revoked SET emitted by Antenna -> the
first 401 a caller that never stops calling gets from the MCP server (the window in which a
revoked session could still act). Max and p50 over the trials.

Each trial: a fresh session; a caller calls `list_users` in a loop from its own thread; the
session attempts two blocked (tier-4) actions, which crosses Antenna's `tier4_refusals` rule
(fixtures/antenna/anomaly.json) so Antenna revokes it; the SET's emission time is the
`caep:session_revoked` event's timestamp on the security console (`GET /events`, millisecond
resolution, the same host clock), the 401's the caller's wall clock when the 401 came back.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import datetime
from typing import Any

import httpx
import jwt

__all__ = ["revocation_latency"]

_HEADERS = {"Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25"}


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}}


def _emitted_at(console: str, sid: str, timeout: float = 30.0) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = httpx.get(console + "/events", params={"session": sid}, timeout=10).json()
        for event in events["events"]:
            if event["type"] == "caep:session_revoked":
                return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")
                                              ).timestamp()
        time.sleep(0.05)
    return None


def revocation_latency(endpoints: dict[str, str], issuer: str, user: str,
                       trials: int) -> dict[str, Any]:
    from harness.verify.login import login

    mcp, console = endpoints["mcp"], endpoints["console"]
    refused: list[float] = []
    failures: list[str] = []
    for _ in range(trials):
        token = str(login(issuer, user, resource=mcp)["access_token"])
        sid = jwt.decode(token, options={"verify_signature": False})["sid"]
        auth = {**_HEADERS, "Authorization": f"Bearer {token}"}
        first_401: list[float] = []
        calling = threading.Event()
        stop = threading.Event()

        def hammer(auth: dict[str, str] = auth, first_401: list[float] = first_401,
                   calling: threading.Event = calling, stop: threading.Event = stop) -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    r = http.post(mcp, json=_call("list_users", {"count": 1}), headers=auth)
                    if r.status_code == 401:
                        first_401.append(time.time())
                        return
                    calling.set()

        thread = threading.Thread(target=hammer, daemon=True)
        thread.start()
        calling.wait(30)
        with httpx.Client(timeout=30) as http:
            for _attempt in range(2):
                http.post(mcp, json=_call("delete_user", {"user_id": "bench-no-such-user"}),
                          headers=auth)
        thread.join(timeout=30)
        stop.set()
        emitted = _emitted_at(console, sid)
        if emitted is None or not first_401:
            failures.append(f"session {sid[:8]}: " + ("no session-revoked event on the console"
                            if emitted is None else "the caller never got a 401"))
            continue
        refused.append((first_401[0] - emitted) * 1000)
    return {"emitted_to_first_401_p50_ms": round(statistics.median(refused), 1)
            if refused else None,
            "emitted_to_first_401_max_ms": round(max(refused), 1) if refused else None,
            "trials": len(refused), "failures": failures[:3],
            "note": "event timestamps have millisecond resolution"}
