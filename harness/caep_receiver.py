"""A CAEP receiver (the SSF receiving side of some other system in the enterprise): accepts SETs
pushed per RFC 8935, validates them with `iia.ssf.SetValidator` (the one validator every receiver
in the lab uses), answers RFC 8935 §2.3 errors (a `jti` accepted before is refused, so each SET is
stored once), and keeps what it received for notebooks and tests (`GET /received`).

Each `ReceivedEvent` also keeps the SET exactly as it came over the wire (`token`), so a test can
check the token the transmitter actually sent with a JOSE library of its own. It lives in memory
only: it is left out of the record's repr, out of `GET /received`, and out of every log line.

Bounded (issue #20): the newest `capacity` SETs are kept (default 2000,
`IIA_CAEP_RECEIVER_KEEP_SETS`), and the newest 1000 refusal codes; a SET seen again after it was
forgotten is still recognised by the validator's replay memory (iia.ssf, 10,000 jtis).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from harness.bounded import BoundedLog, capacity_from_env
from iia.ssf import AlreadyReceived, SetRefused, SetValidator, Transmitter

__all__ = ["KEEP_SETS", "CaepReceiver", "ReceivedEvent"]

KEEP_SETS = 2000
KEEP_REFUSALS = 1000


@dataclass(frozen=True)
class ReceivedEvent:
    jti: str
    event_type: str
    claims: Mapping[str, Any]  # what SetValidator accepted (iia.ssf.SetClaims); read-only
    received_at: float
    token: str = field(default="", repr=False, compare=False)  # the SET as sent; never shown


class CaepReceiver:
    def __init__(self, audience: str, capacity: int | None = None) -> None:
        self.audience = audience
        self.capacity = capacity or capacity_from_env("IIA_CAEP_RECEIVER_KEEP_SETS", KEEP_SETS)
        self._lock = threading.Lock()
        self.validator = SetValidator(audience)
        self._events: dict[str, ReceivedEvent] = {}
        self.deliveries = 0  # pushes acknowledged
        self.refusals: BoundedLog[str] = BoundedLog(KEEP_REFUSALS)

    def subscribe(self, issuer: str, jwks_uri: str, authorization: str | None = None) -> None:
        self.validator.trust(Transmitter(issuer, jwks_uri, authorization))

    def kept(self) -> int:
        with self._lock:
            return len(self._events)

    def events(self, event_type: str | None = None) -> list[ReceivedEvent]:
        with self._lock:
            items = sorted(self._events.values(), key=lambda e: e.received_at)
        return [e for e in items if event_type is None or e.event_type == event_type]

    async def push(self, request: Request) -> Response:
        try:
            claims, token = await self.validator.read(request)
        except AlreadyReceived as exc:
            with self._lock:
                self.deliveries += 1  # acknowledged again, stored once
            return exc.response()
        except SetRefused as exc:
            with self._lock:
                self.refusals.append(exc.err)
            return exc.response()
        jti = str(claims["jti"])
        event_type = next(iter(claims["events"]))
        with self._lock:
            self.deliveries += 1
            self._events.setdefault(jti, ReceivedEvent(jti, event_type, claims, time.time(),
                                                       token=token))
            while len(self._events) > self.capacity:  # dicts keep insertion order: oldest
                del self._events[next(iter(self._events))]
        return Response(status_code=202)

    async def received(self, request: Request) -> JSONResponse:
        kind = request.query_params.get("type")
        return JSONResponse([{"jti": e.jti, "type": e.event_type, "received_at": e.received_at,
                              "claims": e.claims} for e in self.events(kind)])

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/events", self.push, methods=["POST"]),
                                 Route("/received", self.received),
                                 Route("/healthz", self.health)])
