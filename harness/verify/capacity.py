"""The token endpoint's capacity: how the simulated Verify behaves when it is saturated.

A real IdP serves a bounded number of token requests at once (worker threads, connections to its
own stores) and sheds the rest rather than letting every request slow down until all of them
time out. The tenant does the same, configured in fixtures/tenant/capacity.json:

    at most `max_in_flight` token requests in progress (from the moment the request's headers
    arrived: a client that sends its body slowly holds its slot, as on any server);
    beyond that, up to `max_queued` more wait, each at most `queue_wait` seconds, for a slot;
    beyond that (or after that wait): HTTP 503 with RFC 6749 §5.2's `temporarily_unavailable`,
    `Retry-After: retry_after` (RFC 9110 §10.2.3) and `Cache-Control: no-store`.

A request turned away was not read: nothing was issued, nothing recorded, so the client may
send it again after Retry-After (uvicorn's `--limit-concurrency` sheds load the same way, with a
bare 503; this one speaks OAuth). The gate is asyncio's, on the server's event loop: every
counter here is touched by that one thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from starlette.responses import JSONResponse

from harness.verify.errors import NO_STORE

__all__ = ["Saturated", "TokenCapacity", "TokenGate", "load_capacity"]


@dataclass(frozen=True)
class TokenCapacity:
    """The token endpoint's limits (defaults: what the lab's tenant serves without the file)."""

    max_in_flight: int = 32
    max_queued: int = 64
    queue_wait: float = 2.0  # seconds a queued request waits for a slot, at most
    retry_after: int = 1  # seconds, in Retry-After

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            least = 1 if f.name in ("max_in_flight", "retry_after") else 0
            if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
                raise ValueError(f"{f.name} must be a number, at least {least}, got {value!r}")
        for name in ("max_in_flight", "max_queued", "retry_after"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(f"{name} must be a whole number, got {getattr(self, name)!r}")


def load_capacity(fixtures: Path) -> TokenCapacity:
    """fixtures/tenant/capacity.json (keys starting with `_` are comments); without the file,
    the defaults."""
    path = fixtures / "tenant" / "capacity.json"
    if not path.exists():
        return TokenCapacity()
    doc = json.loads(path.read_text())
    values = {k: v for k, v in doc.items() if not k.startswith("_")}
    known = {f.name for f in fields(TokenCapacity)}
    if set(values) - known:
        raise ValueError(f"{path.name}: unknown settings {sorted(set(values) - known)} "
                         f"(known: {sorted(known)})")
    try:
        return TokenCapacity(**values)
    except ValueError as exc:
        raise ValueError(f"{path.name}: {exc}") from exc


class Saturated(Exception):
    """No slot: the request is turned away."""


class TokenGate:
    def __init__(self, capacity: TokenCapacity | None = None) -> None:
        self.capacity = capacity or TokenCapacity()  # replaceable while the tenant runs
        self.in_flight = 0
        self.queued = 0
        self.turned_away = 0  # 503s answered, since start
        self.peak_in_flight = 0
        self._free: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._free is None:
            self._free = asyncio.Condition()
        return self._free

    def _has_room(self) -> bool:
        return self.in_flight < self.capacity.max_in_flight

    def _take(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    async def _admit(self) -> None:
        if self._has_room():
            self._take()
            return
        if self.queued >= self.capacity.max_queued:
            raise Saturated
        free = self._condition()
        self.queued += 1
        try:
            async with free:
                await asyncio.wait_for(free.wait_for(self._has_room),
                                       self.capacity.queue_wait)
                self._take()
        except TimeoutError as exc:
            raise Saturated from exc
        finally:
            self.queued -= 1

    async def _release(self) -> None:
        self.in_flight -= 1
        free = self._condition()
        async with free:
            free.notify()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with`; `Saturated` when there is none."""
        await self._admit()
        try:
            yield
        finally:
            await self._release()

    def busy(self) -> JSONResponse:
        """The answer to a request turned away."""
        self.turned_away += 1
        cap = self.capacity
        return JSONResponse(
            {"error": "temporarily_unavailable",
             "error_description": f"the token endpoint is at capacity ({cap.max_in_flight} "
                                  f"requests in progress, {cap.max_queued} waiting): nothing "
                                  f"was issued; try again in {cap.retry_after} s"},
            status_code=503, headers={**NO_STORE, "Retry-After": str(cap.retry_after)})
