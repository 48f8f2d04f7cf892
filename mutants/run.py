"""Run the curated rule-removing mutations of `mutants/rules.toml` against their tests.

    python -m mutants.run [--only ID[,ID...]] [--jobs N] [--timeout S] [--baseline union|each]
    python -m mutants.run --list

Each entry of `rules.toml` names one security rule, the file that enforces it, a verbatim `find`
(it must occur exactly once) with its `replace` (the smallest edit that removes the rule) and the
`tests` that should fail once the rule is gone. For a run:

1. the tree is copied (without .venv, .git, .lab, caches, node_modules, test artifacts) into a
   temporary directory, one copy per worker, reused: the mutated file is put back after each
   mutant. The tests run from the copy with this repository's venv, `PYTHONPATH=<copy>`, a fresh
   `IIA_LAB_DIR`, `IIA_PHONE=scripted`, no bytecode written (a restored file can never meet a
   stale .pyc) and no inherited `IIA_*`/`SPIFFE_*`/`VAULT_*`/`PYTEST_*` settings;
2. the baseline: the selected entries' tests must pass on the unmutated copy, so that a failure
   under a mutation means something. By default they run once, together (`--baseline union`);
   `--baseline each` runs every entry's own tests alone first (twice the time, no cross-test
   effects possible);
3. each mutant: `find` is applied, the mutated file must still parse (Python, JSON), and
   `python -m pytest <tests> -x -q -p no:cacheprovider` runs with a timeout (`--timeout`,
   default 600 s).

Outcomes, and why:

* killed   - pytest exit code 1 (a test failed); "killed by" is the first FAILED/ERROR node id;
* SURVIVED - exit code 0: the tests pass without the rule;
* BROKEN   - the entry cannot say anything: `find` does not occur exactly once (a stale mutation
  is a failure too), the mutant does not parse, its tests fail on the unmutated tree, or pytest
  exits 2-5 (interrupted, internal error, usage/collection error, no tests collected);
* TIMEOUT  - the run passed `--timeout`, or a test was stopped by pytest-timeout. A hang is not
  a refusal: it is never counted as killed.

The table `rule | killed by | seconds` is printed and written to `mutants/last-run.md` with the
date and counts. The exit status is 0 only when every selected entry was killed.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["Mutant", "Outcome", "RulesError", "load_rules", "main", "stale_reason"]

ROOT = Path(__file__).resolve().parents[1]
RULES = Path(__file__).resolve().with_name("rules.toml")
LAST_RUN = RULES.with_name("last-run.md")
DEFAULT_TIMEOUT = 600.0

_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_FIELDS = {"id": str, "rule": str, "file": str, "find": str, "replace": str, "tests": list,
           "keyword": str}
_REQUIRED = ("id", "rule", "file", "find", "replace", "tests")
# copied nowhere: the venv, VCS data, lab state, caches, build output and test artifacts
_SKIP_TOP = {".venv", ".git", ".lab", "build", "dist"}
_SKIP_ANY = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", "node_modules",
             ".ipynb_checkpoints"}
_SKIP_PATHS = {Path("tests/artifacts")}
# the environment of a test run must not point at a lab a person has running
_SCRUB_PREFIXES = ("IIA_", "SPIFFE_", "VAULT_", "PYTEST_")
_SCRUB = {"PYTHONPATH", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"}
_SUMMARY = re.compile(r"^(FAILED|ERROR) (.+?)(?: - (.*))?$")
_PYTEST_TIMEOUT = re.compile(r"Timeout \(>[\d.]+s\) from pytest-timeout|^\++ Timeout \++$",
                             re.MULTILINE)


class RulesError(ValueError):
    """rules.toml is not well-formed; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class Mutant:
    id: str
    rule: str  # the rule, in a sentence a person understands
    file: str  # relative to the repository root
    find: str  # verbatim, exactly once in `file`
    replace: str
    tests: tuple[str, ...]  # pytest node ids, files or directories under tests/
    keyword: str | None = None  # an optional `-k` expression

    def pytest_args(self) -> list[str]:
        return [*self.tests, *(["-k", self.keyword] if self.keyword else [])]


@dataclasses.dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    status: str  # killed | survived | broken | timeout
    detail: str  # killed: the first failing node id; otherwise why
    seconds: float

    def killed_by(self) -> str:
        if self.status == "killed":
            return self.detail
        return f"{self.status.upper()}" + (f": {self.detail}" if self.detail else "")


@dataclasses.dataclass(frozen=True)
class _Run:
    code: int | None
    output: str
    seconds: float
    timed_out: bool


# -- the list -----------------------------------------------------------------------------------

def load_rules(path: Path = RULES) -> list[Mutant]:
    """Parse and check `rules.toml`: fields and their types, unique ids, tests under tests/."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(f"{path}: {exc}") from exc
    problems: list[str] = []
    if not isinstance(doc.get("version"), int):
        problems.append("a top-level integer `version` is required")
    entries = doc.get("mutant")
    if not isinstance(entries, list) or not entries:
        raise RulesError("\n".join([*problems, "no [[mutant]] entries"]))
    mutants: list[Mutant] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries, 1):
        where = f"entry {n} ({entry.get('id', '?')})"
        missing = [k for k in _REQUIRED if k not in entry]
        unknown = sorted(set(entry) - set(_FIELDS))
        wrong = [k for k, kind in _FIELDS.items() if k in entry and not isinstance(entry[k], kind)]
        if missing or unknown or wrong:
            problems.append(f"{where}: missing {missing}, unknown {unknown}, wrong type {wrong}")
            continue
        tests = entry["tests"]
        if not tests or not all(isinstance(t, str) and t.startswith("tests/") for t in tests):
            problems.append(f"{where}: tests must be a non-empty list of paths under tests/")
        if not _ID.match(entry["id"]):
            problems.append(f"{where}: id must be lower-case words joined by '-'")
        if entry["id"] in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(entry["id"])
        if not entry["rule"].strip() or not entry["find"]:
            problems.append(f"{where}: rule and find must not be empty")
        if entry["find"] == entry["replace"]:
            problems.append(f"{where}: replace is the same as find")
        if Path(entry["file"]).is_absolute() or ".." in Path(entry["file"]).parts:
            problems.append(f"{where}: file must be relative to the repository root")
        mutants.append(Mutant(id=entry["id"], rule=entry["rule"].strip(), file=entry["file"],
                              find=entry["find"], replace=entry["replace"],
                              tests=tuple(tests), keyword=entry.get("keyword")))
    if problems:
        raise RulesError("\n".join(problems))
    return mutants


def stale_reason(mutant: Mutant, root: Path = ROOT) -> str | None:
    """Why `mutant` cannot be applied to the tree at `root` (None when it can)."""
    path = root / mutant.file
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"cannot read {mutant.file}: {exc.strerror or exc}"
    count = text.count(mutant.find)
    if count != 1:
        return f"`find` occurs {count} times in {mutant.file} (must be exactly once)"
    return _parse_problem(path, text.replace(mutant.find, mutant.replace, 1))


def _parse_problem(path: Path, text: str) -> str | None:
    """A mutant that does not parse would be 'killed' by any test: refuse it instead."""
    try:
        if path.suffix == ".py":
            ast.parse(text, filename=str(path))
        elif path.suffix == ".json":
            json.loads(text)
    except (SyntaxError, ValueError) as exc:
        return f"the mutated {path.name} does not parse: {exc}"
    return None


def select(mutants: Sequence[Mutant], only: str | None) -> list[Mutant]:
    if not only:
        return list(mutants)
    wanted = [i.strip() for i in only.split(",") if i.strip()]
    known = {m.id for m in mutants}
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise SystemExit(f"mutants: unknown id(s): {', '.join(unknown)} (see --list)")
    return [m for m in mutants if m.id in set(wanted)]


# -- copies and test runs -------------------------------------------------------------------------

def make_copy(root: Path, dest: Path) -> Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).resolve().relative_to(root.resolve())
        skipped = {n for n in names if n in _SKIP_ANY or n.endswith((".egg-info", ".pyc"))
                   or (rel / n) in _SKIP_PATHS}
        if rel == Path("."):
            skipped |= {n for n in names if n in _SKIP_TOP}
        return skipped

    shutil.copytree(root, dest, ignore=ignore, symlinks=True)
    return dest


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _env(copy: Path, lab_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_SCRUB_PREFIXES) and k not in _SCRUB}
    env.update(PYTHONPATH=str(copy), IIA_LAB_DIR=str(lab_dir), IIA_PHONE="scripted",
               PYTHONDONTWRITEBYTECODE="1")
    return env


def check_copy(copy: Path) -> None:
    """The copy's packages, not the checkout's (the venv has an editable install of it)."""
    with tempfile.TemporaryDirectory(prefix="iia-mutants-lab-") as lab:
        probe = subprocess.run(
            [_python(), "-c", "import harness, iia, tests; "
             "print(iia.__file__); print(harness.__file__); print(tests.__file__)"],
            cwd=copy, env=_env(copy, Path(lab)), capture_output=True, text=True, timeout=120,
            check=False)
    paths = probe.stdout.split()
    if probe.returncode != 0 or len(paths) != 3 or not all(
            Path(p).resolve().is_relative_to(copy.resolve()) for p in paths):
        raise SystemExit(f"mutants: the copy at {copy} does not import its own code: "
                         f"{probe.stdout.strip()} {probe.stderr.strip()[-400:]}")


def _stop(proc: subprocess.Popen[str]) -> str:
    """End the process group this run started (pytest and the lab's children)."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 15.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            out, _ = proc.communicate(timeout=wait)
            return out or ""
        except subprocess.TimeoutExpired:
            continue
    return ""


def run_pytest(copy: Path, args: Sequence[str], timeout: float, *, exitfirst: bool = True) -> _Run:
    cmd = [_python(), "-m", "pytest", *args, "-q", "-p", "no:cacheprovider",
           *(["-x"] if exitfirst else [])]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="iia-mutants-lab-", ignore_cleanup_errors=True) as lab:
        proc = subprocess.Popen(cmd, cwd=copy, env=_env(copy, Path(lab)), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            out, timed_out = _stop(proc), True
    return _Run(code=proc.returncode, output=out or "", seconds=time.monotonic() - started,
                timed_out=timed_out)


def failures(output: str) -> list[tuple[str, str, str]]:
    """(FAILED|ERROR, node id, message) from pytest's short test summary."""
    found = []
    for line in output.splitlines():
        match = _SUMMARY.match(line.strip())
        if match:
            found.append((match.group(1), match.group(2), match.group(3) or ""))
    return found


def _tail(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"


def classify(run: _Run, timeout: float) -> tuple[str, str]:
    if run.timed_out:
        return "timeout", f"no result within {timeout:g} s"
    if run.code == 1 and _PYTEST_TIMEOUT.search(run.output):
        return "timeout", "a test was stopped by pytest-timeout"
    if run.code == 0:
        return "survived", "the tests pass without the rule"
    if run.code == 1:
        found = failures(run.output)
        if not found:
            return "killed", f"(tests failed; no summary line: {_tail(run.output)})"
        kind, node, _ = found[0]
        return "killed", node if kind == "FAILED" else f"{node} (error)"
    return "broken", f"pytest exit code {run.code}: {_tail(run.output)}"


def _covers(spec: str, node: str) -> bool:
    spec = spec.rstrip("/")
    return node == spec or node.startswith((spec + "::", spec + "[", spec + "/"))


# -- the baseline ---------------------------------------------------------------------------------

def baseline(copy: Path, mutants: Sequence[Mutant], timeout: float, mode: str,
             log: _Log) -> dict[str, str]:
    """Entries whose tests do not pass on the unmutated copy, and why."""
    groups: dict[tuple[tuple[str, ...], str | None], list[Mutant]] = {}
    for m in mutants:
        groups.setdefault((m.tests, m.keyword), []).append(m)
    broken: dict[str, str] = {}

    def run_group(key: tuple[tuple[str, ...], str | None], members: list[Mutant]) -> None:
        run = run_pytest(copy, members[0].pytest_args(), timeout)
        if run.code != 0 or run.timed_out:
            status, detail = classify(run, timeout)
            why = f"its tests fail on the unmutated tree: {detail}" if status == "killed" \
                else f"its tests do not run on the unmutated tree: {detail}"
            for m in members:
                broken[m.id] = why

    plain = {k: v for k, v in groups.items() if k[1] is None}
    if mode == "union" and plain:
        union = sorted({t for tests, _ in plain for t in tests})
        log(f"baseline: {len(union)} test selections of {len(mutants)} entries, one run")
        run = run_pytest(copy, union, timeout * 4, exitfirst=False)
        log(f"baseline: pytest exit code {run.code} in {run.seconds:.0f} s")
        found = failures(run.output) if run.code == 1 and not run.timed_out else []
        if run.code == 0 and not run.timed_out:
            plain = {}
        elif found and not _PYTEST_TIMEOUT.search(run.output):
            nodes = [node for _, node, _ in found]
            for (tests, _), members in plain.items():
                bad = [n for n in nodes if any(_covers(t, n) for t in tests)]
                for m in members if bad else []:
                    broken[m.id] = f"its tests fail on the unmutated tree: {bad[0]}"
            plain = {}
        else:
            log("baseline: the union run says nothing per entry; running each group")
    rest = {**plain, **{k: v for k, v in groups.items() if k[1] is not None}}
    for key, members in rest.items():
        run_group(key, members)
    return broken


# -- one mutant -----------------------------------------------------------------------------------

def run_one(mutant: Mutant, copy: Path, timeout: float) -> Outcome:
    started = time.monotonic()
    path = copy / mutant.file
    reason = stale_reason(mutant, copy)
    if reason is not None:
        return Outcome(mutant, "broken", reason, 0.0)
    original = path.read_bytes()
    mutated = original.decode("utf-8").replace(mutant.find, mutant.replace, 1)
    try:
        path.write_text(mutated, encoding="utf-8")
        run = run_pytest(copy, mutant.pytest_args(), timeout)
    finally:
        path.write_bytes(original)
    status, detail = classify(run, timeout)
    return Outcome(mutant, status, detail, round(time.monotonic() - started, 1))


# -- reporting ------------------------------------------------------------------------------------

class _Log:
    def __init__(self, stream: object = sys.stderr) -> None:
        self.stream = stream

    def __call__(self, message: str) -> None:
        print(f"[mutants] {message}", file=self.stream, flush=True)  # type: ignore[call-overload]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(outcomes: Iterable[Outcome]) -> str:
    rows = ["| rule | killed by | seconds |", "|---|---|---|"]
    for o in outcomes:
        rows.append(f"| `{o.mutant.id}`: {_cell(o.mutant.rule)} | {_cell(o.killed_by())} "
                    f"| {o.seconds:.1f} |")
    return "\n".join(rows)


def summary(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts = {s: 0 for s in ("killed", "survived", "broken", "timeout")}
    for o in outcomes:
        counts[o.status] += 1
    return counts


def write_report(path: Path, outcomes: Sequence[Outcome], *, every: Sequence[Mutant],
                 jobs: int, wall: float, baseline_s: float, version: int) -> None:
    counts = summary(outcomes)
    ran = [o.seconds for o in outcomes if o.seconds > 0]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    chosen = {o.mutant.id for o in outcomes}
    left = [f"`{m.id}`" for m in every if m.id not in chosen]
    scope = f"`--only`: {len(outcomes)} of {len(every)} entries (not run: {', '.join(left)})" \
        if left else f"all {len(every)} entries"
    lines = [
        "# Last mutation run (`make mutants`)", "",
        f"{when}; `mutants/rules.toml` version {version}, {scope}; `--jobs {jobs}`.", "",
        f"**{counts['killed']} killed, {counts['survived']} survived, {counts['broken']} "
        f"broken, {counts['timeout']} timed out.** Wall time {wall:.0f} s (baseline "
        f"{baseline_s:.0f} s); per mutant {(sum(ran) / len(ran)) if ran else 0:.1f} s on "
        f"average, {max(ran) if ran else 0:.1f} s at most.", "",
        table(outcomes), ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _list(mutants: Sequence[Mutant]) -> None:
    for m in mutants:
        stale = stale_reason(m)
        print(f"{m.id:34} {m.file:40} {'STALE: ' + stale if stale else ''}")
        print(f"{'':34} {m.rule}")
        print(f"{'':34} tests: {' '.join(m.pytest_args())}")


# -- main -----------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutants.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated entry ids")
    parser.add_argument("--jobs", type=int, default=1, help="parallel workers (default 1)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds per mutant (default 600); a timeout is not a kill")
    parser.add_argument("--baseline", choices=("union", "each"), default="union",
                        help="run the entries' tests unmutated once together (default) or "
                             "each entry's alone")
    parser.add_argument("--list", action="store_true", help="list the entries and exit")
    parser.add_argument("--report", type=Path, default=LAST_RUN,
                        help="where to write the table (default mutants/last-run.md)")
    args = parser.parse_args(argv)
    log = _Log()
    try:
        mutants = load_rules()
    except RulesError as exc:
        print(f"mutants: {RULES} is not well-formed:\n{exc}", file=sys.stderr)
        return 2
    if args.list:
        _list(mutants)
        return 0
    version = int(tomllib.loads(RULES.read_text(encoding="utf-8"))["version"])
    chosen = select(mutants, args.only)
    jobs = max(1, min(args.jobs, os.cpu_count() or 1, len(chosen)))
    began = time.monotonic()
    outcomes: dict[str, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="iia-mutants-", ignore_cleanup_errors=True) as work:
        log(f"copying {ROOT} for {jobs} worker(s)")
        copies = [make_copy(ROOT, Path(work) / f"worker{i}") for i in range(jobs)]
        for copy in copies:
            check_copy(copy)
        for m in chosen:
            reason = stale_reason(m, copies[0])
            if reason is not None:
                outcomes[m.id] = Outcome(m, "broken", reason, 0.0)
        runnable = [m for m in chosen if m.id not in outcomes]
        t0 = time.monotonic()
        for mid, why in baseline(copies[0], runnable, args.timeout, args.baseline, log).items():
            outcomes[mid] = Outcome(next(m for m in runnable if m.id == mid), "broken", why, 0.0)
        baseline_s = time.monotonic() - t0
        todo = [m for m in runnable if m.id not in outcomes]
        free: queue.Queue[Path] = queue.Queue()
        for copy in copies:
            free.put(copy)

        def work_on(m: Mutant) -> Outcome:
            copy = free.get()
            try:
                return run_one(m, copy, args.timeout)
            finally:
                free.put(copy)

        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = {pool.submit(work_on, m): m for m in todo}
            for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
                outcome = future.result()
                outcomes[outcome.mutant.id] = outcome
                log(f"{n}/{len(todo)} {outcome.mutant.id}: {outcome.killed_by()} "
                    f"({outcome.seconds:.1f} s)")
    ordered = [outcomes[m.id] for m in chosen]
    wall = time.monotonic() - began
    print(table(ordered))
    counts = summary(ordered)
    print(f"\n{counts['killed']} killed, {counts['survived']} survived, {counts['broken']} "
          f"broken, {counts['timeout']} timed out; {wall:.0f} s")
    write_report(args.report, ordered, every=mutants, jobs=jobs, wall=wall,
                 baseline_s=baseline_s, version=version)
    log(f"wrote {args.report}")
    return 0 if counts["killed"] == len(ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
