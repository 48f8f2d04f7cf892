"""Antenna's outbox writer (iia/antenna/outbox.py): one writer at a time (the emitter first in
line) commits the SETs many emitters queue, in batches (one transaction each), in queue order,
bounded with backpressure, durable once acknowledged (a killed process loses no SET whose emit
returned), drained on close.

No test here times anything: the writer is held at a gate (a store whose `append` waits for the
test) so that what gathers in the queue is decided by the test, not by the scheduler.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from iia.antenna import AGENT, POLL, Antenna
from iia.antenna.outbox import OutboxClosedError, OutboxWriter
from iia.antenna.store import NewSet, Store
from iia.events import EventBus

TIMEOUT = 30.0  # a wait on a condition, generous for a loaded 2-core machine
ROOT = Path(__file__).resolve().parent.parent


def eventually(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class GatedStore(Store):
    """A store whose commits wait for the test to open the gate, and that records each
    transaction's size (the writer's only way to the database is `append`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.entered = threading.Event()  # the writer is inside a commit
        self.transactions: list[int] = []

    def append(self, sets: Sequence[NewSet]) -> None:
        self.entered.set()
        assert self.gate.wait(TIMEOUT), "the test never opened the gate"
        super().append(sets)
        self.transactions.append(len(sets))


def one(stream: str, n: int) -> list[NewSet]:
    return [NewSet(stream, f"jti-{n}", AGENT["token-exchange-issued"], {"n": n}, f"ev-{n}")]


def stream_rows(store: Store, stream: str) -> list[int]:
    return [row.claims["n"] for row in store.pending(stream, 10_000)]


class Writers:
    """Emitter threads, each doing one `write`; started in order, each only once the one before
    it is in the queue, so the queue's order is known."""

    def __init__(self, writer: OutboxWriter) -> None:
        self.writer = writer
        self.threads: list[threading.Thread] = []
        self.errors: dict[int, BaseException] = {}
        self.returned: set[int] = set()

    def start(self, n: int, sets: list[NewSet]) -> threading.Thread:
        def run() -> None:
            try:
                self.writer.write(sets)
            except BaseException as exc:  # the test inspects it
                self.errors[n] = exc
            else:
                self.returned.add(n)

        thread = threading.Thread(target=run, name=f"emitter-{n}", daemon=True)
        self.threads.append(thread)
        thread.start()
        return thread

    def join(self) -> None:
        for thread in self.threads:
            thread.join(TIMEOUT)
            assert not thread.is_alive(), f"{thread.name} never returned"


@pytest.fixture
def gated(tmp_path: Path):
    store = GatedStore(tmp_path / "o.sqlite")
    store.put_stream("s", "test", {"delivery": {"method": POLL}})
    writer = OutboxWriter(store, capacity=4)
    try:
        yield store, writer
    finally:
        store.gate.set()
        writer.close(TIMEOUT)
        store.close()


def test_what_gathers_while_a_commit_runs_is_committed_in_one_transaction_in_order(
        gated: tuple[GatedStore, OutboxWriter]) -> None:
    store, writer = gated
    writer.capacity = 64
    emitters = Writers(writer)
    emitters.start(0, one("s", 0))
    assert store.entered.wait(TIMEOUT)  # emitter 0 is the writer, inside its commit
    for n in range(1, 21):
        emitters.start(n, one("s", n))
        eventually(lambda n=n: writer.queued == n, f"request {n} queued")
    assert emitters.returned == set()  # nobody is told "emitted" before the commit
    assert stream_rows(store, "s") == []
    store.gate.set()
    emitters.join()
    assert emitters.errors == {} and emitters.returned == set(range(21))
    assert store.transactions == [1, 20]  # the 20 that waited together: ONE transaction
    assert writer.batches == 2 and writer.requests == 21
    assert stream_rows(store, "s") == list(range(21))  # in hand-over order
    assert store.sets_for("ev-7") == [("s", "jti-7")]


def test_a_full_queue_blocks_the_emitter_and_drops_nothing(
        gated: tuple[GatedStore, OutboxWriter]) -> None:
    store, writer = gated
    writer.capacity = 2
    emitters = Writers(writer)
    emitters.start(0, one("s", 0))
    assert store.entered.wait(TIMEOUT)
    for n in (1, 2):
        emitters.start(n, one("s", n))
        eventually(lambda n=n: writer.queued == n, f"request {n} queued")
    blocked = emitters.start(3, one("s", 3))
    eventually(lambda: writer.backpressure == 1, "the fourth emitter to meet the bound")
    assert writer.queued == 2 and blocked.is_alive()  # held back, not queued past the bound
    assert emitters.errors == {} and emitters.returned == set()
    store.gate.set()
    emitters.join()
    assert emitters.errors == {} and emitters.returned == {0, 1, 2, 3}
    assert stream_rows(store, "s") == [0, 1, 2, 3]  # the held-back one landed too, last


def test_a_request_that_cannot_be_committed_fails_alone(
        gated: tuple[GatedStore, OutboxWriter]) -> None:
    store, writer = gated
    emitters = Writers(writer)
    emitters.start(0, one("s", 0))
    assert store.entered.wait(TIMEOUT)
    unserialisable = [NewSet("s", "jti-bad", AGENT["token-exchange-issued"],
                             {"n": object()}, "ev-bad")]
    for n, sets in ((1, one("s", 1)), (2, unserialisable), (3, one("s", 3))):
        emitters.start(n, sets)
        eventually(lambda n=n: writer.queued == n, f"request {n} queued")
    store.gate.set()
    emitters.join()
    assert emitters.returned == {0, 1, 3}
    assert isinstance(emitters.errors[2], TypeError)  # its emitter hears of it
    assert stream_rows(store, "s") == [0, 1, 3]  # its neighbours in the batch still landed
    assert store.sets_for("ev-bad") == []  # and nothing half-written of it
    writer.write(one("s", 4))  # the writer carries on
    assert stream_rows(store, "s") == [0, 1, 3, 4]


def test_close_commits_what_was_queued_then_refuses_more(
        gated: tuple[GatedStore, OutboxWriter]) -> None:
    store, writer = gated
    emitters = Writers(writer)
    emitters.start(0, one("s", 0))
    assert store.entered.wait(TIMEOUT)
    for n in (1, 2, 3):
        emitters.start(n, one("s", n))
        eventually(lambda n=n: writer.queued == n, f"request {n} queued")
    closing = threading.Thread(target=writer.close, daemon=True)
    closing.start()
    eventually(lambda: writer.closed, "close to begin")
    with pytest.raises(OutboxClosedError):
        writer.write(one("s", 99))
    store.gate.set()
    closing.join(TIMEOUT)
    assert not closing.is_alive()
    emitters.join()
    assert emitters.errors == {} and emitters.returned == {0, 1, 2, 3}
    assert stream_rows(store, "s") == [0, 1, 2, 3]  # drained, and 99 never got in


def decision(bus: EventBus, session: str, n: int) -> str:
    return bus.emit("agent:token_exchange_success", session_id=session,
                    user_email="alice@example.com", tool_name="list_users", tier=1,
                    rar_type="verify_read_users", rar_summary=f"{session}/{n}",
                    call_id=f"{session}-{n}").event_id


def test_concurrent_emitters_each_land_once_in_their_order_on_every_stream(
        tmp_path: Path) -> None:
    bus = EventBus()
    antenna = Antenna("http://127.0.0.1:9", tmp_path / "a.sqlite", events=bus).start()
    try:
        streams = [antenna.create_stream("test", {
            "delivery": {"method": POLL}, "events_requested": [AGENT["token-exchange-issued"]]}
        )["stream_id"] for _ in range(2)]
        emitted: dict[str, list[str]] = {}
        per_thread = 40

        def emit(session: str) -> None:
            emitted[session] = [decision(bus, session, n) for n in range(per_thread)]

        threads = [threading.Thread(target=emit, args=(f"s{k}",)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert len(emitted) == 8
        every = {e for ids in emitted.values() for e in ids}
        for event_id in every:  # acknowledged means committed: one SET per stream, now
            assert sorted(s for s, _ in antenna.sets_for(event_id)) == sorted(streams)
        orders = []
        for stream_id in streams:
            rows = antenna.store.pending(stream_id, 10_000)
            assert len(rows) == 8 * per_thread == len({r.jti for r in rows})  # exactly once
            events = [r.claims["events"][AGENT["token-exchange-issued"]] for r in rows]
            by_session: dict[str, list[str]] = defaultdict(list)
            for payload in events:
                by_session[payload["rarSummary"].split("/")[0]].append(payload["bus_event_id"])
            assert by_session == emitted  # each emitter's events, in its order
            orders.append([p["bus_event_id"] for p in events])
        assert orders[0] == orders[1]  # and both streams saw one interleaving: FIFO overall
    finally:
        antenna.stop()


CRASHING_EMITTER = """
import os, sys, threading
from iia.antenna import AGENT, POLL, Antenna
from iia.events import EventBus

db, acks = sys.argv[1], os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
bus = EventBus()
antenna = Antenna("http://127.0.0.1:9", db, events=bus).start()
antenna.create_stream("test", {"delivery": {"method": POLL},
                               "events_requested": [AGENT["token-exchange-issued"]]})
print("ready", flush=True)

def emit(k):
    n = 0
    while True:
        event = bus.emit("agent:token_exchange_success", session_id=f"s{k}", tier=1,
                         tool_name="list_users", rar_summary=f"s{k}/{n}", call_id=f"s{k}-{n}")
        os.write(acks, f"{event.event_id} s{k} {n}\\n".encode())  # acknowledged: emit returned
        n += 1

for k in range(4):
    threading.Thread(target=emit, args=(k,), daemon=True).start()
threading.Event().wait()
"""


def test_a_killed_process_loses_no_acknowledged_set(tmp_path: Path) -> None:
    """SIGKILL while four threads emit flat out: no shutdown, no drain, no flush. Every event
    whose emit had returned is in the reopened outbox, once, in each emitter's order."""
    db, acks = tmp_path / "a.sqlite", tmp_path / "acks"
    with subprocess.Popen([sys.executable, "-c", CRASHING_EMITTER, str(db), str(acks)],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            eventually(lambda: acks.exists() and acks.read_bytes().count(b"\n") >= 400,
                       "400 acknowledged emits")
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(TIMEOUT)
    assert proc.returncode == -signal.SIGKILL
    acked = [line.split() for line in acks.read_text().split("\n")[:-1]]
    assert len(acked) >= 400
    store = Store(db)
    try:
        [(stream_id, _, _)] = store.streams()
        rows = store.pending(stream_id, 1_000_000)
        assert len(rows) == len({r.jti for r in rows})
        found = {r.claims["events"][AGENT["token-exchange-issued"]]["bus_event_id"]: r
                 for r in rows}
        missing = [event_id for event_id, _, _ in acked if event_id not in found]
        assert missing == []  # nothing acknowledged was lost
        for event_id, _, _ in acked:
            assert len(store.sets_for(event_id)) == 1
        position = {event_id: i for i, event_id in enumerate(found)}
        for session in {s for _, s, _ in acked}:
            mine = sorted(((int(n), e) for e, s, n in acked if s == session))
            assert [position[e] for _, e in mine] == sorted(position[e] for _, e in mine)
    finally:
        store.close()
