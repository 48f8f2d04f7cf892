"""The security console: what a security panel (the notebooks' widgets, a trainer's screen) shows,
over HTTP, so it can run in another process than the MCP server.

    GET /                             the console page: the chat page's security panel, chain
                                      view and token inspector for every user (no chat)
    GET /events?after=N&session=SID   security events after index N (wire form)
    GET /calls?session=SID&limit=L    recent tool calls: outcome, per-step timings, decoded
                                      on-behalf-of claims (never the token itself)
    GET /calls/last                   the last call's seven steps (`iia.chat.chain_view`)

Unauthenticated and for loopback only: it shows what a security panel shows (every user's
events), and nothing that could be replayed. It is a lab tool: `python -m iia.serve` serves it
only with `--console` and refuses to on a non-loopback `IIA_BIND` (`iia.serve.check_console_bind`);
the lab serves it on 127.0.0.1. Whatever it is bound to, it answers 403 to a peer that is not on
this host, and to a `Host` that is not a loopback name (a page whose domain was rebound to
127.0.0.1 would otherwise read it as its own origin).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from iia.chat.chain_view import chain_view
from iia.enforcement import EnforcementChain
from iia.events import EventBus

__all__ = ["console_app"]

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_PAGE = Path(__file__).parent / "chat" / "page.html"


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _not_loopback(scope: Scope) -> str | None:
    """Why this request is not a loopback one, or None."""
    client = scope.get("client")
    if client is None or not _loopback(client[0]):
        return f"the request came from {client[0] if client else 'an unknown peer'}"
    host = Headers(scope=scope).get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if name.lower() not in _LOOPBACK_NAMES:
        return f"it was addressed to {host[:100]!r}"
    return None


class _LoopbackOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        why = _not_loopback(scope) if scope["type"] == "http" else None
        if why is not None:
            await JSONResponse({"error": "forbidden", "error_description":
                                f"The security console answers loopback requests only; {why}."},
                               status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _count(request: Request, name: str, default: int, most: int | None = None
           ) -> int | JSONResponse:
    """A non-negative whole-number query parameter, or the 400 that says what is wrong."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or (most is not None and int(raw) > most):
        bound = f" no larger than {most}" if most is not None else ""
        return JSONResponse({"error": "invalid_request",
                             "error_description": f"{name} must be a whole number{bound}, "
                                                  f"not {raw[:40]!r}"}, status_code=400)
    return int(raw)


def console_app(events: EventBus, chain: EnforcementChain) -> Starlette:
    async def list_events(request: Request) -> JSONResponse:
        after = _count(request, "after", 0)
        if isinstance(after, JSONResponse):
            return after
        session = request.query_params.get("session")
        items, cursor = events.since(after)
        out = [e.to_dict() for e in items if session is None or e.session_id == session]
        return JSONResponse({"next": cursor, "events": out})

    async def calls(request: Request) -> JSONResponse:
        session = request.query_params.get("session")
        limit = _count(request, "limit", 20, most=1000)
        if isinstance(limit, JSONResponse):
            return limit
        items = [o.public() for sid, o in list(chain.history) if session in (None, sid)]
        return JSONResponse(items[-limit:])

    async def last_call(request: Request) -> JSONResponse:
        history = list(chain.history)
        return JSONResponse({"call": chain_view(history[-1][1].public()) if history else None})

    async def page(request: Request) -> HTMLResponse:
        """The chat page in console mode: its panel, chain view and inspector, no chat."""
        return HTMLResponse(_PAGE.read_text().replace("<body>", '<body data-mode="console">', 1))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(middleware=[Middleware(_LoopbackOnly)],
                     routes=[Route("/", page), Route("/events", list_events),
                             Route("/calls", calls), Route("/calls/last", last_call),
                             Route("/healthz", health)])
