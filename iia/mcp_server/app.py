"""The MCP server application: tools from the catalog, served over MCP streamable HTTP
(stateless: every tool call is its own authenticated POST), Protected Resource Metadata
(RFC 9728) naming the IdP, and the enforcement chain behind each call. Pushes wait in OpenID
CIBA ping mode: the IdP calls back at `/ciba/notification` (iia.oauth.ciba_ping), the client
notification endpoint the MCP server's client is registered with.

Tool handlers run the chain in worker threads (it waits on people and on the network); the
number of calls in flight is bounded by `max_concurrent_calls`.

Long calls (iia.mcp_server.edge): a `tools/call` with a progress token is answered as an SSE
stream carrying `notifications/progress` while the push waits; every other message gets one
JSON body. A call its client cancels (`notifications/cancelled`, same user and session) or
disconnects from withdraws its pending push at the IdP, and nothing of it runs afterwards
(iia.cancellation).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.auth import ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, request_response

from iia.admin_api import AdminApiClient
from iia.cancellation import CallCancel
from iia.catalog import CATALOG, CatalogContext, Tool
from iia.enforcement import EnforcementChain, ToolOutcome
from iia.events import EventBus
from iia.hitl import ApprovalChannel, CibaApprovalChannel, ConsentCache
from iia.identity import WorkloadIdentity
from iia.mcp_server.auth import BearerAuth
from iia.mcp_server.cancellation import InFlightCalls
from iia.mcp_server.cors import CorsGate
from iia.mcp_server.edge import EXCHANGE_KEY, McpEdge
from iia.mcp_server.ops import COUNTERS_PATH, counters_endpoint
from iia.mcp_server.progress import ProgressReporter, progress_token
from iia.mcp_server.ssf_receiver import SsfPushReceiver
from iia.mcp_server.ssf_subscription import IDP_PUSH_PATH, IdpStream, origin
from iia.oauth.ciba_ping import NOTIFICATION_PATH, PingReceiver
from iia.oauth.client import AuthorizationServerClient
from iia.resource_server import Caller, UserTokenVerifier
from iia.sessions import SessionRevocations
from iia.settings import McpSettings

__all__ = ["McpServer"]

CANCELLED_BY_SDK = "the MCP request was cancelled"


def _mcp_tool(tool: Tool) -> types.Tool:
    hitl = {"none": "no approval", "session": "the user approves once per session (30 min)",
            "call": "the user approves every call"}[tool.hitl]
    hints = tool.hints  # from the catalog (iia.catalog.Tool.hints)
    return types.Tool(name=tool.name, title=hints.title,
                      description=f"{tool.description} [tier {tool.tier}: {hitl}]",
                      input_schema=dict(tool.input_schema),
                      annotations=types.ToolAnnotations(
                          title=hints.title, read_only_hint=hints.read_only,
                          destructive_hint=hints.destructive,
                          idempotent_hint=hints.idempotent,
                          open_world_hint=hints.open_world))


class McpServer:
    def __init__(self, settings: McpSettings, identity: WorkloadIdentity, events: EventBus, *,
                 revocations: SessionRevocations | None = None,
                 consents: ConsentCache | None = None,
                 approvals: ApprovalChannel | None = None,
                 max_concurrent_calls: int = 64, ciba_ping: bool = True) -> None:
        self.settings = settings
        self.identity = identity
        self.events = events
        self.revocations = revocations or SessionRevocations()
        self.consents = consents or ConsentCache(ttl=settings.consent_ttl)
        self.idp = AuthorizationServerClient(settings.issuer)
        # CIBA §10.2: the client notification endpoint this app serves (ping is the default;
        # `ciba_ping=False` polls, for a client registered in poll mode)
        self.pings = PingReceiver()
        self.approvals = approvals or CibaApprovalChannel(
            self.idp, identity, timeout=settings.approval_timeout,
            ping=self.pings if ciba_ping else None)
        self.admin = AdminApiClient(settings.admin_api_url)
        self.chain = EnforcementChain(
            identity=identity, server=self.idp, admin=self.admin, approvals=self.approvals,
            consents=self.consents, events=events, revocations=self.revocations,
            admin_api_url=settings.admin_api_url,
            context=CatalogContext(admin_group_id=settings.admin_group_id))
        self.verifier = UserTokenVerifier(
            issuer=settings.issuer, audience=settings.resource,
            jwks_uri=lambda: self.idp.endpoint("jwks_uri"), revocations=self.revocations,
            allowed_clients=settings.allowed_clients)
        self._limiter = anyio.CapacityLimiter(max_concurrent_calls)
        self.calls = InFlightCalls()
        self.ssf = SsfPushReceiver(audience=settings.resource, revocations=self.revocations,
                                   events=events)
        # the IdP's own SSF stream, subscribed when the app starts (iia.mcp_server.
        # ssf_subscription); until it exists, tool calls are refused (fail closed)
        self.idp_stream = IdpStream(idp=self.idp, identity=identity,
                                    validator=self.ssf.idp_validator, audience=settings.resource,
                                    endpoint_url=origin(settings.resource) + IDP_PUSH_PATH,
                                    events=events)
        # a session this server drops on its own (the IdP said so at token exchange) is
        # published by Antenna, as CAEP session-revoked; one a transmitter told us of is not
        # said again
        self.revocations.on_revoke(self._dropped)
        self._tools = [_mcp_tool(t) for t in CATALOG]
        self._schemas = {t.name: t.input_schema for t in self._tools}

    def cold_start(self) -> None:
        """Forget every cache a restarted process would not have: JWT-SVIDs, the Vault token,
        the IdP's signing keys, the sessions' write consents."""
        self.identity.svids.forget()
        self.identity.vault.forget_token()
        self.verifier.forget_keys()
        self.consents.clear()

    def _dropped(self, sid: str, reason: str) -> None:
        if not SsfPushReceiver.from_set():
            self.events.emit("caep:session_revoked", outcome="denied", session_id=sid,
                             reason=f"the MCP server dropped the session: {reason}",
                             duration_ms=0)

    # -- MCP handlers -----------------------------------------------------------------------

    async def _list_tools(self, ctx: ServerRequestContext[Any],
                          params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self._tools)

    async def _call_tool(self, ctx: ServerRequestContext[Any],
                         params: types.CallToolRequestParams) -> types.CallToolResult:
        request = ctx.request
        caller = request.scope.get("iia.caller") if isinstance(request, Request) else None
        if not isinstance(caller, Caller):  # unreachable behind BearerAuth; fail closed anyway
            return _result("[unauthenticated] no authenticated user for this call", error=True)
        unsubscribed = self.idp_stream.refusal()
        if unsubscribed is not None:  # no step of the chain runs without the IdP's stream
            self.events.emit("agent:tool_error", outcome="error", tool_name=params.name,
                             reason=unsubscribed, user_email=caller.email,
                             session_id=caller.sid, details={"dependency": "verify_ssf"})
            return _result(f"[temporarily_unavailable] {unsubscribed}", error=True)
        exchange = request.scope.get(EXCHANGE_KEY) if isinstance(request, Request) else None
        with self.calls.track(caller, ctx.request_id) as cancel:
            if exchange is not None:
                exchange.attach(cancel)
            reporter = None
            if progress_token(ctx.params) is not None:
                reporter = ProgressReporter(cancel, ctx.session.report_progress)
            outcome = await self._run(partial(self.chain.call, params.name,
                                              params.arguments or {}, caller, cancel=cancel),
                                      cancel, reporter)
        return _result(outcome.text(), error=not outcome.ok)

    async def _run(self, call: Callable[[], ToolOutcome], cancel: CallCancel,
                   reporter: ProgressReporter | None) -> ToolOutcome:
        """Run the chain in a worker thread. The thread cannot be interrupted, so a
        cancellation of this handler (the SDK's, on a disconnect) is handed to the chain
        through `cancel`, and the handler waits for the chain to wind down (it withdraws the
        push) before it lets the cancellation go on."""
        result: list[ToolOutcome] = []
        finished = anyio.Event()

        async def work() -> None:
            with anyio.CancelScope(shield=True):
                try:
                    result.append(await anyio.to_thread.run_sync(call, limiter=self._limiter))
                finally:
                    finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(work)
            if reporter is not None:
                tg.start_soon(reporter.run)
            try:
                await finished.wait()
            except anyio.get_cancelled_exc_class():
                cancel.cancel(CANCELLED_BY_SDK)
                raise
            tg.cancel_scope.cancel()
        return result[0]

    # -- the ASGI app -----------------------------------------------------------------------

    def app(self) -> Starlette:
        resource = self.settings.resource
        server: Server[Any] = Server("iia-mcp", version="1",
                                     on_list_tools=self._list_tools,
                                     on_call_tool=self._call_tool,
                                     # the Mcp-Param header check's schema from this table, not
                                     # by running the whole tools/list handler on every call
                                     get_tool_input_schema=self._schemas.get)
        url = urlsplit(resource)
        host = url.netloc
        local_origins = ["http://127.0.0.1:*", "http://localhost:*"]
        cors = self.settings.cors_origins
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[host, "127.0.0.1:*", "localhost:*"],
            allowed_origins=[*local_origins, *cors])
        # the SDK's two stateless transports: one JSON body per message, or (a tool call that
        # asks for progress) an SSE stream that can carry notifications/progress
        json_manager = StreamableHTTPSessionManager(
            app=server, stateless=True, json_response=True, security_settings=security)
        sse_manager = StreamableHTTPSessionManager(
            app=server, stateless=True, json_response=False, security_settings=security)
        metadata_url = str(build_resource_metadata_url(AnyHttpUrl(resource)))
        edge = McpEdge(StreamableHTTPASGIApp(json_manager), StreamableHTTPASGIApp(sse_manager),
                       self.calls)
        # CORS outside authentication: a preflight carries no token, a refused origin is
        # turned away before anything reads its request (iia.mcp_server.cors)
        endpoint = CorsGate(BearerAuth(edge, self.verifier, metadata_url), cors,
                            methods=("GET", "POST", "DELETE"), passthrough=local_origins)
        # RFC 9728 metadata with the SDK's handler, behind the same CORS rule (the SDK's own
        # route answers every origin with `*`)
        metadata = ProtectedResourceMetadataHandler(ProtectedResourceMetadata(
            resource=AnyHttpUrl(resource), authorization_servers=[AnyHttpUrl(self.settings.issuer)],
            resource_name="IIA MCP server"))
        metadata_endpoint = CorsGate(request_response(metadata.handle), cors, methods=("GET",),
                                     passthrough=local_origins, jsonrpc=False)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            # subscribe to the IdP's SSF stream first; down, start-up goes on and retries in
            # the background while calls are refused (IdpStream)
            await anyio.to_thread.run_sync(self.idp_stream.start)
            async with json_manager.run(), sse_manager.run():
                yield

        async def health(request: Request) -> JSONResponse:
            waiting = self.idp_stream.refusal()  # not subscribed to the IdP's stream yet
            if waiting is not None:
                return JSONResponse({"status": "starting", "dependency": "verify_ssf",
                                     "reason": waiting}, status_code=503)
            return JSONResponse({"status": "ok"})

        path = url.path or "/"
        return Starlette(lifespan=lifespan, routes=[
            Route(path, endpoint=endpoint, methods=["GET", "POST", "DELETE", "OPTIONS"]),
            Route(urlsplit(metadata_url).path, endpoint=metadata_endpoint,
                  methods=["GET", "OPTIONS"]),
            Route("/ssf/events", self.ssf.push, methods=["POST"]),
            Route(IDP_PUSH_PATH, self.ssf.idp_push, methods=["POST"]),
            Route(NOTIFICATION_PATH, self.pings.endpoint, methods=["POST"]),
            Route("/healthz", health),
            Route(COUNTERS_PATH, counters_endpoint(self), methods=["GET"]),
        ])

    def close(self) -> None:
        self.idp_stream.close()
        self.idp.close()
        self.admin.close()
        self.verifier.close()
        self.ssf.close()


def _result(text: str, *, error: bool) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)],
                                is_error=error)
