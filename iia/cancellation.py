"""One tool call's cancellation, shared by the MCP handler that serves the call (event loop)
and the enforcement chain that runs it (a worker thread).

The MCP server cancels a call when its client says so (MCP `notifications/cancelled`) or goes
away (the HTTP exchange is disconnected); the chain looks at the same `CallCancel` at each
step that would act:

* while the push waits on the phone: the wait wakes, the push is withdrawn at the IdP, the
  call ends with `call_cancelled` (iia.hitl);
* before the token exchange: no on-behalf-of token is minted for a cancelled call;
* right before the admin API: `commit()` is the point of no return. It either refuses
  (cancelled: nothing is sent) or marks the call committed, after which a cancellation comes
  too late and says so (`cancel()` returns False): the write was already on its way.

It also carries what the call is waiting for (`awaiting`), so the MCP server can tell the
client in progress notifications (iia.mcp_server.progress).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from iia.errors import IIAError

__all__ = ["Awaiting", "CallCancel", "CallCancelledError"]


class CallCancelledError(IIAError, code="call_cancelled", status=409):
    """The client cancelled the call (or disconnected) before it acted: nothing was done.
    `push_status` is what the IdP answered when its pending push was withdrawn (None: there
    was no push to withdraw)."""

    def __init__(self, description: str, *, push_status: str | None = None,
                 dependency: str | None = None, upstream_code: str | None = None) -> None:
        super().__init__(description, dependency=dependency, upstream_code=upstream_code)
        self.push_status = push_status


@dataclass(frozen=True)
class Awaiting:
    """A push waiting for `user`'s answer: since `started`, until `deadline` (monotonic)."""

    user: str
    started: float
    deadline: float

    def left(self, now: float | None = None) -> float:
        return max(0.0, self.deadline - (time.monotonic() if now is None else now))


class CallCancel:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._committed = False
        self._wakers: list[Callable[[], None]] = []
        self.reason: str | None = None
        self.awaiting: Awaiting | None = None

    # -- the MCP side ---------------------------------------------------------------------

    def cancel(self, reason: str) -> bool:
        """Cancel the call for `reason` (what the client did, in words). False when the call
        had already committed to act (or was cancelled before): nothing changes then."""
        with self._lock:
            if self._committed or self._event.is_set():
                return False
            self.reason = reason
            self._event.set()
            wakers, self._wakers = self._wakers, []
        for wake in wakers:
            wake()
        return True

    # -- the chain's side -----------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True as soon as the call is cancelled."""
        return self._event.wait(timeout)

    def on_cancel(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call `wake` when the call is cancelled (now, if it already is); returns the
        unsubscribe."""
        with self._lock:
            if not self._event.is_set():
                self._wakers.append(wake)
                return lambda: self._forget(wake)
        wake()
        return lambda: None

    def _forget(self, wake: Callable[[], None]) -> None:
        with self._lock:
            if wake in self._wakers:
                self._wakers.remove(wake)

    def check(self) -> None:
        """Raise `CallCancelledError` if the call was cancelled."""
        if self._event.is_set():
            raise CallCancelledError(self._sentence())

    def commit(self) -> None:
        """The point of no return: raise if cancelled, else refuse every later cancellation."""
        with self._lock:
            if self._event.is_set():
                raise CallCancelledError(self._sentence())
            self._committed = True

    def wait_for_answer(self, awaiting: Awaiting | None) -> None:
        """What the call waits for now (None: nothing), for progress notifications."""
        self.awaiting = awaiting

    def _sentence(self) -> str:
        return f"the call was cancelled ({self.reason}) before it acted; nothing was done"
