"""`make bench`, part 2: how long a person waits. Start-up and notebook durations against their
goals, measured here and never asserted by a test (a busy machine would make such a test lie).

* start-up: `iia-lab up --detach` from the command line to every service healthy, `--runs` times
  in a fresh lab directory each (then `down`); goal `STARTUP_GOAL_S`.
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
STARTUP_GOAL_S = 5.0
NOTEBOOK_GOAL_S = 30.0
NOTEBOOKS_GOAL_S = 180.0


def _cli(lab_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT,
                          env={**os.environ, "IIA_LAB_DIR": str(lab_dir)},
                          capture_output=True, text=True, timeout=300)


def startup(runs: int) -> dict[str, Any]:
    seconds: list[float] = []
    for _ in range(runs):
        lab_dir = Path(tempfile.mkdtemp(prefix="iia-bench-up-"))
        try:
            began = time.monotonic()
            up = _cli(lab_dir, "up", "--detach")
            elapsed = time.monotonic() - began
            if up.returncode != 0:
                raise RuntimeError(f"iia-lab up --detach failed:\n{up.stderr[-2000:]}")
            seconds.append(round(elapsed, 2))
        finally:
            _cli(lab_dir, "down")
            shutil.rmtree(lab_dir, ignore_errors=True)
    median = round(statistics.median(seconds), 2)
    return {"runs_s": seconds, "median_s": median, "goal_s": STARTUP_GOAL_S,
            "held": median <= STARTUP_GOAL_S}


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
        print(f"start-up (iia-lab up --detach, to all healthy): median {s['median_s']} s "
              f"of {s['runs_s']} | goal <= {s['goal_s']} s: {_mark(s['held'])}")
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
