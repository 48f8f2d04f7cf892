"""The edge of every HTTP server we run: what is answered before an application sees a request.

* **Request-target hygiene** (RFC 9112 §3.2, RFC 3986 §2). A request whose path, once
  percent-decoded, carries a control character (U+0000-U+001F, U+007F) or ends in white space
  names no resource of ours. Left alone it reaches an application that may copy the path into a
  response header (scim2-server puts the request URL in `Location`), which the HTTP/1.1 writer
  (h11) then refuses to send: the client's connection is dropped with no answer at all. It is
  answered `400 invalid_request` with a sentence, before any routing.
* **A bounded body** (RFC 9110 §15.5.14). A declared `Content-Length` over `MAX_BODY_BYTES` is
  answered `413` before a byte of it is read.
* **No reset after an early answer.** An application that answers without reading the whole body
  (a 401, a 405) leaves the rest unread; the server then closes a socket with data in it and the
  kernel sends a TCP reset, which can reach the client before the answer does. The rest of the
  body (bounded as above) is read and dropped after the app has answered.
"""

from __future__ import annotations

import json
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MAX_BODY_BYTES", "EdgeGuard", "bad_request_target"]

MAX_BODY_BYTES = 1024 * 1024
_CONTROL = {*range(0x20), 0x7F}


def bad_request_target(raw_path: bytes) -> str | None:
    """Why this raw path is refused, or None when it is acceptable."""
    decoded = unquote_to_bytes(raw_path)
    if any(byte in _CONTROL for byte in decoded):
        return "the request path contains a control character"
    if decoded[-1:].isspace():
        return "the request path ends in white space"
    return None


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _answer(send: Send, status: int, error: str, description: str) -> None:
    body = json.dumps({"error": error, "error_description": description}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class EdgeGuard:
    """ASGI middleware in front of every app (`iia.net.server_config`)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
        reason = bad_request_target(raw)
        if reason is not None:
            await _answer(send, 400, "invalid_request", reason)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _answer(send, 413, "invalid_request",
                          f"the request body is {declared} bytes; at most "
                          f"{self.max_body_bytes} are accepted")
            return
        done = False

        async def tracked() -> Message:
            nonlocal done
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        await self.app(scope, tracked, send)
        drained = 0
        while not done and drained <= self.max_body_bytes:
            message = await tracked()
            drained += len(message.get("body", b""))
