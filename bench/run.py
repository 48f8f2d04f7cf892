"""`make bench`: what enforcement costs, measured on the lab's process topology in one run against
its anchors (`python -m bench.run [--quick]`).

The lab runs as `iia-lab up` runs it: a `Supervisor` (harness/supervisor.py), one OS process per
zone, here in a private lab directory on a private copy of the fixtures (whose Antenna rate rule
is lifted: the load makes thousands of calls a minute per session, which would rightly end the
session). Every path makes the same call, `list_users {"count": 1}`, over MCP streamable HTTP
with the product's client, from a separate load process (bench/load.py):

* enforced:   the MCP server (process `iia`): user token validated -> JWT-SVID (cached) -> Vault
              read -> RFC 8693 exchange at the IdP (process `verify`: client auth, rotation,
              Cedar) -> admin API (`verify`) with the single-use OBO token
* unenforced: an MCP server on the same SDK (process `bench-mcp`) holding a static admin token
              -> the same admin API class over the same directory (process `bench-admin`)
* no-op:      an MCP server on the same SDK whose tool returns at once (process `bench-noop`)
* bare:       a `POST` to a bare starlette route under uvicorn (process `bench-noop`)

Each point (path x sessions 1/8/32/64) opens its timed window only once every session has made
its first calls (bench/load.py), and reads each process's CPU (utime + stime from /proc) at the
window's open and close: CPU milliseconds per call, per process. The enforced call's steps come
from the security console's `GET /calls` (the chain's own timings). Results: bench/results.json,
bench/results.png. Revocation latency: bench/revocation.py. The directory's lookups at 23 and
10,000 users (bench/directory_scale.py, in process). The warm path's counters (JWKS fetches,
key parses, SVID fetches, Vault logins and reads, exchanges) per enforced call, from the MCP
server's `GET /ops/counters` (bench/counters.py). The cold call is the MCP server's process
restarted by the supervisor, then one session's connect, first and second call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx
import jwt

OUT = Path(__file__).resolve().parent
ROOT = OUT.parent
SESSIONS = (1, 8, 32, 64)
PATHS = ("bare", "noop", "unenforced", "enforced")
USER = "alice@example.com"
GOALS = {  # issue #15, ratios in one run
    "warm_p50_enforced_over_unenforced": ("<=", 2.0),
    "calls_per_s_enforced_over_unenforced_at_32": (">=", 0.5),
    "mcp_cpu_per_call_enforced_over_noop": ("<=", 2.0),
    "revocation_set_to_first_401_max_ms": ("<=", 100.0),
    # the directory (bench/directory_scale.py): "flat" = the 10,000-user cost within 1.5x the
    # 23-user cost; `list_users count=1` flat too, its cost being the page's, not the directory's
    "get_user_at_10000_over_23": ("<=", 1.5),
    "username_filter_at_10000_over_23": ("<=", 1.5),
    "list_users_count_1_at_10000_over_23": ("<=", 1.5),
}

# the admin API's figures (median ms) the directory goals compare, by bench/directory_scale's name
DIRECTORY_GOALS = {
    "get_user_at_10000_over_23": "GET /Users/{id}",
    "username_filter_at_10000_over_23": 'GET /Users?filter=userName eq "…"',
    "list_users_count_1_at_10000_over_23": "GET /Users?count=1",
}
DIRECTORY_SIZES = (23, 10_000)


# -- statistics: an empty sample is reported as such, never an IndexError ----------------------

def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of `values`, or None for an empty sample."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index], 2)


def summary(values: list[float]) -> dict[str, float | int | None]:
    return {"p50_ms": pct(values, 50), "p99_ms": pct(values, 99),
            "mean_ms": round(statistics.fmean(values), 2) if values else None, "n": len(values)}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else round(a / b, 2)


def verdict(name: str, measured: float | None) -> dict[str, Any]:
    op, target = GOALS[name]
    held = None if measured is None else (measured <= target if op == "<=" else measured >= target)
    return {"goal": f"{op} {target}", "measured": measured,
            "held": held, "verdict": "not measured (an empty sample or a point not run)"
            if held is None
            else "held" if held else "missed"}


# -- the lab and the anchors -------------------------------------------------------------------

def private_fixtures(directory: Path) -> Path:
    """A copy of the fixtures with Antenna's tool-call rate rule lifted (the load's thousands of
    calls a minute would rightly end the session); every other rule stays."""
    from harness.paths import fixtures_dir

    fixtures = directory / "fixtures"
    shutil.copytree(fixtures_dir(), fixtures)
    rules_path = fixtures / "antenna" / "anomaly.json"
    rules = json.loads(rules_path.read_text())
    rules["tool_calls_per_minute"]["max"] = 10**9
    rules_path.write_text(json.dumps(rules, indent=2))
    return fixtures


class Anchors:
    """The anchor processes (bench/baseline.py), each on a loopback port it prints."""

    def __init__(self, directory: Path, fixtures: Path) -> None:
        self.directory = directory
        self.fixtures = fixtures
        self.static = secrets.token_urlsafe(32)  # in their environment only
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.urls: dict[str, str] = {}
        self._logs: list[IO[str]] = []

    def start(self) -> None:
        self.urls["admin"] = self._spawn("admin", {})
        self.urls["mcp"] = self._spawn("mcp", {"BENCH_ADMIN_URL": self.urls["admin"]}) + "/mcp"
        noop = self._spawn("noop", {})
        self.urls["noop"], self.urls["bare"] = noop + "/mcp", noop + "/bare"

    def _spawn(self, role: str, extra: dict[str, str]) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IIA_", "BENCH_"))}
        env.update({"IIA_FIXTURES_DIR": str(self.fixtures), "BENCH_STATIC_TOKEN": self.static,
                    **extra})
        log = (self.directory / f"bench-{role}.log").open("w")
        self._logs.append(log)
        proc = subprocess.Popen([sys.executable, "-m", "bench.baseline", role], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        self.procs[f"bench-{role}"] = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()  # `port N`, once it has bound
        if not line.startswith("port "):
            proc.kill()
            raise RuntimeError(f"bench.baseline {role} did not start: "
                               f"{(self.directory / f'bench-{role}.log').read_text()[-2000:]}")
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        deadline = time.monotonic() + 120
        while True:  # serving once it answers (it binds before uvicorn starts)
            try:
                httpx.get(url + "/", timeout=2)
                return url
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bench.baseline {role} is not serving") from None
                time.sleep(0.05)

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items() if proc.poll() is None}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        for log in self._logs:
            log.close()


# -- one point ---------------------------------------------------------------------------------

def load(job: dict[str, Any]) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "bench.load"], input=json.dumps(job),
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"failed": tail[0][:400], "calls": 0, "latencies": [], "calls_per_s": 0.0,
                "cpu_ms": {}, "errors": 0, "first_errors": [], "seconds": 0.0}
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def point(out: dict[str, Any]) -> dict[str, Any]:
    calls = out["calls"]
    cpu = out.get("cpu_ms", {})
    per_call = {name: (round(ms / calls, 3) if ms is not None and calls else None)
                for name, ms in cpu.items()}
    row: dict[str, Any] = {"calls_per_s": round(out["calls_per_s"], 1), "calls": calls,
                           "seconds": round(out["seconds"], 2), **summary(out["latencies"]),
                           "errors": out["errors"], "cpu_ms_total": cpu,
                           "cpu_ms_per_call": per_call}
    if out.get("first_errors"):
        row["first_errors"] = out["first_errors"]
    if out.get("failed"):
        row["failed"] = out["failed"]
    return row


def breakdown(console: str, sid: str, client_p50: float | None) -> dict[str, Any]:
    """Median milliseconds per step of the enforced calls of session `sid`, from the security
    console's `GET /calls` (the chain's own timings: SVID, Vault read, exchange, admin API)."""
    calls = httpx.get(console + "/calls", params={"session": sid, "limit": 1000},
                      timeout=30).json()
    steps = [c["steps"] for c in calls if c.get("ok")]
    if not steps:
        return {"calls": 0, "note": "the console returned no successful call for the session"}
    med = {k: round(statistics.median([s.get(k, 0.0) for s in steps]), 2)
           for k in ("svid", "vault", "exchange", "admin_api", "total")}
    total = med.pop("total")
    rest = None if client_p50 is None else round(client_p50 - total, 2)
    return {**med, "chain_total": total, "mcp_and_rest": rest, "calls": len(steps)}


def cold_calls(supervisor: Any, endpoints: dict[str, str], samples: int) -> dict[str, Any]:
    """The enforced call on a cold MCP server: `iia` restarted by the supervisor (same port),
    then one session's connect, first and second call (bench/load.py `cold`)."""
    from harness.supervisor import OIDC_BASE
    from harness.verify.login import login

    token = str(login(endpoints["verify"] + OIDC_BASE, USER, resource=endpoints["mcp"])[
        "access_token"])
    runs = []
    for _ in range(samples):
        supervisor.restart("iia")
        supervisor.wait_healthy("iia", timeout=None)
        result = subprocess.run([sys.executable, "-m", "bench.load"], cwd=ROOT, text=True,
                                input=json.dumps({"kind": "cold", "url": endpoints["mcp"],
                                                  "tokens": [token]}),
                                capture_output=True, timeout=300)
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-1:] or ["(no output)"]
            return {"failed": tail[0][:400], "samples": runs}
        runs.append(json.loads(result.stdout))
    return {key: statistics.median([r[key] for r in runs]) if runs else None
            for key in ("connect_ms", "first_call_ms", "second_call_ms")} | {"samples": runs}


# -- output ------------------------------------------------------------------------------------

def _fmt(value: Any, width: int, digits: int = 1) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return f"{value:.{digits}f}".rjust(width)
    return str(value).rjust(width)


def table(results: dict[str, Any]) -> str:
    procs = results["processes"]
    head = (f"{'path':<11}{'sess':>5}{'calls/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'n':>7}{'err':>5}"
            "  CPU ms per call: " + " ".join(f"{p[:8]:>8}" for p in procs))
    lines = [head, "-" * len(head)]
    for n in results["sessions"]:
        for path in PATHS:
            r = results["points"][path].get(str(n))
            if r is None:
                continue
            cpu = " ".join(_fmt(r["cpu_ms_per_call"].get(p), 8, 2) for p in procs)
            note = "  (no sample: " + r.get("failed", "no call completed") + ")" \
                if not r["n"] else ""
            lines.append(f"{path:<11}{n:>5}{_fmt(r['calls_per_s'], 9)}{_fmt(r['p50_ms'], 8)}"
                         f"{_fmt(r['p99_ms'], 8)}{r['n']:>7}{r['errors']:>5}  {'':>17}{cpu}"
                         f"{note}")
    lines.append("")
    for name, g in results["goals"].items():
        lines.append(f"{name:<46} {_fmt(g['measured'], 7, 2)}  goal {g['goal']:<7} "
                     f"{g['verdict']}")
    b = results["breakdown"]
    if b.get("calls"):
        lines.append(f"enforced warm, median ms per step ({b['calls']} calls): svid {b['svid']}, "
                     f"vault {b['vault']}, exchange {b['exchange']}, admin_api "
                     f"{b['admin_api']}, chain total {b['chain_total']}, MCP and the rest "
                     f"{b['mcp_and_rest']}")
    c = results.get("counters_per_call") or {}
    if c:
        lines.append("enforced, the MCP server's counters per call (GET /ops/counters, warm-up "
                     "included): " + ", ".join(f"{k} {v}" for k, v in c.items()))
    cold = results.get("cold", {})
    if cold.get("failed"):
        lines.append(f"cold MCP server: failed ({cold['failed']})")
    elif cold.get("samples"):
        lines.append(f"cold MCP server (restarted, median of {len(cold['samples'])}): connect "
                     f"{cold['connect_ms']} ms, first call {cold['first_call_ms']} ms, second "
                     f"{cold['second_call_ms']} ms")
    rv = results["revocation"]
    lines.append(f"revocation SET -> first 401: p50 {rv['emitted_to_first_401_p50_ms']} ms, max "
                 f"{rv['emitted_to_first_401_max_ms']} ms over {rv['trials']} trials"
                 + (f"; failed: {rv['failures']}" if rv["failures"] else ""))
    idp = rv.get("idp_end")
    if idp:
        lines.append(f"IdP-side end (logout at Verify) -> first 401: p50 "
                     f"{idp['idp_end_to_first_401_p50_ms']} ms, max "
                     f"{idp['idp_end_to_first_401_max_ms']} ms over {idp['trials']} trials"
                     + (f"; failed: {idp['failures']}" if idp["failures"] else ""))
    sizes = list(results.get("directory_median_ms", {}))
    if sizes:
        names = list(results["directory_median_ms"][sizes[0]])
        width = max(len(n) for n in names)
        lines.append(f"{'directory, median ms per call':<{width}}  "
                     + "  ".join(f"{int(s):>9,}" for s in sizes))
        lines.extend(f"{n:<{width}}  " + "  ".join(
            f"{results['directory_median_ms'][s][n]:9.3f}" for s in sizes) for n in names)
    lines.append(f"load average at the start {results['machine']['loadavg_start']}, "
                 f"at the end {results['machine']['loadavg_end']}")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.8))
    pts = results["points"]
    first = str(results["sessions"][0])
    x = range(len(PATHS))
    rows = [pts[p].get(first, {}) for p in PATHS]
    a.bar([i - 0.2 for i in x], [r.get("p50_ms") or 0 for r in rows], 0.4, label="p50")
    a.bar([i + 0.2 for i in x], [r.get("p99_ms") or 0 for r in rows], 0.4, label="p99")
    a.set_xticks(list(x), PATHS)
    a.set_ylabel("ms per call")
    a.set_title(f"Latency, {first} session(s), warm")
    a.legend()
    for p in PATHS:
        ns = [n for n in results["sessions"] if str(n) in pts[p]]
        b.plot(ns, [pts[p][str(n)]["calls_per_s"] for n in ns], marker="o", label=p)
    b.set_xscale("log", base=2)
    b.set_yscale("log")
    b.set_xticks(list(results["sessions"]), [str(n) for n in results["sessions"]])
    b.set_xlabel("concurrent sessions")
    b.set_ylabel("calls/s")
    b.set_title("Throughput")
    b.legend()
    procs = [p for p in results["processes"] if p != "load"]
    bottom = [0.0] * len(PATHS)
    for proc in procs:
        values = [(pts[p].get(first, {}).get("cpu_ms_per_call", {}).get(proc) or 0.0)
                  for p in PATHS]
        if not any(values):
            continue
        c.bar(PATHS, values, bottom=bottom, label=proc)
        bottom = [s + v for s, v in zip(bottom, values, strict=True)]
    c.set_ylabel("CPU ms per call")
    c.set_title(f"CPU per call by process, {first} session(s)")
    c.legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(f"IIA Lab enforcement cost, process topology - {m['cpus']} CPUs, load "
                 f"{m['loadavg_start']}, {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# -- the run -----------------------------------------------------------------------------------

def measure(endpoints: dict[str, str], lab_pids: dict[str, int], anchors: Anchors,
            sessions: tuple[int, ...], seconds: float, warm_calls: int,
            revocation_trials: int) -> dict[str, Any]:
    from bench.counters import counters_url, fetch_counters, per_call
    from bench.revocation import idp_end_latency, revocation_latency
    from harness.supervisor import OIDC_BASE
    from harness.verify.login import login

    issuer = endpoints["verify"] + OIDC_BASE
    tokens = [str(login(issuer, USER, resource=endpoints["mcp"])["access_token"])
              for _ in range(max(sessions))]
    pids = {**lab_pids, **anchors.pids()}
    urls = {"enforced": ("mcp", endpoints["mcp"]), "unenforced": ("mcp", anchors.urls["mcp"]),
            "noop": ("mcp", anchors.urls["noop"]), "bare": ("http", anchors.urls["bare"])}
    points: dict[str, dict[str, Any]] = {p: {} for p in PATHS}
    steps: dict[str, Any] = {"calls": 0}
    counters: dict[str, Any] = {}
    for n in sessions:
        for path in PATHS:
            target, url = urls[path]
            print(f"{path}, {n} session(s) ...", flush=True)
            before = fetch_counters(counters_url(endpoints["mcp"])) if path == "enforced" \
                and n == sessions[0] else None
            out = load({"target": target, "url": url, "tokens": tokens[:n], "seconds": seconds,
                        "warm_calls": warm_calls, "pids": pids})
            points[path][str(n)] = point(out)
            if before is not None:
                counters = per_call(before, fetch_counters(counters_url(endpoints["mcp"])))
                sid = jwt.decode(tokens[0], options={"verify_signature": False})["sid"]
                steps = breakdown(endpoints["console"], sid, points[path][str(n)]["p50_ms"])
    print("revocation latency ...", flush=True)
    revocation = revocation_latency(endpoints, issuer, USER, trials=revocation_trials)
    print("IdP-side end (logout at Verify) -> first 401 ...", flush=True)
    revocation["idp_end"] = idp_end_latency(endpoints, issuer, USER, trials=revocation_trials)
    return {"points": points, "breakdown": steps, "counters_per_call": counters,
            "processes": [*pids, "load"], "revocation": revocation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 s per point instead of 8 (a try, not a result to quote)")
    parser.add_argument("--seconds", type=float, help="the timed window of each point")
    parser.add_argument("--sessions", default=",".join(map(str, SESSIONS)),
                        help="comma-separated session counts (default 1,8,32,64)")
    parser.add_argument("--out", type=Path, default=OUT, help="where results.json/.png go")
    args = parser.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 8.0)
    sessions = tuple(sorted({int(s) for s in args.sessions.split(",")}))

    from bench import directory_scale
    from harness.lab_settings import LabSettings
    from harness.supervisor import Supervisor

    private = Path(tempfile.mkdtemp(prefix="iia-bench-"))
    started = time.time()
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    supervisor = anchors = None
    try:
        fixtures = private_fixtures(private)
        supervisor = Supervisor(LabSettings.from_env(fixtures=fixtures), directory=private / "lab")
        print("starting the lab (one process per zone) ...", flush=True)
        endpoints = supervisor.start()
        order = ("iia", "verify", "vault", "spire", "model", "caep_receiver")
        running = {s.name: s.pid for s in supervisor.status() if s.pid is not None}
        lab_pids = {name: running[name] for name in sorted(
            running, key=lambda n: order.index(n) if n in order else len(order))}
        anchors = Anchors(private, fixtures)
        anchors.start()
        measured = measure(endpoints, lab_pids, anchors, sessions, seconds,
                           warm_calls=2 if args.quick else 5,
                           revocation_trials=3 if args.quick else 15)
        print("cold: the MCP server's process restarted, then its first call ...", flush=True)
        measured["cold"] = cold_calls(supervisor, endpoints, 1 if args.quick else 3)
    finally:
        if anchors is not None:
            anchors.stop()
        if supervisor is not None:
            supervisor.stop()
        shutil.rmtree(private, ignore_errors=True)

    print(f"the directory at {' and '.join(f'{s:,}' for s in DIRECTORY_SIZES)} users "
          "(in process, bench/directory_scale.py) ...", flush=True)
    directory = {str(size): asyncio.run(directory_scale.measure(size))
                 for size in DIRECTORY_SIZES}
    small, large = (directory[str(s)] for s in DIRECTORY_SIZES)

    pts = measured["points"]
    first, at32 = str(sessions[0]), "32"

    def get(path: str, n: str, key: str) -> Any:
        return pts[path].get(n, {}).get(key)

    def cpu(path: str, n: str, proc: str) -> float | None:
        value = pts[path].get(n, {}).get("cpu_ms_per_call", {}).get(proc)
        return float(value) if value is not None else None

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "topology": "processes (harness.supervisor.Supervisor)",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_start": loadavg_start,
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "seconds_per_point": seconds, "sessions": list(sessions), **measured,
        "goals": {
            "warm_p50_enforced_over_unenforced": verdict(
                "warm_p50_enforced_over_unenforced",
                ratio(get("enforced", first, "p50_ms"), get("unenforced", first, "p50_ms"))),
            "calls_per_s_enforced_over_unenforced_at_32": verdict(
                "calls_per_s_enforced_over_unenforced_at_32",
                ratio(get("enforced", at32, "calls_per_s") or None,
                      get("unenforced", at32, "calls_per_s") or None)),
            "mcp_cpu_per_call_enforced_over_noop": verdict(
                "mcp_cpu_per_call_enforced_over_noop",
                ratio(cpu("enforced", first, "iia"), cpu("noop", first, "bench-noop"))),
            "revocation_set_to_first_401_max_ms": verdict(
                "revocation_set_to_first_401_max_ms",
                measured["revocation"]["emitted_to_first_401_max_ms"]),
            **{name: verdict(name, ratio(large[figure], small[figure]))
               for name, figure in DIRECTORY_GOALS.items()},
        },
        "directory_median_ms": directory,
        "not_measured": "the cold call is the MCP server's process restarted by the supervisor "
                        "(its caches and lazy imports), not caches dropped in a warm process",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    try:
        chart(results, args.out / "results.png")
    except ImportError as exc:  # matplotlib: the [bench] extra (`make bench` installs it)
        print(f"no chart: {exc} (pip install -e '.[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
