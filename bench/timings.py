"""`make bench`, part 2: how long a person waits. Start-up and notebook durations against their
goals, measured here and never asserted by a test (a busy machine would make such a test lie).

* start-up: `iia-lab up --detach` from the command line to every service healthy, on the process
  topology (the supervisor and one OS process per zone, harness/supervisor.py), `--runs` times in
  a fresh lab directory each (then `down`); goal `STARTUP_GOAL_S` (issue #14: 3 s on an idle
  2-core machine). Once healthy, the lab's memory: the VmRSS of the supervisor and of every
  process under it, from /proc, per service (its process and any it started) and in total, with
  the pid count per service. RSS counts shared pages (the interpreter, libraries) in every
  process that maps them, so the total overstates what the lab takes; PSS (/proc/<pid>/
  smaps_rollup, shared pages split between their users) is recorded beside it.
* notebooks: each notebook executed once in its own lab with a scripted phone, the way the suite
  runs it (kernel start included); goals `NOTEBOOK_GOAL_S` each, `NOTEBOOKS_GOAL_S` together.

Results go to `bench/timings.json` with the machine's load average at the start and the end, and
a table is printed with each goal marked held or missed. `--only startup|notebooks` runs one part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent
ROOT = OUT.parent
STARTUP_GOAL_S = 3.0  # issue #14: cold start to all healthy on an idle 2-core machine
NOTEBOOK_GOAL_S = 30.0
NOTEBOOKS_GOAL_S = 180.0


def _cli(lab_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT,
                          env={**os.environ, "IIA_LAB_DIR": str(lab_dir)},
                          capture_output=True, text=True, timeout=300)


def _status_kib(pid: int, field: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS), or of smaps_rollup (Pss); 0 when gone."""
    source = "smaps_rollup" if field == "Pss" else "status"
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
    """`root` and every process under it (from each process's parent pid in /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def memory(lab_dir: Path) -> dict[str, Any]:
    """RSS and PSS (KiB) and pid count of the running lab in `lab_dir`: the supervisor, each
    service (its process and the processes under it) and the total."""
    state = json.loads((lab_dir / "lab.json").read_text())
    supervisor: int = state["pid"]
    children: dict[str, int] = state["children"]
    everyone = _descendants(supervisor)
    services: dict[str, Any] = {}
    counted: set[int] = set()
    for name, pid in [("supervisor", supervisor), *children.items()]:
        pids = [pid] if name == "supervisor" else _descendants(pid)
        counted.update(pids)
        services[name] = {"pids": len(pids), "rss_kib": sum(_status_kib(p, "VmRSS") for p in pids),
                          "pss_kib": sum(_status_kib(p, "Pss") for p in pids)}
    other = [p for p in everyone if p not in counted]  # under the supervisor, no service's
    if other:
        services["other"] = {"pids": len(other),
                             "rss_kib": sum(_status_kib(p, "VmRSS") for p in other),
                             "pss_kib": sum(_status_kib(p, "Pss") for p in other)}
    return {"services": services, "pids": len(everyone),
            "total_rss_kib": sum(v["rss_kib"] for v in services.values()),
            "total_pss_kib": sum(v["pss_kib"] for v in services.values())}


def startup(runs: int) -> dict[str, Any]:
    seconds: list[float] = []
    memories: list[dict[str, Any]] = []
    for _ in range(runs):
        lab_dir = Path(tempfile.mkdtemp(prefix="iia-bench-up-"))
        try:
            began = time.monotonic()
            up = _cli(lab_dir, "up", "--detach")
            elapsed = time.monotonic() - began
            if up.returncode != 0:
                raise RuntimeError(f"iia-lab up --detach failed:\n{up.stderr[-2000:]}")
            seconds.append(round(elapsed, 2))
            memories.append(memory(lab_dir))  # once all are healthy, before the first call
        finally:
            _cli(lab_dir, "down")
            shutil.rmtree(lab_dir, ignore_errors=True)
    median = round(statistics.median(seconds), 2)
    return {"topology": "processes (iia-lab up --detach: supervisor + one process per zone)",
            "runs_s": seconds, "median_s": median, "goal_s": STARTUP_GOAL_S,
            "held": median <= STARTUP_GOAL_S,
            "memory_runs_total_rss_mib": [round(m["total_rss_kib"] / 1024, 1) for m in memories],
            "memory": memories[-1]}


def _execute(path: Path) -> tuple[float, str | None]:
    import nbformat
    from nbclient import NotebookClient

    lab_dir = tempfile.mkdtemp(prefix=f"iia-bench-nb-{path.stem[:2]}-")
    env = {**os.environ, "IIA_LAB_DIR": lab_dir, "IIA_PHONE": "scripted"}
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=240, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    began = time.monotonic()
    try:
        asyncio.run(client.async_execute(env=env))
    except Exception as exc:  # report it with the time it took, then go on
        return time.monotonic() - began, f"{exc.__class__.__name__}: {exc}"
    finally:
        shutil.rmtree(lab_dir, ignore_errors=True)
    errors = [o.get("ename", "") for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    return time.monotonic() - began, (f"error output: {', '.join(errors)}" if errors else None)


def notebooks() -> dict[str, Any]:
    each: dict[str, Any] = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        seconds, failure = _execute(path)
        each[path.stem] = {"seconds": round(seconds, 2), "goal_s": NOTEBOOK_GOAL_S,
                           "held": seconds <= NOTEBOOK_GOAL_S and failure is None,
                           "failure": failure}
    total = round(sum(v["seconds"] for v in each.values()), 2)
    return {"each": each, "total_s": total, "goal_total_s": NOTEBOOKS_GOAL_S,
            "held": total <= NOTEBOOKS_GOAL_S and all(v["held"] for v in each.values())}


def _mark(held: bool) -> str:
    return "held" if held else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timings", description=__doc__)
    parser.add_argument("--only", choices=["startup", "notebooks"])
    parser.add_argument("--runs", type=int, default=3, help="start-up runs (default 3)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_start": os.getloadavg()},
    }
    if args.only in (None, "startup"):
        results["startup"] = startup(args.runs)
        s = results["startup"]
        print(f"start-up (iia-lab up --detach, process topology, to all healthy): median "
              f"{s['median_s']} s of {s['runs_s']} | goal <= {s['goal_s']} s: {_mark(s['held'])}")
        load, cpus = results["machine"]["loadavg_start"][0], os.cpu_count() or 1
        if load > 0.5 * cpus:
            print(f"    (not an idle machine: load average {load:.1f} on {cpus} cores at the "
                  "start; the goal is for an idle one)")
        m = s["memory"]
        print(f"lab memory once healthy: total RSS {m['total_rss_kib'] / 1024:.1f} MiB "
              f"(PSS {m['total_pss_kib'] / 1024:.1f} MiB), {m['pids']} processes")
        for name, v in m["services"].items():
            print(f"    {name:14} {v['pids']} pid{'s' if v['pids'] != 1 else ' '}  RSS "
                  f"{v['rss_kib'] / 1024:6.1f} MiB  PSS {v['pss_kib'] / 1024:6.1f} MiB")
    if args.only in (None, "notebooks"):
        results["notebooks"] = notebooks()
        n = results["notebooks"]
        for name, v in n["each"].items():
            extra = f"  ({v['failure']})" if v["failure"] else ""
            print(f"{v['seconds']:7.1f} s  {name:28} goal <= {v['goal_s']:.0f} s: "
                  f"{_mark(v['held'])}{extra}")
        print(f"{n['total_s']:7.1f} s  {'all notebooks':28} goal <= {n['goal_total_s']:.0f} s: "
              f"{_mark(n['held'])}")
    results["machine"]["loadavg_end"] = os.getloadavg()
    (OUT / "timings.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {OUT / 'timings.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
