"""The benchmark's bookkeeping (bench/run.py, bench/load.py), not its timings (those live in
`make bench` only): an empty sample is reported as such, the timed window opens only once every
session is warm, and CPU is read from /proc."""

from __future__ import annotations

import asyncio
import os

from bench.load import Window, cpu_ms
from bench.run import pct, point, ratio, summary, verdict


def test_an_empty_sample_is_reported_not_an_index_error() -> None:
    assert pct([], 50) is None
    assert summary([]) == {"p50_ms": None, "p99_ms": None, "mean_ms": None, "n": 0}
    assert ratio(None, 3.0) is None and ratio(3.0, 0.0) is None
    goal = verdict("warm_p50_enforced_over_unenforced", None)
    assert goal["held"] is None and goal["verdict"].startswith("not measured")
    row = point({"calls": 0, "calls_per_s": 0.0, "seconds": 0.0, "latencies": [],
                 "errors": 0, "cpu_ms": {"iia": 12.0}, "failed": "RuntimeError: boom"})
    assert row["n"] == 0 and row["cpu_ms_per_call"] == {"iia": None}
    assert row["failed"] == "RuntimeError: boom"


def test_percentiles_and_verdicts_on_a_sample() -> None:
    assert pct([5.0, 1.0, 3.0], 50) == 3.0 and pct([5.0, 1.0, 3.0], 99) == 5.0
    assert verdict("warm_p50_enforced_over_unenforced", 2.0)["verdict"] == "held"
    assert verdict("warm_p50_enforced_over_unenforced", 2.01)["verdict"] == "missed"
    assert verdict("calls_per_s_enforced_over_unenforced_at_32", 0.49)["verdict"] == "missed"


def test_the_window_opens_only_when_every_session_is_warm() -> None:
    async def scenario() -> None:
        window = Window(3, seconds=1.0, pids={"self": os.getpid()})
        window.ready()
        window.ready()
        assert not window.opened.is_set() and window.cpu_before == {}
        window.ready()
        assert window.opened.is_set()
        assert window.deadline > window.started > 0
        assert isinstance(window.cpu_before["self"], float)

    asyncio.run(scenario())


def test_cpu_is_read_from_proc_and_a_gone_process_is_none() -> None:
    before = cpu_ms(os.getpid())
    assert before is not None
    sum(i * i for i in range(2_000_000))  # some CPU of our own
    after = cpu_ms(os.getpid())
    assert after is not None and after > before
    assert cpu_ms(2**22 + 12345) is None  # above the default pid_max: no such process
