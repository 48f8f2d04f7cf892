"""Order across an outage, checked by the spec-written receiver (tests/spec_receiver.py).

Antenna runs in its own process (`HOST`: Antenna, its HTTP app under uvicorn and a line on stdin
to make decisions), so a `kill -9` kills the transmitter and nothing of it survives but its
SQLite outbox. The receiver subscribes over HTTP from the test process, by SSF 1.0 discovery.
Issue #19: before the fix, SETs queued while the receiver was down arrived with hundreds of
inversions (each SET kept its own retry time and overtook the waiting head).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.spec_receiver import SetChecker, SpecReceiver, discover, inversions, poll, subscribe

TIMEOUT = 60.0  # a wait on a condition, generous for a loaded 2-core machine
ROOT = Path(__file__).resolve().parent.parent
ISSUED = "https://iia.lab/secevent/agent/token-exchange-issued"

HOST = """
import os, sys, threading
import uvicorn
from iia.antenna import Antenna, antenna_app
from iia.events import EventBus

db, port, token_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bus = EventBus()
antenna = Antenna(f"http://127.0.0.1:{port}", db, events=bus).start()
fd = os.open(token_file + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, antenna.register_client("spec-receiver").encode())
os.close(fd)
os.replace(token_file + ".new", token_file)

def commands():
    for line in sys.stdin:  # "<first round> <rounds> <sessions>": decisions, round-robin
        first, rounds, sessions = map(int, line.split())
        for i in range(first, first + rounds):
            for k in range(sessions):
                bus.emit("agent:token_exchange_success", session_id=f"s{k}", tier=1,
                         user_email="alice@example.com", tool_name="list_users",
                         rar_type="verify_read_users", rar_summary=f"{i}/{k}",
                         call_id=f"s{k}-{i}")
        print("emitted", flush=True)

threading.Thread(target=commands, daemon=True).start()
uvicorn.run(antenna_app(antenna), host="127.0.0.1", port=port, log_level="warning")
"""

SESSIONS = 4


def eventually(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Host:
    """Antenna's process; `kill()` is SIGKILL, `start()` runs it again on the same port/db."""

    def __init__(self, tmp: Path) -> None:
        self.db, self.token_file = tmp / "antenna.sqlite", tmp / "token"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.round = 0
        self.returncode: int | None = None

    def start(self) -> None:
        self.token_file.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOST, str(self.db), str(self.port), str(self.token_file)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(lambda: self.token_file.exists() and healthy(), "Antenna's process up")

    @property
    def token(self) -> str:
        return self.token_file.read_text()

    def decide(self, rounds: int) -> list[tuple[int, int]]:
        """`rounds` decisions for each session; returns their (round, session) in issue order."""
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{self.round} {rounds} {SESSIONS}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "emitted"  # committed to the outbox
        issued = [(i, k) for i in range(self.round, self.round + rounds)
                  for k in range(SESSIONS)]
        self.round += rounds
        return issued

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.close()
        assert self.returncode == -signal.SIGKILL

    def close(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.returncode, self.proc = self.proc.returncode, None

    def head(self, stream_id: str) -> tuple[int, int]:
        """(pending SETs, attempts made on the oldest) of a stream, read from the outbox."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT attempts FROM outbox WHERE stream_id = ? AND "
                              "state = 'pending' ORDER BY id", (stream_id,)).fetchall()
        return len(rows), rows[0][0] if rows else 0


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = Host(tmp_path)
    h.start()
    try:
        yield h
    finally:
        if h.proc is not None:
            h.close()


def push_stream(host: Host, receiver: SpecReceiver) -> str:
    config = discover(host.url)
    stream = subscribe(config, host.token, {
        "method": "urn:ietf:rfc:8935", "endpoint_url": receiver.url}, [ISSUED])
    assert stream["events_delivered"] == [ISSUED]
    receiver.checker = SetChecker(config, stream["aud"])
    return str(stream["stream_id"])


def arrival(receiver: SpecReceiver) -> list[tuple[int, int]]:
    out = []
    for claims in receiver.received:
        [(event_type, payload)] = claims["events"].items()
        assert event_type == ISSUED
        i, k = payload["rarSummary"].split("/")
        out.append((int(i), int(k)))
    return out


def assert_exactly_once_in_order(receiver: SpecReceiver, issued: list[tuple[int, int]]) -> None:
    got = arrival(receiver)
    position = {d: n for n, d in enumerate(issued)}
    assert receiver.errors == []  # every SET passed every check
    assert receiver.duplicates == 0
    assert sorted(got) == sorted(issued)  # every SET, once
    assert inversions([position[d] for d in got]) == 0
    assert got == issued


def outage(host: Host, receiver: SpecReceiver, stream_id: str, issued: list[tuple[int, int]],
           during: Callable[[], None] = lambda: None) -> None:
    """Receiver down; decisions queue until 40 SETs are pending and the head has been retried;
    `during` (a kill); receiver back."""
    receiver.stop()
    issued += host.decide(10)
    eventually(lambda: host.head(stream_id)[0] >= 40 and host.head(stream_id)[1] >= 3,
               "40 SETs pending behind a head retried three times")
    during()
    receiver.start()


def test_every_set_arrives_once_and_in_order_across_an_outage(host: Host) -> None:
    down, up = SpecReceiver(), SpecReceiver()
    try:
        stream_id = push_stream(host, down)
        push_stream(host, up)  # another stream, whose receiver stays up
        issued = host.decide(3)
        eventually(lambda: len(down.received) == len(issued), "the first SETs")

        def other_stream_flows() -> None:
            eventually(lambda: len(up.received) == len(issued),
                       "the other stream's SETs while this one's receiver is down")

        outage(host, down, stream_id, issued, other_stream_flows)
        issued += host.decide(2)
        eventually(lambda: len(down.received) == len(issued), "every SET after the outage")
        assert_exactly_once_in_order(down, issued)
        eventually(lambda: len(up.received) == len(issued), "the other stream's SETs")
        assert_exactly_once_in_order(up, issued)
        assert host.head(stream_id)[0] == 0
    finally:
        down.stop()
        up.stop()


def test_order_holds_across_a_kill_of_the_transmitter(host: Host) -> None:
    """kill -9 of Antenna's process while SETs wait behind the head: the restarted process
    resumes from that head, and what is decided after the restart comes after it."""
    receiver = SpecReceiver()
    try:
        stream_id = push_stream(host, receiver)
        issued = host.decide(3)
        eventually(lambda: len(receiver.received) == len(issued), "the first SETs")

        def kill_and_restart() -> None:
            host.kill()
            host.start()  # a new process on the same outbox (the supervisor's restart)

        outage(host, receiver, stream_id, issued, kill_and_restart)
        issued += host.decide(2)
        eventually(lambda: len(receiver.received) == len(issued), "every SET after the kill")
        assert_exactly_once_in_order(receiver, issued)
    finally:
        receiver.stop()


def test_poll_hands_out_in_order_and_again_after_a_kill_until_acknowledged(host: Host) -> None:
    """RFC 8936 poll: SETs come in issue order; the ones handed out but not acknowledged
    when the transmitter is killed come again, first, from the restarted process."""
    config = discover(host.url)
    stream = subscribe(config, host.token, {"method": "urn:ietf:rfc:8936"}, [ISSUED])
    endpoint = stream["delivery"]["endpoint_url"]
    checker = SetChecker(config, stream["aud"])
    issued = host.decide(5)
    first, more = poll(endpoint, host.token, checker, ack=[], max_events=8)
    assert more and len(first) == 8
    host.kill()  # the 8 were handed out, never acknowledged
    host.start()
    issued += host.decide(2)
    got: list[dict[str, Any]] = []
    ack: list[str] = []
    while True:
        sets, more = poll(endpoint, host.token, checker, ack=ack, max_events=8)
        got += sets
        ack = [s["jti"] for s in sets]
        if not sets:
            break
    assert [c["jti"] for c in got[:8]] == [c["jti"] for c in first]  # again, first
    order = []
    for claims in got:
        i, k = claims["events"][ISSUED]["rarSummary"].split("/")
        order.append((int(i), int(k)))
    assert order == issued  # every SET, once, in order
    assert host.head(str(stream["stream_id"]))[0] == 0  # all acknowledged
