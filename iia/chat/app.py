"""The chat route: the user's browser talks only to this app; this app signs the user in at the
IdP (authorization code + PKCE), keeps their tokens server-side, runs the agent loop (Claude +
our MCP server) and streams the answer, and streams security events.

    GET  /                 the chat page
    GET  /auth/login       -> IdP authorize (code + PKCE S256, resource = the MCP server)
    GET  /auth/callback    code -> tokens (kept here); sets an HttpOnly, SameSite=Lax cookie
                           (Secure when served over https)
    POST /auth/logout      ends the IdP session, forgets the tokens, clears the cookie
    GET  /me               who is signed in (and whether they may watch everyone's events)
    GET  /conversation     this session's conversation as the page showed it (user lines, tool
                           cards, answers, in order), so a reload shows it again
    GET  /calls/last       this session's last tool call through the enforcement chain: the seven
                           steps with their milliseconds, the step that stopped it, the decoded
                           on-behalf-of claims (never a token); {"call": null} before the first
    POST /chat             {"message": ...} -> SSE: text deltas, tool cards (`tool`), approval
                           waits (`approval`: a push is pending, how long it stays valid), done
    GET  /events?scope=    SSE of security events, `mine` (this session) or `all` (tenant
                           administrators only: members of IIA_ADMIN_GROUP_ID per the IdP's
                           `groups` claim; others get 403)
    GET  /events/history?scope=&before=   earlier events from the durable audit trail, a page
                           at a time (iia/chat/history.py): `mine` = the person's own, `all` for
                           tenant administrators only (others get 403)

Every request that could change something (any method but GET, HEAD, OPTIONS) must come from the
chat page's own origin: a browser's `Origin` must be one of IIA_CHAT_ORIGINS (default: the origin
the browser addressed, e.g. http://127.0.0.1:PORT or http://localhost:PORT) and its
`Sec-Fetch-Site` `same-origin` (or `none`); otherwise 403 and nothing runs. A request with
neither header is not from a browser's page (browsers send `Origin` on every POST and fetch
metadata on every request), so a non-browser client such as the notebooks' LabClient may post.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx
import jwt
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from iia.agent import AgentLoop, McpToolClient, ModelClient
from iia.agent.loop import ToolCall
from iia.agent.mcp_client import McpUnavailableError, SessionEndedError
from iia.chat.cards import card
from iia.chat.chain_view import chain_view
from iia.chat.history import HistoryRequestError, history, parse_request
from iia.chat.sessions import ChatSession, ChatSessionStore
from iia.errors import ConfigurationError
from iia.events import EventBus, SecurityEvent
from iia.oauth.client import AuthorizationServerClient
from iia.settings import AgentSettings, ChatSettings, web_origin

if TYPE_CHECKING:
    from anthropic.types import MessageParam

    from iia.enforcement import EnforcementChain

__all__ = ["COOKIE", "ChatApp"]

COOKIE = "iia_session"
LOGIN_COOKIE = "iia_login"  # binds a sign-in's state to the browser that started it
PENDING_TTL = 600.0
# the events that tell the person a call waits for them on their phone, and how it ended
APPROVAL_EVENTS = frozenset({"agent:hitl_required", "agent:push_pending", "agent:hitl_approved",
                             "agent:hitl_denied", "agent:hitl_expired", "agent:hitl_cached"})
# how an approval ended: kept in the transcript (a wait for the phone is not)
REPLAYED_APPROVALS = APPROVAL_EVENTS - {"agent:hitl_required", "agent:push_pending"}


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()
    return verifier, challenge


class ChatApp:
    def __init__(self, settings: ChatSettings, agent: AgentSettings, events: EventBus, *,
                 model: Callable[[], ModelClient], chain: EnforcementChain | None = None,
                 audit_dir: Path | None = None) -> None:
        """`model` makes the model client when the first chat needs it; the client loads the
        SDK on its first turn, off the event loop (`iia.agent.ModelClient`). `chain` is the MCP
        server's enforcement chain when it runs in this process (the chain view and token
        inspector read its recent outcomes: timings and decoded claims, never a token).
        `audit_dir` holds the durable audit trail the panel's history reads (`iia.audit_trail`)."""
        self.chain = chain
        self.audit_dir = audit_dir
        self.settings = settings
        self.agent_settings = agent
        self.events = events
        self._model_factory = model
        self._loop: AgentLoop | None = None
        self._http = httpx.Client(timeout=10)
        self._idp = AuthorizationServerClient(settings.issuer, http=self._http)
        self.sessions = ChatSessionStore(token_endpoint=lambda: self.metadata["token_endpoint"],
                                         client_id=settings.client_id, ttl=settings.session_ttl,
                                         http=self._http)
        self._pending: dict[str, tuple[str, str, float]] = {}  # state -> verifier, nonce, when
        self._jwks: jwt.PyJWKClient | None = None
        self._login_binding: dict[str, str] = {}  # state -> the login cookie's value
        self._closing: asyncio.Event | None = None  # set on close: open event streams end

    @property
    def loop(self) -> AgentLoop:
        if self._loop is None:
            self._loop = AgentLoop(self.agent_settings, self._model_factory())
        return self._loop

    @property
    def metadata(self) -> dict[str, Any]:
        return self._idp.metadata

    def _session(self, request: Request) -> ChatSession | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    # -- sign in / out ----------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        meta = await run_in_threadpool(lambda: self.metadata)
        verifier, challenge = _pkce()
        state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        now = time.time()
        self._pending = {k: v for k, v in self._pending.items() if now - v[2] < PENDING_TTL}
        self._login_binding = {k: v for k, v in self._login_binding.items() if k in self._pending}
        self._pending[state] = (verifier, nonce, now)
        self._login_binding[state] = binding = secrets.token_urlsafe(24)
        params = {"response_type": "code", "client_id": self.settings.client_id,
                  "redirect_uri": str(request.url_for("callback")), "scope": "openid email profile",
                  "state": state, "nonce": nonce, "code_challenge": challenge,
                  "code_challenge_method": "S256", "resource": self.agent_settings.mcp_url}
        if request.query_params.get("login_hint"):
            params["login_hint"] = request.query_params["login_hint"]
        out = RedirectResponse(f"{meta['authorization_endpoint']}?{urlencode(params)}", 302)
        _hardened_cookie(out, request, LOGIN_COOKIE, binding, path="/auth", max_age=PENDING_TTL)
        return out

    async def callback(self, request: Request) -> Response:
        q = request.query_params
        state = q.get("state", "")
        binding = self._login_binding.pop(state, None)
        pending = self._pending.pop(state, None)
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if pending is None or binding is None or not secrets.compare_digest(binding, cookie):
            # unknown state, or a callback this browser did not start (login CSRF)
            return _failed("Unknown or expired sign-in; start again.")
        if q.get("error"):
            return _failed(f"The identity provider said: {q['error']}")
        if q.get("iss") != self.settings.issuer:
            return _failed("The response does not name the expected issuer (RFC 9207).")
        verifier, nonce, _ = pending
        form = {"grant_type": "authorization_code", "code": q.get("code", ""),
                "redirect_uri": str(request.url_for("callback")),
                "client_id": self.settings.client_id, "code_verifier": verifier}
        response = await run_in_threadpool(self._http.post, self.metadata["token_endpoint"],
                                           data=form)
        if response.status_code != 200:
            return _failed("The identity provider refused the code.")
        tokens = response.json()
        problem = await run_in_threadpool(self._check_id_token, tokens.get("id_token", ""), nonce)
        if problem:
            return _failed(problem)
        session = self.sessions.create(tokens)
        out = RedirectResponse("/", 302)
        out.delete_cookie(LOGIN_COOKIE, path="/auth")
        _hardened_cookie(out, request, COOKIE, session.id, path="/",
                         max_age=self.settings.session_ttl)
        return out

    def _check_id_token(self, id_token: str, nonce: str) -> str | None:
        """OpenID Connect Core §3.1.3.7: signature (RS256, the registration default, or ES256:
        asymmetric only, the key by its kid in the IdP's JWKS), issuer, audience, expiry,
        nonce."""
        try:
            if self._jwks is None:
                self._jwks = jwt.PyJWKClient(self.metadata["jwks_uri"], cache_keys=True)
            key = self._jwks.get_signing_key_from_jwt(id_token).key
            claims = jwt.decode(id_token, key, algorithms=["RS256", "ES256"],
                                issuer=self.settings.issuer,
                                audience=self.settings.client_id, leeway=5)
        except jwt.PyJWTError as exc:
            return f"the ID token is not valid ({exc.__class__.__name__})"
        if claims.get("nonce") != nonce:
            return "the ID token does not carry this sign-in's nonce"
        return None

    async def logout(self, request: Request) -> Response:
        session = self._session(request)
        if session is not None:
            self.sessions.remove(session.id)
            await run_in_threadpool(self._end_at_idp, session)
        out = RedirectResponse("/", 303)
        out.delete_cookie(COOKIE, path="/")
        return out

    def _end_at_idp(self, session: ChatSession) -> None:
        meta = self.metadata
        if session.refresh_token:
            self._http.post(meta["revocation_endpoint"], data={
                "token": session.refresh_token, "client_id": self.settings.client_id})
        if session.id_token:
            self._http.get(meta["end_session_endpoint"],
                           params={"id_token_hint": session.id_token})

    async def me(self, request: Request) -> JSONResponse:
        session = self._session(request)
        if session is None:
            return JSONResponse({"signed_in": False})
        return JSONResponse({"signed_in": True, "email": session.email,
                             "session_id": session.sid, "ended": session.ended,
                             "admin": self._is_admin(session)})

    async def conversation(self, request: Request) -> JSONResponse:
        """This session's conversation as the page showed it, in order (`ChatSession.record`):
        a reloaded page shows it again."""
        session = self._session(request)
        if session is None:
            return JSONResponse({"error": "not_signed_in", "error_description": "sign in first"},
                                status_code=401)
        return JSONResponse({"entries": list(session.transcript)})

    async def last_call(self, request: Request) -> JSONResponse:
        session = self._session(request)
        if session is None:
            return JSONResponse({"error": "not_signed_in", "error_description": "sign in first"},
                                status_code=401)
        history = list(self.chain.history) if self.chain is not None else []
        mine = [outcome for sid, outcome in history if sid == session.sid]
        if not mine:
            return JSONResponse({"call": None})
        view = chain_view(mine[-1].public())
        return JSONResponse({"call": view})

    # -- chat -------------------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return JSONResponse({"error": "not_signed_in", "error_description": "sign in first"},
                                status_code=401)
        if not request.headers.get("content-type", "").startswith("application/json"):
            return JSONResponse({"error": "invalid_request",
                                 "error_description": "send JSON"}, status_code=415)
        body = await request.json()
        message = str(body.get("message", "")).strip() if isinstance(body, dict) else ""
        if not message or len(message) > 4000:
            return JSONResponse({"error": "invalid_request",
                                 "error_description": "message must be 1-4000 characters"},
                                status_code=400)
        if session.ended:
            return JSONResponse({"error": "session_ended", "error_description": session.ended},
                                status_code=401)
        return EventSourceResponse(self._answer(session, message), ping=15)

    async def _answer(self, session: ChatSession, message: str) -> AsyncIterator[dict[str, str]]:
        queue: asyncio.Queue[dict[str, str] | None] = asyncio.Queue()

        def emit(event: str, data: dict[str, Any]) -> None:
            """Stream one event to the page and keep it in the session's transcript (a reload
            shows it again), except the waits for a phone, which a reload cannot resume."""
            if event != "approval" or data.get("type") in REPLAYED_APPROVALS:
                session.record(event, data)
            queue.put_nowait({"event": event, "data": json.dumps(data)})

        session.record("user", {"text": message})

        async def on_text(text: str) -> None:
            emit("text", {"delta": text})

        started: dict[str, float] = {}

        async def on_tool(phase: str, call: ToolCall) -> None:
            ms = None
            if phase == "start":
                started[call["id"]] = time.perf_counter()
            else:
                result = call.get("result", "")
                if not call.get("is_error"):
                    session.people.learn(result)
                if call["id"] in started:
                    ms = (time.perf_counter() - started.pop(call["id"])) * 1000
            shown = card(phase, call["name"], call["input"], session.people,
                         result=call.get("result"), is_error=bool(call.get("is_error")), ms=ms)
            emit("tool", {"id": call["id"], **shown})

        loop = asyncio.get_running_loop()

        def on_event(event: SecurityEvent) -> None:  # any thread: the chain runs in a worker
            if event.type in APPROVAL_EVENTS and event.session_id == session.sid:
                wire = event.to_dict()
                keys = ("type", "outcome", "reason", "toolName", "tier", "expiresInS",
                        "durationMs")
                shown: dict[str, Any] = {k: wire[k] for k in keys if k in wire}
                loop.call_soon_threadsafe(emit, "approval", shown)

        unsubscribe = self.events.subscribe(on_event)

        async def run() -> None:
            history: list[MessageParam] = [*session.messages,
                                           {"role": "user", "content": message}]
            try:
                async def token() -> str:  # a refresh does I/O: off the event loop
                    return await run_in_threadpool(self.sessions.token, session)

                async with McpToolClient(self.agent_settings.mcp_url, token) as mcp:
                    result = await self.loop.run(history, mcp, on_text=on_text,
                                                 on_tool=on_tool)
                if result.stop == "session_ended":
                    session.ended = result.reason
                    result.text = _ended_text(result.reason)
                # keep a conversation the next turn can continue: the full exchange when the
                # model finished, else the question and what the user was told
                session.messages = result.messages if result.stop in ("end_turn", "max_tokens") \
                    else [*history, {"role": "assistant", "content": result.text}]
                emit("done", {"stop": result.stop, "text": result.text, "reason": result.reason})
            except SessionEndedError as exc:
                session.ended = exc.description
                emit("done", {"stop": "session_ended", "reason": exc.description,
                              "text": _ended_text(exc.description)})
            except McpUnavailableError as exc:
                emit("error", dict(exc.to_dict()))
            except Exception as exc:
                emit("error", {"error": "server_error",
                               "error_description": f"the agent failed ({exc.__class__.__name__})"})
            finally:
                unsubscribe()
                await queue.put(None)

        task = asyncio.create_task(run())
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            unsubscribe()
            if not task.done():
                task.cancel()

    # -- security events --------------------------------------------------------------------

    async def event_stream(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return JSONResponse({"error": "not_signed_in"}, status_code=401)
        scope = request.query_params.get("scope", "mine")
        refused = await self._scope_refused(session, scope, "/events")
        if refused is not None:
            return refused
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[SecurityEvent] = asyncio.Queue(maxsize=1000)

        def wanted(event: SecurityEvent) -> bool:
            return scope == "all" or event.session_id == session.sid or (
                event.session_id is None and event.user_email == session.email)

        def deliver(event: SecurityEvent) -> None:
            if wanted(event):
                loop.call_soon_threadsafe(_put_nowait, queue, event)

        backlog = [e for e in self.events.recent(200) if wanted(e)]
        unsubscribe = self.events.subscribe(deliver)

        if self._closing is None:
            self._closing = asyncio.Event()
        closing = self._closing

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                for event in backlog:
                    yield {"event": "security", "data": json.dumps(event.to_dict())}
                while not closing.is_set():
                    getter = asyncio.ensure_future(queue.get())
                    closer = asyncio.ensure_future(closing.wait())
                    done, _ = await asyncio.wait({getter, closer},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    for pending in (getter, closer):
                        if pending not in done:
                            pending.cancel()
                    if getter in done:
                        event = getter.result()
                        yield {"event": "security", "data": json.dumps(event.to_dict())}
            finally:
                unsubscribe()

        return EventSourceResponse(stream(), ping=15)

    async def _scope_refused(self, session: ChatSession, scope: str,
                             path: str) -> Response | None:
        """`mine` for anyone signed in; `all` (everyone's events) for tenant administrators."""
        if scope not in ("mine", "all"):
            return JSONResponse({"error": "invalid_request",
                                 "error_description": "scope is mine or all"}, status_code=400)
        if scope == "all":
            await run_in_threadpool(self.sessions.token, session)  # groups as of now-ish
            if not self._is_admin(session):
                return JSONResponse({"error": "forbidden", "error_description":
                                     "Only tenant administrators may watch everyone's security "
                                     f"events; your own are at {path}?scope=mine."},
                                    status_code=403)
        return None

    async def event_history(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return JSONResponse({"error": "not_signed_in"}, status_code=401)
        scope = request.query_params.get("scope", "mine")
        refused = await self._scope_refused(session, scope, "/events/history")
        if refused is not None:
            return refused
        try:
            before, limit = parse_request(request.query_params.get("before"),
                                          request.query_params.get("limit"))
        except HistoryRequestError as exc:
            return JSONResponse({"error": "invalid_request", "error_description": str(exc)},
                                status_code=400)
        page = await run_in_threadpool(history, self.audit_dir, email=session.email,
                                       everyone=scope == "all", before=before, limit=limit)
        return JSONResponse(page)

    def _is_admin(self, session: ChatSession) -> bool:
        """A tenant administrator: a member of the configured group, as the IdP asserts it."""
        group = self.settings.admin_group_id
        return bool(group) and group in session.groups

    # -- same origin ------------------------------------------------------------------------

    def cross_origin(self, scope: Scope) -> str | None:
        """Why a state-changing request is refused as cross-origin, or None when it is not."""
        headers = Headers(scope=scope)
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"Sec-Fetch-Site: {site[:40]}"
        origin = headers.get("origin")
        if origin is None:
            return None  # no browser page sent this (see the module's docstring)
        allowed = self.settings.origins or (_addressed_origin(scope, headers),)
        try:
            if web_origin("Origin", origin) in allowed:
                return None
        except ConfigurationError:
            pass  # "null", or not an origin at all
        return f"Origin {origin[:100]}"

    # -- page -------------------------------------------------------------------------------

    async def page(self, request: Request) -> HTMLResponse:
        return HTMLResponse((Path(__file__).parent / "page.html").read_text())

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    def app(self) -> Starlette:
        return Starlette(middleware=[Middleware(_SameOriginWrites, chat=self)], routes=[
            Route("/", self.page),
            Route("/auth/login", self.login),
            Route("/auth/callback", self.callback, name="callback"),
            Route("/auth/logout", self.logout, methods=["POST"]),
            Route("/me", self.me),
            Route("/calls/last", self.last_call),
            Route("/conversation", self.conversation),
            Route("/chat", self.chat, methods=["POST"]),
            Route("/events", self.event_stream),
            Route("/events/history", self.event_history),
            Route("/healthz", self.health),
        ])

    async def aclose(self) -> None:
        """Close the model client (its connections belong to the serving event loop) and the
        HTTP client."""
        if self._closing is not None:
            self._closing.set()
            await asyncio.sleep(0.05)  # let open event streams finish their response
        if self._loop is not None:
            await self._loop.model.close()
        self._http.close()


def _hardened_cookie(out: Response, request: Request, name: str, value: str, *, path: str,
                     max_age: float) -> None:
    """Every cookie the chat route sets: HttpOnly, SameSite=Lax, and Secure whenever the browser
    reached us over https (directly, or through a TLS proxy on this host whose
    `X-Forwarded-Proto` uvicorn trusts)."""
    out.set_cookie(name, value, httponly=True, samesite="lax",
                   secure=request.url.scheme == "https", path=path, max_age=int(max_age))


def _ended_text(reason: str | None) -> str:
    """What the person reads when their session was killed: why, once."""
    why = (reason or "").strip()
    for prefix in ("the session was ended: ", "the session was ended"):
        if why.lower().startswith(prefix):
            why = why[len(prefix):].strip()
    return (f"Your session was ended: {why}. Sign in again." if why
            else "Your session was ended. Sign in again.")


def _failed(message: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><h1>Sign-in failed</h1><p>{html.escape(message)}</p>"
                        "<p><a href='/auth/login'>Sign in again</a></p>", 400)


def _addressed_origin(scope: Scope, headers: Headers) -> str | None:
    """The origin the browser addressed: this request's scheme and its Host header."""
    try:
        return web_origin("Host", f"{scope.get('scheme', 'http')}://{headers.get('host', '')}")
    except ConfigurationError:
        return None


class _SameOriginWrites:
    """Refuses, with 403 and before any route runs, a request that may change something (every
    method but GET, HEAD and OPTIONS) sent by a page of another origin (`ChatApp.cross_origin`).
    The session cookie is SameSite=Lax, which stops other sites' POSTs but not those of another
    port of this host (the same site): this check does."""

    SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

    def __init__(self, app: ASGIApp, chat: ChatApp) -> None:
        self.app = app
        self.chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in self.SAFE:
            why = self.chat.cross_origin(scope)
            if why is not None:
                refusal = JSONResponse({"error": "forbidden", "error_description":
                                        f"This request came from another site ({why}); the chat "
                                        "accepts changes only from its own page."},
                                       status_code=403)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _put_nowait(queue: asyncio.Queue[SecurityEvent], event: SecurityEvent) -> None:
    if not queue.full():
        queue.put_nowait(event)
