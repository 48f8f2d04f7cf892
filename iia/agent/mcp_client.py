"""One user's MCP client: streamable HTTP to our MCP server, the user's access token in the
Authorization header of every request (and nowhere else), tools listed and called.

A 401 from the MCP server (a revoked session, an expired token) becomes `SessionEndedError`
carrying the server's reason, so the agent loop stops and the user is told why.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx2
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from iia.errors import DependencyError, IIAError

if TYPE_CHECKING:
    from anthropic.types import ToolParam

__all__ = ["McpToolClient", "McpUnavailableError", "SessionEndedError", "ToolResult"]

AUTH_UNAVAILABLE = -32002  # the server could not check the token (iia.mcp_server.auth)


class SessionEndedError(IIAError, code="session_ended", status=401):
    """The MCP server refused the user's token (401): the session was ended or the token is
    no longer valid."""


class McpUnavailableError(DependencyError, code="mcp_unavailable", dependency="mcp"):
    """The MCP server does not answer, or cannot check the access token right now."""


@dataclass(frozen=True)
class ToolResult:
    text: str
    is_error: bool


TokenSource = Callable[[], str | Awaitable[str]]


class _Bearer(httpx2.Auth):
    """The user's access token on every request. The token source may be async (a refresh
    that does I/O must not block the event loop)."""

    def __init__(self, token: TokenSource) -> None:
        self._token = token
        self.last_status: int | None = None
        self.last_challenge: str | None = None

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response,
                                                              None]:
        token = self._token()
        if inspect.isawaitable(token):
            raise TypeError("an async token source needs the async client")
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        self._seen(response)

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[
            httpx2.Request, httpx2.Response]:
        token = self._token()
        if inspect.isawaitable(token):
            token = await token
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        self._seen(response)

    def _seen(self, response: httpx2.Response) -> None:
        self.last_status = response.status_code
        self.last_challenge = response.headers.get("www-authenticate")


def _contains(group: BaseExceptionGroup, target: BaseException) -> bool:
    return any(e is target or (isinstance(e, BaseExceptionGroup) and _contains(e, target))
               for e in group.exceptions)


class McpToolClient:
    def __init__(self, url: str, token: TokenSource, *, timeout: float = 300.0) -> None:
        self.url = url
        self._auth = _Bearer(token)
        self._timeout = timeout
        self._http: httpx2.AsyncClient | None = None
        self._client: Client | None = None
        self._context: Any = None

    async def __aenter__(self) -> McpToolClient:
        self._http = httpx2.AsyncClient(auth=self._auth, timeout=self._timeout)
        self._context = Client(streamable_http_client(self.url, http_client=self._http))
        try:
            self._client = await self._context.__aenter__()
        except BaseException as exc:
            await self._http.aclose()
            raise self._translate(exc) from exc
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        try:
            if self._context is not None:
                await self._context.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # The SDK's task group wraps what the body raised; callers get our typed error.
            if exc is not None and _contains(group, exc):
                return False
            raise self._translate(group) from group
        finally:
            if self._http is not None:
                await self._http.aclose()
        return False

    def _translate(self, exc: BaseException) -> BaseException:
        errors = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
        while any(isinstance(e, BaseExceptionGroup) for e in errors):
            errors = [x for e in errors for x in (e.exceptions if isinstance(
                e, BaseExceptionGroup) else [e])]
        for error in errors:
            if isinstance(error, MCPError) and self._auth.last_status == 401:
                return SessionEndedError(error.error.message)
            if isinstance(error, MCPError) and error.code == AUTH_UNAVAILABLE:
                return McpUnavailableError(f"the MCP server at {self.url} cannot check the "
                                           f"access token: {error.error.message}")
            if isinstance(error, httpx2.HTTPError | OSError):
                return McpUnavailableError(f"the MCP server at {self.url} is unreachable "
                                           f"({error.__class__.__name__})")
        if self._auth.last_status == 401:
            return SessionEndedError("the MCP server refused the access token")
        return exc

    async def list_tools(self) -> list[ToolParam]:
        """Tool definitions as the Messages API wants them (name, description, input_schema)."""
        assert self._client is not None, "use `async with McpToolClient(...)`"
        try:
            result = await self._client.list_tools()
        except Exception as exc:
            raise self._translate(exc) from exc
        return [{"name": t.name, "description": t.description or "",
                 "input_schema": t.input_schema} for t in result.tools]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        assert self._client is not None, "use `async with McpToolClient(...)`"
        try:
            result = await self._client.call_tool(name, arguments)
        except Exception as exc:
            raise self._translate(exc) from exc
        text = "".join(getattr(c, "text", "") or json.dumps(c.model_dump())
                       for c in result.content)
        return ToolResult(text=text, is_error=bool(result.is_error))
