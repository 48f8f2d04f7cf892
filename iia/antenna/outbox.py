"""The outbox's one writer: SETs queued by many threads, committed in batches (group commit).

Every bus decision becomes SETs in the SQLite outbox (`store.Store`). Before, the emitting
thread, the tool call's own, ran one transaction per SET (one per stream) on the call path, and
contended for the store with the push workers. Now it hands its SETs, the rows of one event for
every stream at once, to this writer and waits; a single thread drains the queue and commits
whatever has gathered in ONE transaction, then wakes each waiting emitter and the delivery side.

Durability, chosen: **group commit**. `write` returns only once its SETs are committed, so an
event the call path considers emitted (its `emit` returned, hence before the tool's result goes
back) is in the database: a crash of the process after that loses none of them. Concurrent
emitters (the MCP server runs each tool call in a worker thread) share one transaction instead
of queueing for one each. The cost on the call path is one hand-off to the writer and back;
signing and pushing stay off it (the per-stream push workers, `delivery.PushWorker`, sign a SET
only when they send it). An enqueue-and-return design would be cheaper still, but an event the
caller had been told about could then vanish in a crash: the issue asks for a durable outbox.
What a commit survives is SQLite's WAL with `synchronous=NORMAL` (store.py): the process
crashing, not the machine losing power.

Order: the queue is FIFO and a batch is inserted in queue order, so row ids, which delivery per
stream follows (DESIGN §7: FIFO, at least once), rise in the order events were handed over; the
SETs of one thread's events keep that thread's order.

Bounded: at most `capacity` requests wait. An emitter that finds the queue full blocks until
the writer makes room (backpressure, counted in `backpressure`); nothing is ever dropped.
A failed commit fails the requests it carried (their `write` raises, the call fails closed, as
an inline commit failing did) and the writer carries on; when a batch fails, each of its
requests is retried alone so one bad request does not fail its neighbours.
`close` stops taking requests, commits everything already queued, then ends the thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from iia.antenna.store import NewSet, Store

__all__ = ["OutboxClosedError", "OutboxWriter"]

log = logging.getLogger(__name__)


class OutboxClosedError(RuntimeError):
    """A write after `close`: Antenna is shutting down and its outbox takes nothing more."""


class _Request:
    __slots__ = ("done", "error", "sets")

    def __init__(self, sets: Sequence[NewSet]) -> None:
        self.sets = sets
        self.done = threading.Event()
        self.error: BaseException | None = None


class OutboxWriter:
    def __init__(self, store: Store, *, on_commit: Callable[[set[str]], None] | None = None,
                 capacity: int = 1024, max_batch: int = 512) -> None:
        if capacity < 1 or max_batch < 1:
            raise ValueError("capacity and max_batch must be at least 1")
        self.store = store
        self.capacity = capacity
        self.max_batch = max_batch
        self._on_commit = on_commit
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        # instrumentation (tests, the micro-measure): transactions committed, requests they
        # carried, and how often an emitter had to wait for room
        self.batches = 0
        self.requests = 0
        self.backpressure = 0

    @property
    def queued(self) -> int:
        """Requests handed over and not yet taken by the writer."""
        with self._cond:
            return len(self._queue)

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    # -- emitters ---------------------------------------------------------------------------

    def write(self, sets: Sequence[NewSet]) -> None:
        """Queue `sets` and return once they are committed (raises what the commit raised)."""
        request = self._submit(sets)
        request.done.wait()
        if request.error is not None:
            raise request.error

    def flush(self) -> None:
        """Return once everything queued before this call is committed."""
        self.write(())

    def _submit(self, sets: Sequence[NewSet]) -> _Request:
        request = _Request(sets)
        with self._cond:
            if not self._closed and len(self._queue) >= self.capacity:
                self.backpressure += 1
                while not self._closed and len(self._queue) >= self.capacity:
                    self._cond.wait()
            if self._closed:
                raise OutboxClosedError("Antenna's outbox is closed (shutting down); "
                                        f"{len(sets)} SET(s) not queued")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="antenna-outbox",
                                                daemon=True)
                self._thread.start()
            self._queue.append(request)
            self._cond.notify_all()
        return request

    # -- the writer -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:  # closed and drained
                    return
                batch = [self._queue.popleft()
                         for _ in range(min(len(self._queue), self.max_batch))]
                self._cond.notify_all()  # room for emitters waiting on a full queue
            self._commit(batch)

    def _commit(self, batch: list[_Request]) -> None:
        try:
            self.store.append([s for request in batch for s in request.sets])
        except BaseException as exc:  # handed to the emitters: never lost, never silent
            if len(batch) > 1:  # find the request that failed: the others must not fail too
                for request in batch:
                    self._commit([request])
                return
            log.error("antenna: the outbox could not commit %d SET(s): %r",
                      len(batch[0].sets), exc)
            batch[0].error = exc
            batch[0].done.set()
            return
        self.batches += 1
        self.requests += len(batch)
        streams = {s.stream_id for request in batch for s in request.sets}
        if streams and self._on_commit is not None:
            try:  # delivery first: a session-revoked SET is pushed as soon as it is on disk
                self._on_commit(streams)
            except Exception:  # a lost wake-up only delays delivery: workers look again
                log.exception("antenna: waking delivery after a commit failed")
        for request in batch:
            request.done.set()

    # -- life -------------------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Take no more requests; commit what is queued; end the writer thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
