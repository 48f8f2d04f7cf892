"""A CAEP receiver (the SSF receiving side of some other system in the enterprise): accepts SETs
pushed per RFC 8935, validates them (signature via the transmitter's JWKS, iss, aud, typ, jti;
`harness.ssf.SetValidator`), answers RFC 8935 §2.3 errors, acknowledges a duplicate `jti` again
while storing it once, and keeps what it received for notebooks and tests (`GET /received`).

Each `ReceivedEvent` also keeps the SET exactly as it came over the wire (`token`), so a test can
check the token the transmitter actually sent with a JOSE library of its own. It lives in memory
only: it is left out of the record's repr, out of `GET /received`, and out of every log line.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from harness.ssf.set_validation import PushError, SetValidator, read_push

__all__ = ["CaepReceiver", "ReceivedEvent"]


@dataclass(frozen=True)
class ReceivedEvent:
    jti: str
    event_type: str
    claims: dict[str, Any]
    received_at: float
    token: str = field(default="", repr=False, compare=False)  # the SET as sent; never shown


class CaepReceiver:
    def __init__(self, audience: str) -> None:
        self.audience = audience
        self._lock = threading.Lock()
        self._validator: SetValidator | None = None
        self._authorization: str | None = None
        self._events: dict[str, ReceivedEvent] = {}
        self.deliveries = 0  # pushes acknowledged, duplicates included
        self.refusals: list[str] = []

    def subscribe(self, issuer: str, jwks_uri: str, authorization: str | None = None) -> None:
        self._validator = SetValidator(issuer=issuer, audience=self.audience, jwks_uri=jwks_uri)
        self._authorization = authorization

    def events(self, event_type: str | None = None) -> list[ReceivedEvent]:
        with self._lock:
            items = sorted(self._events.values(), key=lambda e: e.received_at)
        return [e for e in items if event_type is None or e.event_type == event_type]

    async def push(self, request: Request) -> Response:
        try:
            claims = await read_push(request, self._validator, self._authorization)
        except PushError as exc:
            with self._lock:
                self.refusals.append(exc.err)
            return exc.response()
        token = (await request.body()).decode().strip()  # read_push read it; Starlette cached it
        jti = str(claims["jti"])
        event_type = next(iter(claims["events"]))
        with self._lock:
            self.deliveries += 1
            self._events.setdefault(jti, ReceivedEvent(jti, event_type, claims, time.time(),
                                                       token=token))
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
