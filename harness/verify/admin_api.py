"""The Verify tenant's admin API (`{verify}/v2.0`): SCIM 2.0 Users and Groups (RFC 7643, RFC
7644) served by scim2-server, Verify-style JSON for applications and access policies, and
`DELETE /Users/{id}/sessions`.

Every request but the discovery endpoints (RFC 7644 §4: `/ServiceProviderConfig`, `/ResourceTypes`,
`/Schemas` and the resources under them, which are schema metadata and hold no tenant data) must
carry an on-behalf-of token from token exchange whose one `authorization_details` object covers
exactly this request:

1. `Authorization: Bearer` (RFC 6750 §2.1), a token this tenant signed, unexpired, not revoked,
   its session alive; else 401 with `WWW-Authenticate` (RFC 6750 §3);
2. an `act` claim (RFC 8693 §4.1): a user's own token is refused (403, no passthrough);
3. `aud` is this API (RFC 8707, RFC 9068 §4); else 401;
4. its `jti` was never used here: OBO tokens are single-use at the admin API; else 401;
5. the object covers this method, path and body (`harness.verify.coverage`): for a write, the
   body carries exactly the attributes (create) or operations (PATCH) the object names; else
   403 `insufficient_scope`.

The token is spent at step 4, atomically, once steps 1-3 show it is a live on-behalf-of token
for this API, and before step 5 judges the request: a request its object does not cover burns
it too (whoever holds a token gets one try, not a probe of the coverage check), and it can never
perform two requests. Every error is a SCIM
error body (RFC 7644 §3.12, `admin_errors`); every decision goes to the audit trail and to
`requests`. The SCIM side is `scim_service.AdminScimService`; the JSON side `verify_endpoints`.
The server's loop reads each request and writes its response; the gate and the SCIM work run on
`admin_worker`'s thread, so the tenant's other endpoints are not held up behind them.

A lab fault (`lose_answers`): the next requests are executed as usual (the directory changes,
the request log and the audit trail record what was done) and then their answer is lost on the
way back, replaced by a gateway's `502 Bad Gateway`, as when a proxy in front of the API drops
the answer of a request it already forwarded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from scim2_models import SCIMException
from scim2_server.applications.asgi import ASGIApplication, Receive, Scope, Send
from scim2_server.memory import AsyncInMemoryStorage
from scim2_server.requests import ScimRequest
from scim2_server.responses import ScimResponse
from starlette.types import ASGIApp

from harness.bounded import BoundedLog, capacity_from_env
from harness.expiring import ExpiringSet
from harness.verify.admin_errors import InvalidToken, MissingToken, NoPassthrough, NotCovered
from harness.verify.admin_worker import admin_worker
from harness.verify.audit import AuditTrail, Decision
from harness.verify.coverage import Coverage, Grant, RequestLine
from harness.verify.directory import Directory
from harness.verify.rar import RarRegistry
from harness.verify.scim_service import AdminScimService
from harness.verify.sessions import SessionStore
from harness.verify.tokens import TokenInvalid, TokenService
from harness.verify.verify_endpoints import VerifyEndpoints

__all__ = ["AdminApi", "AdminRequestRecord", "InvalidToken", "MissingToken", "NoPassthrough",
           "NotCovered"]

KEEP_REQUESTS = 5000  # the request log's bound (IIA_VERIFY_KEEP_REQUESTS)
_BEARER = re.compile(r"^Bearer +([A-Za-z0-9\-._~+/]+=*) *$", re.IGNORECASE)
# RFC 7644 §4 discovery: what the service provider supports and the schemas it serves.
PUBLIC_PATHS = frozenset({"/ServiceProviderConfig", "/ResourceTypes", "/Schemas"})
_ENDS_SESSIONS = {"verify_deactivate_user": "user deactivated through the admin API",
                  "verify_delete_user": "user deleted through the admin API"}


def _is_public(path: str) -> bool:
    """A discovery endpoint or one resource under it (`/Schemas/<urn>`), any method:
    scim2-server answers 405 to anything but GET there, and 404 to a deeper path."""
    segments = path.strip("/").split("/")
    return "/" + segments[0] in PUBLIC_PATHS and len(segments) <= 2 \
        and not {".", ".."} & set(segments)


# -- records ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdminRequestRecord:
    """One request the admin API saw, and what it decided."""

    method: str
    path: str
    status: int
    outcome: str  # allowed | refused
    rar_type: str | None = None
    reason: str = ""
    user: str | None = None
    jti: str | None = None


@dataclass
class _Admission:
    """What the gate learnt about one request (carried as `ScimRequest.subject`)."""

    public: bool = False
    static: bool = False
    claims: dict[str, Any] | None = None
    grant: Grant | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def first_object(self) -> dict[str, Any]:
        details = (self.claims or {}).get("authorization_details")
        first = details[0] if isinstance(details, list) and details else None
        return first if isinstance(first, dict) else {}


# -- the ASGI application --------------------------------------------------------------------

class _AdminApplication(ASGIApplication):
    def __init__(self, api: AdminApi) -> None:
        super().__init__(AsyncInMemoryStorage(api.directory.storage), api.directory.provider,
                         AdminScimService(api.directory))
        self.api = api

    def get_base_url(self, scope: Scope) -> str:  # type: ignore[override]
        """The API root as clients see it (scim2-server would append `/v2`), so that
        `meta.location` and `Location` are URLs under the `/v2.0` mount."""
        return self.api.base_url

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """scim2-server's ASGI entry point, with `serve` and the encoding of its answer on the
        admin worker's thread (the same messages `send_response` sends)."""
        if scope["type"] == "lifespan":
            await self.serve_lifespan(receive, send)
            return
        request = await self.read_request(scope, receive)
        lost = self.api._lose_answer(request.method.upper())  # lab fault: None, or executed?
        if lost is False:  # the gateway never forwarded it
            status, headers, body = _BAD_GATEWAY
        else:
            status, headers, body = await admin_worker.run(self._answer(request))
            if lost:
                status, headers, body = _BAD_GATEWAY
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, request: ScimRequest) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await self.serve(request)
        body = b"" if response.body is None else json.dumps(response.body).encode()
        return (int(response.status),
                [(name.encode(), value.encode()) for name, value in response.headers.items()],
                body)

    async def serve(self, request: ScimRequest) -> ScimResponse:
        admission = _Admission()
        request.subject = admission
        try:
            response = await self.dispatch_request(request)
        except Exception as exc:
            message = str(exc) if isinstance(exc, SCIMException) else "server error"
            if admission.public or admission.static or admission.grant is not None:
                admission.details["error"] = message
            else:
                admission.reason = message
            response = self.handle_exception(request, exc)
        response = self.finalize_response(request, response)
        self.api._record(request, admission, int(response.status))
        return response

    async def dispatch_request(self, request: ScimRequest) -> ScimResponse:
        admission = cast(_Admission, request.subject)
        if _is_public(request.path):
            admission.public = True
            admission.reason = ("discovery is schema metadata, no tenant data, and needs no "
                                "token (RFC 7644 §4)")
            return await self.handler.handle(request)
        self.api._admit(request, admission)
        segments = request.path.strip("/").split("/")
        handler = self.api.verify.match(request.method.upper(), segments)
        if handler is not None:
            return handler(segments)
        response = await self.handler.handle(request)
        self.api._after(admission, response)
        return response


# what a gateway in front of the API answers when the API's own answer did not reach it
_BAD_GATEWAY = (502, [(b"content-type", b"text/plain; charset=utf-8")],
                b"502 Bad Gateway: the upstream's answer was lost")
_READS = frozenset({"GET", "HEAD"})


class AdminApi:
    """The admin API of the simulated Verify tenant. Mount `app()` at `/v2.0`."""

    def __init__(self, *, directory: Directory, tokens: TokenService, sessions: SessionStore,
                 registry: RarRegistry, audit: AuditTrail, base_url: str,
                 static_tokens: Iterable[str] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.tokens = tokens
        self.sessions = sessions
        self.registry = registry
        self.audit = audit
        self.base_url = base_url.rstrip("/")
        # the request log, bounded (issue #20): the newest KEEP_REQUESTS records; history is
        # the IdP's journal on disk (every request is also an `admin_api` decision)
        self.requests: BoundedLog[AdminRequestRecord] = BoundedLog(
            capacity_from_env("IIA_VERIFY_KEEP_REQUESTS", KEEP_REQUESTS))
        # Long-lived API-client tokens that skip the on-behalf-of checks. The lab never sets
        # any; the benchmark's *unenforced* baseline does, to measure what enforcement costs.
        self._static = frozenset(hashlib.sha256(t.encode()).hexdigest() for t in static_tokens)
        self.verify = VerifyEndpoints(directory, sessions)
        # the jtis already used here, kept until their token has expired anyway
        self._spent = ExpiringSet(clock)
        self._app = _AdminApplication(self)
        # lab fault: answers still to lose after executing the request (writes, reads)
        self._fault_lock = threading.Lock()
        self._lost = {"writes": 0, "reads": 0}
        self._lost_executed = True
        self.coverage = Coverage(registry=registry, directory=directory,
                                 service=self._app.service, location=self.base_url)

    def app(self) -> ASGIApp:
        return cast(ASGIApp, self._app)

    # -- lab faults --------------------------------------------------------------------------

    def lose_answers(self, writes: int = 1, reads: int = 0, *, executed: bool = True) -> None:
        """Execute the next `writes` write requests (POST, PUT, PATCH, DELETE) and the next
        `reads` reads as usual, then lose their answers (502 from a gateway); with
        `executed=False` the gateway answers 502 without forwarding them (nothing is done,
        nothing recorded). `(0, 0)` ends the fault."""
        if writes < 0 or reads < 0:
            raise ValueError("lose_answers counts are never negative")
        with self._fault_lock:
            self._lost = {"writes": writes, "reads": reads}
            self._lost_executed = executed

    def answers_to_lose(self) -> dict[str, int]:
        with self._fault_lock:
            return dict(self._lost)

    def _lose_answer(self, method: str) -> bool | None:
        """None: answer as usual; True: execute, then lose the answer; False: lose the
        request before it is executed."""
        kind = "reads" if method in _READS else "writes"
        with self._fault_lock:
            if self._lost[kind] <= 0:
                return None
            self._lost[kind] -= 1
            return self._lost_executed

    # -- the gate ----------------------------------------------------------------------------

    def _admit(self, request: ScimRequest, admission: _Admission) -> None:
        """Steps 1-5 of the module docstring; raises the SCIM error of the first that fails."""
        token = self._bearer(request)
        if self._static and hashlib.sha256(token.encode()).hexdigest() in self._static:
            admission.static = True
            admission.reason = "static API-client token (unenforced baseline)"
            return
        try:
            claims = self.tokens.decode(token, typ="at+jwt", audience=None)
        except TokenInvalid as exc:
            raise InvalidToken(detail=str(exc)) from exc
        admission.claims = claims
        if not isinstance(claims.get("act"), dict) or not claims["act"].get("sub"):
            raise NoPassthrough()
        audience = claims.get("aud")
        if self.base_url not in (audience if isinstance(audience, list) else [audience]):
            raise InvalidToken(detail=f"the token's audience is not {self.base_url}")
        if not self._spent.add(claims["jti"], float(claims["exp"]) + 60):
            raise InvalidToken(detail="token already used")
        line = RequestLine(request.method.upper(), request.path, request.body,
                           request.header("Content-Type"))
        grant = self.coverage.grant(claims.get("authorization_details"), line)
        admission.grant = grant
        admission.reason = f"{line} is covered by {grant.rar.name}"

    @staticmethod
    def _bearer(request: ScimRequest) -> str:
        header = request.header("Authorization")
        if header is None or not header.lower().startswith("bearer"):
            raise MissingToken(detail="the admin API needs an on-behalf-of token: "
                                      "Authorization: Bearer <token>")
        match = _BEARER.match(header)
        if match is None:
            raise InvalidToken(detail="the Authorization header is not 'Bearer <token>'")
        return match.group(1)

    def _after(self, admission: _Admission, response: ScimResponse) -> None:
        """Side effects of a served request: a user deactivated or deleted has no session."""
        grant = admission.grant
        if grant is None or int(response.status) >= 300:
            return
        why = _ENDS_SESSIONS.get(grant.rar.name)
        if why is not None:
            ended = self.sessions.end_all_for_user(str(grant.target), why)
            admission.details["sessions_ended"] = len(ended)

    # -- records -----------------------------------------------------------------------------

    def _record(self, request: ScimRequest, admission: _Admission, status: int) -> None:
        claims = admission.claims or {}
        first = admission.first_object()
        allowed = admission.public or admission.static or admission.grant is not None
        outcome = "allowed" if allowed else "refused"
        rar_type = admission.grant.rar.name if admission.grant else first.get("type")
        self.requests.append(AdminRequestRecord(
            method=request.method.upper(), path=request.path, status=status, outcome=outcome,
            rar_type=rar_type, reason=admission.reason, user=claims.get("email"),
            jti=claims.get("jti")))
        act = claims.get("act")
        self.audit.record(Decision(
            kind="admin_api", outcome=outcome, reason=admission.reason,
            user=claims.get("email"), sid=claims.get("sid"), client_id=claims.get("client_id"),
            actor=act.get("sub") if isinstance(act, dict) else None, rar_type=rar_type,
            tier=first.get("tier") if isinstance(first.get("tier"), int) else None,
            target=first.get("target") if isinstance(first.get("target"), str) else None,
            jti=claims.get("jti"),
            details={"method": request.method.upper(), "path": request.path,
                     "status": status, **admission.details}))
