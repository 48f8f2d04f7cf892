"""`make bench`: what enforcement costs, measured in one run against an unenforced baseline.

Both paths run in the same lab process, over the same MCP SDK and stateless streamable HTTP, and
make the same SCIM read (`GET /Users?count=1`):

* enforced:   user token validated -> JWT-SVID (cached) -> Vault read -> RFC 8693 exchange at
              the IdP (client auth, rotation, Cedar) -> admin API with the single-use OBO token
* unenforced: an MCP tool holding a static admin token -> admin API

The load runs in a separate process (bench/load.py). Results: `bench/results.json` and
`bench/results.png`; the README quotes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt

from bench.baseline import baseline_app
from harness.lab import Lab
from harness.net import HttpService
from harness.verify.admin_api import AdminApi
from harness.verify.audit import AuditTrail
from harness.verify.login import login

OUT = Path(__file__).resolve().parent
CONCURRENCY = (1, 8, 32)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index], 2)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": pct(values, 50), "p99_ms": pct(values, 99),
            "mean_ms": round(statistics.fmean(values), 2), "n": len(values)}


def load(job: dict[str, Any]) -> Any:
    result = subprocess.run([sys.executable, "-m", "bench.load"], input=json.dumps(job),
                            capture_output=True, text=True, timeout=600, cwd=OUT.parent)
    if result.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def counters(lab: Lab) -> dict[str, int]:
    return {"jwks_fetches": lab.mcp.verifier.jwks.fetches,
            "key_parses": lab.mcp.verifier.jwks.key_parses,
            "vault_logins": lab.mcp_identity.vault.logins,
            "svid_fetches": lab.mcp_identity.svids.fetches}


def breakdown(calls: list[dict[str, float]], client_p50: float) -> dict[str, float]:
    """Median milliseconds per step of `calls` (the chain's own timings: SVID, Vault read,
    token exchange, admin API)."""
    med = {k: statistics.median([s.get(k, 0.0) for s in calls])
           for k in ("svid", "vault", "exchange", "admin_api", "total")}
    return {"svid": round(med["svid"], 2), "vault": round(med["vault"], 2),
            "exchange": round(med["exchange"], 2), "admin_api": round(med["admin_api"], 2),
            "mcp_and_rest": round(client_p50 - med["total"], 2),
            "chain_total": round(med["total"], 2), "calls": len(calls)}


def hop_floor(lab: Lab, calls: int = 400) -> dict[str, float]:
    """The least one extra request can cost here: a no-op endpoint served like every lab service
    (uvicorn on the lab's loop), called the way the chain calls the IdP (a pooled sync httpx
    client, from a worker thread of the lab process). A warm enforced call adds two such hops
    to the unenforced path (the Vault read and the token exchange) before doing any work."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx as sync_httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    noop = HttpService("bench-noop", Starlette(routes=[Route(
        "/noop", lambda _request: PlainTextResponse("ok"), methods=["POST"])]))
    lab._run(noop.start())

    def run() -> list[float]:
        out = []
        with sync_httpx.Client(timeout=10) as http:
            for i in range(calls + 40):
                started = time.perf_counter()
                http.post(noop.url + "/noop", data={"x": "y"}).raise_for_status()
                if i >= 40:
                    out.append((time.perf_counter() - started) * 1000)
        return out

    try:
        with ThreadPoolExecutor(1) as pool:
            return summary(pool.submit(run).result())
    finally:
        lab._run(noop.stop())


def revocation_latency(lab: Lab, trials: int = 15) -> dict[str, float]:
    """SET emitted -> session dropped at the MCP server, and -> the first 401 a caller that
    never stops calling gets (the window in which a revoked session could still act)."""
    import threading

    import httpx as sync_httpx

    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "list_groups", "arguments": {"count": 1}}}
    headers = {"Accept": "application/json, text/event-stream",
               "MCP-Protocol-Version": "2025-11-25"}
    dropped, refused = [], []
    for _ in range(trials):
        tokens = login(lab.verify.issuer, "alice@example.com", resource=lab.mcp_url)
        sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
        stop = threading.Event()

        def hammer(token: str = tokens["access_token"], stop: threading.Event = stop) -> None:
            with sync_httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    r = http.post(lab.mcp_url, json=body,
                                  headers={**headers, "Authorization": f"Bearer {token}"})
                    if r.status_code == 401:
                        return

        thread = threading.Thread(target=hammer, daemon=True)
        thread.start()
        time.sleep(0.2)
        lab.antenna.revoke_session(sid, "alice@example.com", "benchmark")
        emitted = lab.antenna.revocations[sid]["emitted_at"]
        thread.join(timeout=10)
        stop.set()
        at_drop, at_401 = lab.mcp.revocations.revoked_at(sid), lab.mcp.revocations.first_refusal(
            sid)
        if at_drop and at_401:
            dropped.append((at_drop - emitted) * 1000)
            refused.append((at_401 - emitted) * 1000)
    return {"emitted_to_dropped_p50_ms": round(statistics.median(dropped), 1),
            "emitted_to_first_401_p50_ms": round(statistics.median(refused), 1),
            "emitted_to_first_401_max_ms": round(max(refused), 1), "trials": len(refused)}


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.5))
    lat = results["latency"]
    names = ["unenforced", "enforced warm", "enforced cold"]
    rows = [lat["unenforced"], lat["enforced_warm"], lat["enforced_cold"]]
    x = range(len(names))
    a.bar([i - 0.2 for i in x], [r["p50_ms"] for r in rows], 0.4, label="p50")
    a.bar([i + 0.2 for i in x], [r["p99_ms"] for r in rows], 0.4, label="p99")
    a.set_xticks(list(x), names)
    a.set_ylabel("ms per tool call")
    a.set_title("Latency of one tier-1 call")
    a.legend()
    tp = results["throughput"]
    for key, label in (("unenforced", "unenforced"), ("enforced", "enforced")):
        b.plot(CONCURRENCY, [tp[key][str(n)]["calls_per_s"] for n in CONCURRENCY], marker="o",
               label=label)
    b.axhline(200, color="grey", linestyle="--", linewidth=1, label="target 200/s")
    b.set_xticks(CONCURRENCY)
    b.set_xlabel("concurrent sessions")
    b.set_ylabel("calls/s")
    b.set_title("Throughput")
    b.legend()
    steps = results["breakdown"]
    parts = ["svid", "vault", "exchange", "admin_api", "mcp_and_rest"]
    bottom = 0.0
    for part in parts:
        c.bar(["enforced warm"], [steps[part]], bottom=bottom, label=part)
        bottom += steps[part]
    c.bar(["unenforced"], [lat["unenforced"]["p50_ms"]], color="grey")
    c.set_ylabel("ms (median)")
    c.set_title("Where the time goes")
    c.legend(fontsize=8)
    fig.suptitle(f"IIA Lab enforcement cost - {results['machine']['cpus']} CPUs, "
                 f"{results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    os.environ.setdefault("IIA_LAB_SECRET_GRACE", "30")
    with Lab() as lab:
        # The load makes thousands of calls a minute per session: lift the rate anomaly rule
        # (which would rightly end the session) so the benchmark measures enforcement itself.
        lab.antenna.detector.rules = dataclasses.replace(lab.antenna.detector.rules,
                                                         calls_per_minute=10**9)
        static = secrets.token_urlsafe(32)  # in memory only, for the baseline
        v = lab.verify
        admin = AdminApi(directory=v.directory, tokens=v.tokens, sessions=v.sessions,
                         registry=v.registry, audit=AuditTrail(), base_url=v.admin_api_url,
                         static_tokens=[static])
        admin_service = HttpService("bench-admin", _mount(admin))
        lab._run(admin_service.start())
        app, http = baseline_app(admin_service.url + "/v2.0", static, lab.mcp.cold_start)
        baseline = HttpService("bench-baseline", app, lifespan=True)
        lab._run(baseline.start())
        try:
            return _measure(lab, baseline.url + "/mcp", baseline.url + "/bench/cold")
        finally:
            lab._run(baseline.stop())
            lab._run(admin_service.stop())
            http.close()


def _mount(admin: AdminApi) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    return Starlette(routes=[Mount("/v2.0", app=admin.app())])


def _measure(lab: Lab, baseline_url: str, cold_url: str) -> int:
    tokens = [login(lab.verify.issuer, "alice@example.com", resource=lab.mcp_url)["access_token"]
              for _ in range(max(CONCURRENCY))]
    enforced = lab.mcp_url
    print("latency: unenforced ...", flush=True)
    unenforced_lat = load({"kind": "latency", "url": baseline_url, "token": tokens[0],
                           "calls": 400, "warmup": 40})
    print("latency: enforced warm ...", flush=True)
    load({"kind": "latency", "url": enforced, "token": tokens[0], "calls": 1, "warmup": 40})
    before = counters(lab)
    timed = len(lab.mcp.chain.timings)  # (call id, steps) per call, up to 10,000 kept
    warm = load({"kind": "latency", "url": enforced, "token": tokens[0], "calls": 400,
                 "warmup": 0})
    after = counters(lab)
    steps = breakdown([s for _, s in list(lab.mcp.chain.timings)[timed:]], pct(warm, 50))
    print("latency: enforced cold ...", flush=True)
    cold = load({"kind": "cold", "url": enforced, "token": tokens[0], "cold_url": cold_url,
                 "samples": 15})
    throughput: dict[str, dict[str, Any]] = {"unenforced": {}, "enforced": {}}
    for n in CONCURRENCY:
        for key, url in (("unenforced", baseline_url), ("enforced", enforced)):
            print(f"throughput: {key}, {n} sessions ...", flush=True)
            out = load({"kind": "throughput", "url": url, "tokens": tokens[:n], "seconds": 5})
            throughput[key][str(n)] = {"calls_per_s": round(out["calls_per_s"], 1),
                                       "calls": out["calls"], **summary(out["latencies"])}
    print("revocation latency ...", flush=True)
    revocation = revocation_latency(lab)
    print("one loopback hop (floor) ...", flush=True)
    floor = hop_floor(lab)
    warm_delta = {k: after[k] - before[k] for k in after}
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "latency": {"unenforced": summary(unenforced_lat), "enforced_warm": summary(warm),
                    "enforced_cold": summary(cold)},
        "throughput": throughput,
        "breakdown": steps,
        "warm_path_counts": warm_delta,
        "revocation": revocation,
        "hop_floor": floor,
    }
    p50_gap = results["latency"]["enforced_warm"]["p50_ms"] - \
        results["latency"]["unenforced"]["p50_ms"]
    results["targets"] = {
        "warm_p50_overhead_ms": {"target": 3.0, "measured": round(p50_gap, 2),
                                 "met": p50_gap <= 3.0},
        "enforced_calls_per_s_at_32": {
            "target": 200, "measured": throughput["enforced"]["32"]["calls_per_s"],
            "met": throughput["enforced"]["32"]["calls_per_s"] >= 200},
        "warm_path_fetches_logins_parses": {"target": 0, "measured": sum(warm_delta.values()),
                                            "met": sum(warm_delta.values()) == 0},
    }
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, OUT / "results.png")
    print(json.dumps(results["latency"], indent=2))
    print(json.dumps(results["targets"], indent=2))
    print(json.dumps(results["revocation"], indent=2))
    print("one no-op loopback hop:", json.dumps(floor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
