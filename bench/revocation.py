"""Revocation latency on the process topology: CAEP session-revoked SET emitted by Antenna -> the
first 401 a caller that never stops calling gets from the MCP server (the window in which a
revoked session could still act). Max and p50 over the trials.

Each trial: a fresh session; a caller calls `list_users` in a loop from its own thread; the
session attempts two blocked (tier-4) actions, which crosses Antenna's `tier4_refusals` rule
(fixtures/antenna/anomaly.json) so Antenna revokes it; the SET's emission time is the
`caep:session_revoked` event's timestamp on the security console (`GET /events`, millisecond
resolution, the same host clock), the 401's the caller's wall clock when the 401 came back.

`idp_end_latency`: the same caller, but the session ends at the IdP (RP-initiated logout at
the simulated Verify, which pushes CAEP session-revoked to the MCP server over its own SSF
stream): from the moment the logout request is sent (so the figure includes the logout's own
round trip) to the first 401. `python -m bench.revocation` runs only this part on the process
lab and prints it.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import datetime
from typing import Any

import httpx
import jwt

__all__ = ["idp_end_latency", "revocation_latency"]

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


def _hammer(mcp: str, auth: dict[str, str], first_401: list[float],
            calling: threading.Event, stop: threading.Event) -> None:
    with httpx.Client(timeout=30) as http:
        while not stop.is_set():
            r = http.post(mcp, json=_call("list_users", {"count": 1}), headers=auth)
            if r.status_code == 401:
                first_401.append(time.time())
                return
            calling.set()


def idp_end_latency(endpoints: dict[str, str], issuer: str, user: str,
                    trials: int) -> dict[str, Any]:
    """IdP-side end (logout at Verify) -> the first 401 at the MCP server; p50 and max."""
    from harness.verify.login import login

    mcp = endpoints["mcp"]
    refused: list[float] = []
    failures: list[str] = []
    for _ in range(trials):
        tokens = login(issuer, user, resource=mcp)
        auth = {**_HEADERS, "Authorization": f"Bearer {tokens['access_token']}"}
        first_401: list[float] = []
        calling, stop = threading.Event(), threading.Event()
        thread = threading.Thread(target=_hammer, args=(mcp, auth, first_401, calling, stop),
                                  daemon=True)
        thread.start()
        calling.wait(30)
        ended = time.time()
        httpx.get(f"{issuer}/logout", params={"id_token_hint": tokens["id_token"]}, timeout=30)
        thread.join(timeout=30)
        stop.set()
        if not first_401:
            failures.append("the caller never got a 401 after the logout")
            continue
        refused.append((first_401[0] - ended) * 1000)
    return {"idp_end_to_first_401_p50_ms": round(statistics.median(refused), 1)
            if refused else None,
            "idp_end_to_first_401_max_ms": round(max(refused), 1) if refused else None,
            "trials": len(refused), "failures": failures[:3],
            "note": "from the logout request sent to Verify to the first 401 a caller that "
                    "never stops calling gets (one call's duration included)"}


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


def main() -> int:
    """Only the IdP-side measurement, on the process lab (what `make bench` runs in full)."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from bench.run import USER, private_fixtures
    from harness.lab_settings import LabSettings
    from harness.supervisor import OIDC_BASE, Supervisor

    private = Path(tempfile.mkdtemp(prefix="iia-bench-idp-"))
    supervisor = Supervisor(LabSettings.from_env(fixtures=private_fixtures(private)),
                            directory=private / "lab")
    try:
        endpoints = supervisor.start()
        result = idp_end_latency(endpoints, endpoints["verify"] + OIDC_BASE, USER, trials=15)
    finally:
        supervisor.stop()
        shutil.rmtree(private, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
