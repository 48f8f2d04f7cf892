"""The security console: what a security panel (the notebooks' widgets, a trainer's screen) shows,
over HTTP, so it can run in another process than the MCP server.

    GET /events?after=N&session=SID   security events after index N (wire form)
    GET /calls?session=SID&limit=L    recent tool calls: outcome, per-step timings, decoded
                                      on-behalf-of claims (never the token itself)

Unauthenticated and meant for loopback (bind it to 127.0.0.1): it shows what a security panel
shows, and nothing that could be replayed.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iia.enforcement import EnforcementChain
from iia.events import EventBus

__all__ = ["console_app"]


def console_app(events: EventBus, chain: EnforcementChain) -> Starlette:
    async def list_events(request: Request) -> JSONResponse:
        after = int(request.query_params.get("after", "0"))
        session = request.query_params.get("session")
        items, cursor = events.since(after)
        out = [e.to_dict() for e in items if session is None or e.session_id == session]
        return JSONResponse({"next": cursor, "events": out})

    async def calls(request: Request) -> JSONResponse:
        session = request.query_params.get("session")
        limit = int(request.query_params.get("limit", "20"))
        items = [o.public() for sid, o in list(chain.history) if session in (None, sid)]
        return JSONResponse(items[-limit:])

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/events", list_events), Route("/calls", calls),
                             Route("/healthz", health)])
