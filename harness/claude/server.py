"""The Anthropic Messages API (`POST /v1/messages`), served by the scripted model.

Wire-compatible with the unmodified `anthropic` SDK pointed at it by `base_url`: the same JSON
message shape, the same Server-Sent Events when `"stream": true` (`message_start`,
`content_block_start`/`_delta`/`_stop` with `text_delta` and `input_json_delta`, `message_delta`
with the stop reason and usage, `message_stop`, and a `ping`), the same error bodies
(`{"type": "error", "error": {"type", "message"}}`) and a `request-id` header. Any non-empty API
key is accepted (this is a simulation; the key is not a secret): a request without one is 401.
Every request is kept in `requests` so tests can see exactly what the model was shown.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from harness.claude.script import ScriptedModel, Turn

__all__ = ["MessagesApi"]


def _rid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _error(status: int, kind: str, message: str) -> JSONResponse:
    request_id = _rid("req_")
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message},
                         "request_id": request_id}, status_code=status,
                        headers={"request-id": request_id})


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _chunks(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _tokens(value: Any) -> int:
    return max(1, len(json.dumps(value)) // 4)


def _invalid(body: Any) -> str | None:
    """What the Messages API would refuse in this request body (its field errors), or None."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str):
        return "model: Input should be a valid string"
    if not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool) \
            or body["max_tokens"] < 1:
        return "max_tokens: Input should be a positive integer"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"messages.{index}: an object with role 'user' or 'assistant'"
        content = message.get("content")
        if not isinstance(content, str) and not (
                isinstance(content, list) and all(isinstance(b, dict) for b in content)):
            return f"messages.{index}.content: a string or a list of content blocks"
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list)
                                  and all(isinstance(t, dict) for t in tools)):
        return "tools: a list of tool objects"
    return None


class MessagesApi:
    def __init__(self, model: ScriptedModel, *, model_name: str = "claude-lab-scripted") -> None:
        self.model = model
        self.model_name = model_name
        self._lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []

    def _message(self, body: dict[str, Any], turn: Turn) -> dict[str, Any]:
        return {"id": _rid("msg_"), "type": "message", "role": "assistant",
                "model": body.get("model", self.model_name), "content": turn.blocks,
                "stop_reason": turn.stop_reason, "stop_sequence": None,
                "usage": {"input_tokens": _tokens(body.get("messages")),
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                          "output_tokens": _tokens(turn.blocks)}}

    async def messages(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        key = request.headers.get("x-api-key") or (auth[7:] if auth.lower().startswith(
            "bearer ") else "")
        if not key:
            return _error(401, "authentication_error", "no API key was sent")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid_request_error", "the body is not valid JSON")
        problem = _invalid(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        with self._lock:
            self.requests.append(body)
        turn = self.model.respond(body["messages"])
        offered = {t.get("name") for t in body.get("tools") or []}
        for block in turn.blocks:
            if block["type"] == "tool_use" and block["name"] not in offered:
                turn = Turn([{"type": "text", "text": f"I would need the tool {block['name']}, "
                              "which I was not given."}], "end_turn")
                break
        message = self._message(body, turn)
        headers = {"request-id": _rid("req_")}
        if body.get("stream"):
            return StreamingResponse(self._stream(message), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        return JSONResponse(message, headers=headers)

    async def _stream(self, message: dict[str, Any]) -> AsyncIterator[bytes]:
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {**message["usage"], "output_tokens": 1}}
        yield _sse("message_start", {"type": "message_start", "message": start})
        yield _sse("ping", {"type": "ping"})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                yield _sse("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": {"type": "text", "text": ""}})
                for piece in _chunks(block["text"], 12):
                    yield _sse("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": piece}})
            else:
                yield _sse("content_block_start", {
                    "type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": block["id"],
                                      "name": block["name"], "input": {}}})
                for piece in ["", *_chunks(json.dumps(block["input"]), 16)]:
                    yield _sse("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}})
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
        yield _sse("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": message["stop_reason"],
                                               "stop_sequence": None},
                                     "usage": {"output_tokens": message["usage"]
                                               ["output_tokens"]}})
        yield _sse("message_stop", {"type": "message_stop"})

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"]),
                                 Route("/healthz", self.health)])
