"""The thread the admin API's SCIM work runs on, off the tenant's event loop.

scim2-server serves a request as a coroutine that never waits on anything (its in-memory
storage answers at once), so on the server's loop a request's pydantic validation, copies and
serialisation would hold up every other request of the tenant, the token endpoint's included.
Here the loop only reads the request and writes the response; the coroutine runs on one thread
with an event loop of its own. One thread, so admin API requests still run one after another
and to completion, as they did on the server's loop (a PATCH's read, patch and write are never
interleaved with another request's); what they share with the rest of the tenant (the
directory's storage, sessions, spent jtis, the audit trail) is guarded by those objects' own
locks, as it was for the token endpoint's worker threads already.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["AdminWorker", "admin_worker"]

T = TypeVar("T")


class AdminWorker:
    """A daemon thread running its own asyncio loop, started on first use."""

    def __init__(self, name: str = "verify-admin-api") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=self._serve, args=(loop,), name=self.name,
                                 daemon=True).start()
                self._loop = loop
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the worker's loop and await its result (or its exception) here."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._started()))


# one per process: the tenant's admin API (and any other in the same process, as in the tests)
admin_worker = AdminWorker()
