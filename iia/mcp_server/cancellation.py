"""MCP cancellation (spec, basic/utilities/cancellation) for a stateless server: the tool calls
in flight, and how a cancellation reaches the one it names.

The server keeps no MCP session, so a client's `notifications/cancelled {requestId}` arrives as
its own POST, authenticated on its own (iia.mcp_server.auth). It cancels the calls in flight
under **the same user and the same IdP session** (`sub`, `sid` of the bearer token) with that
JSON-RPC request id, and nothing else: another user, or the same user signed in elsewhere,
names a different key and cancels nothing. (The request id is the client's own counter, so
it alone identifies nothing; the SDK's 2026 entry drops such notifications for that reason.)

A cancellation that arrives before its call is registered (it overtook the request) is kept
as a short-lived tombstone (`TOMBSTONE_TTL`, at most `MAX_TOMBSTONES`), which the call finds
when it starts. A call whose HTTP exchange is disconnected is cancelled too (`Exchange`:
iia.mcp_server.edge watches the connection).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

from iia.cancellation import CallCancel
from iia.resource_server import Caller

__all__ = ["CANCELLED_BY_CLIENT", "DISCONNECTED", "MAX_TOMBSTONES", "TOMBSTONE_TTL",
           "Exchange", "InFlightCalls"]

TOMBSTONE_TTL = 10.0  # seconds a cancellation waits for a call that has not started yet
MAX_TOMBSTONES = 1024
CANCELLED_BY_CLIENT = "the MCP client sent notifications/cancelled"
DISCONNECTED = "the MCP client disconnected"

Key = tuple[str, str, str]


def _key(caller: Caller, request_id: object) -> Key:
    return (caller.sub, caller.sid, str(request_id))


class InFlightCalls:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._calls: dict[Key, list[CallCancel]] = {}
        self._tombstones: OrderedDict[Key, tuple[float, str]] = OrderedDict()
        self.cancelled = 0  # calls cancelled by a notification (instrumentation)

    @contextlib.contextmanager
    def track(self, caller: Caller, request_id: object) -> Iterator[CallCancel]:
        """The cancellation of one call, registered while the call runs."""
        key = _key(caller, request_id)
        cancel = CallCancel()
        with self._lock:
            self._calls.setdefault(key, []).append(cancel)
            early = self._tombstones.pop(key, None)
        if early is not None and early[0] > self._clock():
            cancel.cancel(early[1])
        try:
            yield cancel
        finally:
            with self._lock:
                calls = self._calls.get(key, [])
                if cancel in calls:
                    calls.remove(cancel)
                if not calls:
                    self._calls.pop(key, None)

    def cancel(self, caller: Caller, request_id: object, reason: str = CANCELLED_BY_CLIENT
               ) -> int:
        """Cancel `caller`'s calls with this request id (in this session); returns how many.
        None running: a tombstone waits `TOMBSTONE_TTL` for the call to start."""
        key = _key(caller, request_id)
        now = self._clock()
        with self._lock:
            calls = list(self._calls.get(key, []))
            if not calls:
                for stale in [k for k, (until, _) in self._tombstones.items() if until <= now]:
                    del self._tombstones[stale]
                self._tombstones[key] = (now + TOMBSTONE_TTL, reason)
                self._tombstones.move_to_end(key)
                while len(self._tombstones) > MAX_TOMBSTONES:
                    self._tombstones.popitem(last=False)
        done = sum(1 for c in calls if c.cancel(reason))
        with self._lock:
            self.cancelled += done
        return done

    def running(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._calls.values())


class Exchange:
    """One HTTP request/response exchange: the calls it carries are cancelled when its client
    disconnects before the answer (iia.mcp_server.edge)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[CallCancel] = []
        self.disconnected = False

    def attach(self, cancel: CallCancel) -> None:
        with self._lock:
            gone = self.disconnected
            if not gone:
                self._calls.append(cancel)
        if gone:
            cancel.cancel(DISCONNECTED)

    def disconnect(self) -> None:
        with self._lock:
            self.disconnected = True
            calls, self._calls = self._calls, []
        for cancel in calls:
            cancel.cancel(DISCONNECTED)
