"""Antenna's push order and retry schedule, on the store and the worker themselves (issue #19):
a SET waiting for its retry blocks the SETs behind it on its stream, and only there; the retry
schedule (0.25 s, 0.5 s, then every 1 s) reaches a returning receiver within a second. A fake
clock drives the schedule, so nothing here waits for time to pass."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from iia.antenna import PUSH
from iia.antenna.delivery import PushWorker
from iia.antenna.store import NewSet, Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def queue(store: Store, stream: str, n: int) -> None:
    store.append([NewSet(stream, f"{stream}-{i}", "t", {"n": i}) for i in range(n)])


def test_a_waiting_head_blocks_its_own_stream_only(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "o.sqlite", clock)
    try:
        for stream in ("a", "b"):
            store.put_stream(stream, "test", {"delivery": {"method": PUSH}})
            queue(store, stream, 3)
        [head, *_] = store.due("a")
        store.retry_later(head.id, 0.5, "ConnectError")
        assert store.due("a") == []  # the two behind the head wait with it
        assert store.next_due_at("a") == clock.now + 0.5  # the worker sleeps until the head
        assert [r.jti for r in store.due("b")] == ["b-0", "b-1", "b-2"]  # b keeps flowing
        clock.now += 0.5
        assert [r.jti for r in store.due("a")] == ["a-0", "a-1", "a-2"]  # from the head, in order
    finally:
        store.close()


def test_the_retry_schedule_reaches_a_returning_receiver_within_a_second(
        tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on: connection refused, a receiver down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clock = Clock()
    store = Store(tmp_path / "o.sqlite", clock)
    config: dict[str, Any] = {"delivery": {"method": PUSH,
                                           "endpoint_url": f"http://127.0.0.1:{port}/events"}}
    store.put_stream("a", "test", config)
    queue(store, "a", 3)
    worker = PushWorker("a", store, sign=lambda claims: "x.y.z",
                        config=lambda: (config, "enabled"))
    try:
        waits = []
        for _ in range(8):
            worker._step()  # one pass: the head is tried, refused, and rescheduled
            next_at = store.next_due_at("a")
            assert next_at is not None
            waits.append(next_at - clock.now)
            clock.now = next_at
        rows = store.pending("a", 10)
        assert [r.attempts for r in rows] == [8, 0, 0]  # only the head was ever tried
        assert 0.2 <= waits[0] <= 0.25 and 0.4 <= waits[1] <= 0.5
        assert all(0.8 <= w <= 1.0 for w in waits[2:])  # then about once a second, never more
    finally:
        worker._http.close()
        store.close()
