"""MCP progress (spec, basic/utilities/progress) while a tool call waits for the human.

A client that sends `_meta.progressToken` with `tools/call` gets its answer as an SSE stream
(iia.mcp_server.edge) carrying `notifications/progress` every `PROGRESS_INTERVAL` seconds
while the push waits on the phone: `progress` = seconds waited (it only grows), `total` = the
seconds the push may wait, `message` = who is asked and how many seconds are left. A client
whose timeout resets on progress (TypeScript SDK `resetTimeoutOnProgress`, the Inspector's
default) therefore keeps waiting as long as the person may answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio

from iia.cancellation import CallCancel

__all__ = ["PROGRESS_INTERVAL", "ProgressReporter", "progress_token"]

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 5.0  # seconds between notifications: under the Inspector's 10 s timeout
TICK = 0.25  # seconds between looks at what the call waits for

Report = Callable[[float, float | None, str | None], Awaitable[None]]


def progress_token(params: Mapping[str, Any] | None) -> str | int | None:
    """The request's `_meta.progressToken` (a string or an integer), else None."""
    meta = (params or {}).get("_meta")
    token = meta.get("progressToken") if isinstance(meta, Mapping) else None
    if isinstance(token, bool) or not isinstance(token, str | int):
        return None
    return token


class ProgressReporter:
    def __init__(self, cancel: CallCancel, report: Report, *,
                 interval: float = PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cancel = cancel
        self.report = report
        self.interval = interval
        self._clock = clock
        self.sent = 0

    async def run(self) -> None:
        """Report while the call waits for an answer; runs until cancelled."""
        last: float | None = None
        progress = 0.0
        while True:
            awaiting = self.cancel.awaiting
            now = self._clock()
            if awaiting is not None and (last is None or now - last >= self.interval):
                progress = max(progress + 0.1, round(now - awaiting.started, 1))
                left = round(awaiting.left(now))
                try:
                    await self.report(progress,
                                      round(awaiting.deadline - awaiting.started, 1),
                                      f"waiting for {awaiting.user} to approve on their "
                                      f"phone: {left} s left")
                except Exception as exc:  # the stream is gone: the call goes on regardless
                    log.debug("progress not sent (%s); no more for this call",
                              exc.__class__.__name__)
                    return
                self.sent += 1
                last = now
            elif awaiting is None:
                last = None
            await anyio.sleep(TICK)
