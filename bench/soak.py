"""The soak (issue #20 item 4): does the lab's state stay bounded over many calls?

`python -m bench.soak [--calls N] [--sessions S] [--sample-every K]` starts the lab as
`bench.run` does (a `Supervisor`, one OS process per zone, a private lab directory and fixtures
with Antenna's rate rule lifted), logs in S sessions and makes N enforced calls, the bench's
`list_users {"count": 1}` over MCP streamable HTTP with the product's client, spread over the
sessions (S at a time). Every K calls it samples, from outside the processes:

* each lab process's resident set (VmRSS of /proc/<pid>/status), in MB;
* Antenna's SQLite: the bytes of its database file and its WAL, and its outbox rows by status
  (read-only connection);
* the CAEP receiver's stored SETs (`GET /received`, its length).

The first `--warm-up` calls (default: a fifth, at least one sample) are the warm-up: caches,
lazy imports, the allocator's arenas. Growth per 1000 calls is the least-squares slope of each
figure over the samples after it. The goal: RSS <= 0.5 MB per 1000 calls per process and a flat
SQLite (its database and WAL growing by no more than 16 KiB per 1000 calls, a few pages, against
1.2 MB per 1000 before Antenna pruned). Output: bench/soak.json and one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

OUT = Path(__file__).resolve().parent
USER = "alice@example.com"
ARGS = {"count": 1}
GOAL_RSS_MB_PER_1000 = 0.5
GOAL_SQLITE_BYTES_PER_1000 = 16_384  # "flat": a few pages of reuse and WAL jitter


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 2)
    except OSError:
        return None
    return None


def sqlite_figures(path: Path) -> dict[str, Any]:
    wal = path.with_name(path.name + "-wal")
    figures: dict[str, Any] = {
        "db_bytes": path.stat().st_size if path.exists() else 0,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0}
    figures["bytes"] = figures["db_bytes"] + figures["wal_bytes"]
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()
        finally:
            db.close()
        figures["outbox_rows"] = {str(status): int(n) for status, n in rows}
        figures["outbox_rows_total"] = sum(int(n) for _, n in rows)
    except sqlite3.Error as exc:
        figures["error"] = str(exc)
    return figures


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys over xs, or None with fewer than two points."""
    if len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return None if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys,
                                                                           strict=True)) / den


async def soak(mcp_url: str, tokens: list[str], calls: int, every: int,
               sample: Any) -> tuple[list[dict[str, Any]], int, list[str]]:
    from contextlib import AsyncExitStack

    from iia.agent import McpToolClient

    samples: list[dict[str, Any]] = [await asyncio.to_thread(sample, 0)]
    state = {"done": 0, "errors": 0, "next": every}
    first_errors: list[str] = []
    gate = asyncio.Lock()

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(McpToolClient(
            mcp_url, (lambda t=token: t), timeout=120)) for token in tokens]

        async def session(mcp: McpToolClient) -> None:
            while True:
                async with gate:
                    if state["done"] + state["errors"] >= calls:
                        return
                    if state["done"] >= state["next"]:
                        samples.append(await asyncio.to_thread(sample, state["done"]))
                        state["next"] += every
                try:
                    result = await mcp.call_tool("list_users", ARGS)
                    if result.is_error:
                        raise RuntimeError(result.text)
                    state["done"] += 1
                except Exception as exc:  # counted and reported
                    state["errors"] += 1
                    if len(first_errors) < 3:
                        first_errors.append(f"{exc.__class__.__name__}: {exc}"[:300])
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(session(c) for c in clients))
    samples.append(await asyncio.to_thread(sample, state["done"]))
    return samples, state["errors"], first_errors


def growth(samples: list[dict[str, Any]], warm_up: int) -> dict[str, Any]:
    """Per 1000 calls after `warm_up`: each process's RSS slope (MB) and each store's."""
    after = [s for s in samples if s["calls"] >= warm_up]
    xs = [s["calls"] / 1000 for s in after]

    def per_1000(values: list[float | None]) -> float | None:
        pairs = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        value = slope([p[0] for p in pairs], [p[1] for p in pairs])
        return None if value is None else round(value, 3)

    procs = sorted({name for s in after for name in s["rss_mb"]})
    out: dict[str, Any] = {
        "rss_mb_per_1000_calls": {p: per_1000([s["rss_mb"].get(p) for s in after])
                                  for p in procs},
        "antenna_sqlite_bytes_per_1000_calls": per_1000([s["antenna"]["bytes"] for s in after]),
        "antenna_outbox_rows_per_1000_calls": per_1000(
            [s["antenna"].get("outbox_rows_total") for s in after]),
        "caep_receiver_sets_per_1000_calls": per_1000([s.get("caep_received") for s in after]),
        "antenna_sqlite_bytes_from_warm_up_to_end": None if not after else
        [after[0]["antenna"]["bytes"], after[-1]["antenna"]["bytes"]],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="enforced calls (20,000)")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions (4)")
    parser.add_argument("--sample-every", type=int, default=1000, help="calls between samples")
    parser.add_argument("--warm-up", type=int, help="calls before growth is measured "
                        "(default: a fifth of --calls, at least one sample)")
    parser.add_argument("--out", type=Path, default=OUT / "soak.json")
    args = parser.parse_args(argv)
    warm_up = args.warm_up if args.warm_up is not None else max(args.sample_every,
                                                                args.calls // 5)

    from bench.run import private_fixtures
    from harness.lab_settings import LabSettings
    from harness.supervisor import OIDC_BASE, Supervisor
    from harness.verify.login import login

    private = Path(tempfile.mkdtemp(prefix="iia-soak-"))
    started = time.time()
    supervisor = None
    try:
        fixtures = private_fixtures(private)
        supervisor = Supervisor(LabSettings.from_env(fixtures=fixtures), directory=private / "lab")
        print("starting the lab (one process per zone) ...", flush=True)
        endpoints = supervisor.start()
        assert supervisor.runtime_dir is not None
        db = supervisor.runtime_dir / "antenna.sqlite"
        pids = {s.name: s.pid for s in supervisor.status() if s.pid is not None}
        issuer = endpoints["verify"] + OIDC_BASE
        tokens = [str(login(issuer, USER, resource=endpoints["mcp"])["access_token"])
                  for _ in range(args.sessions)]
        received = endpoints["caep_receiver"] + "/received"

        def sample(calls: int) -> dict[str, Any]:
            try:
                caep: int | None = len(httpx.get(received, timeout=60).json())
            except (httpx.HTTPError, ValueError):
                caep = None
            row = {"calls": calls, "at": round(time.time() - started, 1),
                   "rss_mb": {name: rss_mb(pid) for name, pid in pids.items()},
                   "antenna": sqlite_figures(db), "caep_received": caep}
            print(f"  {calls:>6} calls: RSS MB " + ", ".join(
                f"{k} {v}" for k, v in row["rss_mb"].items()) + f"; antenna.sqlite "
                f"{row['antenna']['bytes']:,} B, outbox {row['antenna'].get('outbox_rows')}; "
                f"CAEP receiver {caep} SETs", flush=True)
            return row

        print(f"soak: {args.calls:,} calls over {args.sessions} sessions ...", flush=True)
        samples, errors, first_errors = asyncio.run(soak(
            endpoints["mcp"], tokens, args.calls, args.sample_every, sample))
    finally:
        if supervisor is not None:
            supervisor.stop()
        shutil.rmtree(private, ignore_errors=True)

    grew = growth(samples, warm_up)
    worst = max((v for v in grew["rss_mb_per_1000_calls"].values() if v is not None),
                default=None)
    sqlite_growth = grew["antenna_sqlite_bytes_per_1000_calls"]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "calls": samples[-1]["calls"], "errors": errors, "first_errors": first_errors,
        "sessions": args.sessions, "warm_up_calls": warm_up, "sample_every": args.sample_every,
        "seconds": round(time.time() - started, 1), "growth_after_warm_up": grew,
        "goals": {
            "rss_mb_per_1000_calls_max": {"goal": f"<= {GOAL_RSS_MB_PER_1000}",
                                          "measured": worst,
                                          "held": None if worst is None
                                          else worst <= GOAL_RSS_MB_PER_1000},
            "antenna_sqlite_bytes_per_1000_calls": {
                "goal": f"<= {GOAL_SQLITE_BYTES_PER_1000}", "measured": sqlite_growth,
                "held": None if sqlite_growth is None
                else sqlite_growth <= GOAL_SQLITE_BYTES_PER_1000},
        },
        "samples": samples, "machine": {"cpus": os.cpu_count(),
                                        "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(summary_line(results))
    return 0


def summary_line(results: dict[str, Any]) -> str:
    g = results["growth_after_warm_up"]
    rss = ", ".join(f"{k} {v}" for k, v in g["rss_mb_per_1000_calls"].items())
    goals = results["goals"]
    verdict = " ".join(f"{name}: {'held' if v['held'] else 'missed' if v['held'] is False else '-'}"
                       for name, v in goals.items())
    return (f"soak, {results['calls']:,} calls over {results['sessions']} sessions "
            f"({results['errors']} errors), growth per 1000 calls after "
            f"{results['warm_up_calls']:,}"
            f": RSS MB {rss}; antenna.sqlite {g['antenna_sqlite_bytes_per_1000_calls']} B, "
            f"outbox rows {g['antenna_outbox_rows_per_1000_calls']}, CAEP receiver SETs "
            f"{g['caep_receiver_sets_per_1000_calls']} [{verdict}]")


if __name__ == "__main__":
    sys.exit(main())
