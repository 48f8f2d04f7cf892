"""The MCP endpoint's HTTP edge, between bearer authentication and the SDK's streamable HTTP
transports. For each authenticated POST it reads the one JSON-RPC message and:

* **answers with the right transport.** A `tools/call` that asks for progress
  (`_meta.progressToken`) from a client that accepts `text/event-stream` goes to the SDK's
  SSE transport (`json_response=False`), whose stream carries `notifications/progress` while the
  call waits for the human (iia.mcp_server.progress). Every other message goes to the JSON
  transport (`json_response=True`): one JSON body, as before. Both are the SDK's own stateless
  `StreamableHTTPSessionManager`; a JSON answer cannot carry notifications at all, which is why
  the progress-asking call does not get one.
* **delivers cancellations.** A `notifications/cancelled` cancels the calls in flight with that
  request id under the same user and session (iia.mcp_server.cancellation), then goes on to the
  SDK (which acknowledges it `202`).
* **notices a client that goes away.** Once the body is read the edge owns the connection's
  `receive`: an `http.disconnect` before the answer cancels the calls of this exchange, and is
  passed on to the SDK (which stops streaming).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iia.mcp_server.cancellation import Exchange, InFlightCalls
from iia.mcp_server.progress import progress_token
from iia.resource_server import Caller

__all__ = ["EXCHANGE_KEY", "MAX_BODY", "McpEdge"]

EXCHANGE_KEY = "iia.exchange"  # the ASGI scope key of this request's `Exchange`
MAX_BODY = 4 * 1024 * 1024  # bytes, as the SDK's own limit


def _message(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _accepts_sse(scope: Scope) -> bool:
    accept = Headers(scope=scope).get("accept", "")
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(types & {"text/event-stream", "text/*", "*/*"})


class McpEdge:
    def __init__(self, json_app: ASGIApp, sse_app: ASGIApp, calls: InFlightCalls) -> None:
        self.json_app = json_app
        self.sse_app = sse_app
        self.calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.json_app(scope, receive, send)
            return
        body, trailing = await self._read(receive)
        if body is None:
            await Response("Request body too large", status_code=413)(scope, receive, send)
            return
        message = _message(body)
        caller = scope.get("iia.caller")
        if message is not None and isinstance(caller, Caller):
            self._cancellation(message, caller)
        exchange = Exchange()
        scope[EXCHANGE_KEY] = exchange
        app = self.sse_app if self._wants_stream(message, scope) else self.json_app
        if trailing is not None:  # the client was gone before the body ended
            exchange.disconnect()
        await self._serve(app, scope, body, receive, send, exchange)

    @staticmethod
    async def _read(receive: Receive) -> tuple[bytes | None, Message | None]:
        chunks = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return bytes(chunks), message
            chunks.extend(message.get("body", b""))
            if len(chunks) > MAX_BODY:
                return None, None
            if not message.get("more_body", False):
                return bytes(chunks), None

    def _cancellation(self, message: dict[str, Any], caller: Caller) -> None:
        if message.get("method") != "notifications/cancelled" or "id" in message:
            return
        params = message.get("params")
        request_id = params.get("requestId") if isinstance(params, dict) else None
        if isinstance(request_id, str | int) and not isinstance(request_id, bool):
            self.calls.cancel(caller, request_id)

    @staticmethod
    def _wants_stream(message: dict[str, Any] | None, scope: Scope) -> bool:
        if message is None or message.get("method") != "tools/call" or "id" not in message:
            return False
        params = message.get("params")
        return (isinstance(params, dict) and progress_token(params) is not None
                and _accepts_sse(scope))

    @staticmethod
    async def _serve(app: ASGIApp, scope: Scope, body: bytes, receive: Receive, send: Send,
                     exchange: Exchange) -> None:
        gone = anyio.Event()
        replayed = False
        if exchange.disconnected:
            gone.set()

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def watch(done: Callable[[], bool]) -> None:
            while not gone.is_set():
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not done():
                        exchange.disconnect()
                    gone.set()

        answered = False

        async def tracking_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True
            await send(message)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, lambda: answered)
            try:
                await app(scope, replay, tracking_send)
            finally:
                tg.cancel_scope.cancel()
