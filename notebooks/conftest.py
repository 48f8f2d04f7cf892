"""The notebooks' time budget, checked on every nbval run (`make test`).

Each notebook must run in `IIA_NOTEBOOK_LIMIT_S` seconds (default 30) and all of them together in
`IIA_NOTEBOOKS_LIMIT_S` (default 180): a notebook is a live walkthrough, so a slow one is a broken
one. A notebook's time is the sum of its nbval items' setup, call and teardown (kernel start
included). Raise the limits through the environment on a slow machine; do not edit them here.
"""

from __future__ import annotations

import os
from collections import defaultdict

import pytest

_durations: dict[str, float] = defaultdict(float)


def _limit(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    try:
        return float(value) if value else default
    except ValueError as exc:
        raise pytest.UsageError(f"{name}={value!r} is not a number of seconds") from exc


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _durations[path] += report.duration


def over_budget(durations: dict[str, float], each: float, total: float) -> list[str]:
    """The complaints, one per notebook over `each` and one if the sum is over `total`."""
    problems = [f"{path} took {seconds:.1f} s (limit {each:.0f} s, IIA_NOTEBOOK_LIMIT_S)"
                for path, seconds in sorted(durations.items()) if seconds > each]
    spent = sum(durations.values())
    if spent > total:
        problems.append(f"the {len(durations)} notebooks took {spent:.1f} s together "
                        f"(limit {total:.0f} s, IIA_NOTEBOOKS_LIMIT_S)")
    return problems


def _problems() -> list[str]:
    return over_budget(_durations, _limit("IIA_NOTEBOOK_LIMIT_S", 30.0),
                       _limit("IIA_NOTEBOOKS_LIMIT_S", 180.0))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _durations:
        return
    terminalreporter.section("notebook times")
    for path, seconds in sorted(_durations.items()):
        terminalreporter.write_line(f"{seconds:6.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_durations.values()):6.1f} s  total")
    for problem in _problems():
        terminalreporter.write_line(f"TOO SLOW: {problem}", red=True, bold=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _durations and _problems() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
