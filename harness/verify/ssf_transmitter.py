"""The tenant's SSF 1.0 transmitter: the simulated Verify tells its subscribers, by CAEP SETs
pushed per RFC 8935, when a session ends at the IdP, so a receiver (the MCP server) drops it at
once instead of finding out at the user's next token exchange.

    GET    /.well-known/ssf-configuration     SSF 1.0 §6: transmitter configuration metadata
    GET    /v1.0/ssf/jwks                     the keys SETs are signed with (ES256, made at
                                              start, never the tenant's token keys)
    POST   /v1.0/ssf/streams                  SSF 1.0 §7.1.1.1 create a stream (201)
    GET    /v1.0/ssf/streams[?stream_id=]     §7.1.1.2 read one, or the caller's list
    PATCH  /v1.0/ssf/streams                  §7.1.1.3 update the updatable fields
    PUT    /v1.0/ssf/streams                  §7.1.1.4 replace the updatable fields
    DELETE /v1.0/ssf/streams?stream_id=       §7.1.1.5 delete (204)
    GET|POST /v1.0/ssf/status                 §7.1.2 stream status (enabled, paused, disabled)
    POST   /v1.0/ssf/verify                   §7.1.4 a verification SET on that stream

Stream management needs `Authorization: Bearer <token>`: an access token this tenant issued by
the client credentials grant (RFC 6749 §4.4) with scope `ssf.manage` (`ManagementTokens`). A
stream belongs to the client that created it; another client's stream is 404.

The same grant with a `resource` (RFC 8707) issues a management token for another transmitter:
a JWT access token (RFC 9068, `typ: at+jwt`, signed with the tenant's keys and checked against
its JWKS) with `aud` = that resource (Antenna's issuer), `sub`/`client_id` the client, `scope`
`ssf.manage`; the audience binds it to that one transmitter (an outside SSF receiver
subscribes to Antenna with it: iia/antenna/management.py).

What is transmitted (subjects per RFC 9493, SSF 1.0 §4.1):

* CAEP `session-revoked` for every IdP session that ends: logout, sessions revoked through the
  admin API, refresh-token or authorization-code reuse, user deactivation or deletion, a
  session-revoked received from another transmitter; subject `complex` with the user
  (`iss_sub`: the OpenID issuer, the user's id) and the session (`opaque`: its `sid`);
* on a delegation withdrawal: CAEP `token-claims-change` (the `may_act` claim gone) about the
  user, and `session-revoked` for each of the user's live sessions: the IdP session goes on
  (it is the user's sign-in), but the agent's authority in it is over, so a receiver acting for
  the agent must drop it;
* CAEP `credential-change` (`fido2-platform`, `create`) when a user enrolls a passkey.

Delivery: one worker thread, in order per stream, a receiver that is down delaying only its own
stream (a paused stream's SETs are held, up to
`MAX_QUEUED`, and sent when it is enabled again; a disabled stream's are not made); a push that
fails (connection refused, 5xx) is retried after 0.05 s doubling to at most 1 s, for at most
`RETRY_FOR` seconds, then recorded as failed in the audit trail. A 400 (the receiver refused
the SET, RFC 8935 §2.3) is not retried. The queue is bounded (`MAX_QUEUED`): a SET that finds
it full is recorded as dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from harness.verify.audit import AuditTrail, Decision
from harness.verify.client_auth import Client
from harness.verify.sessions import Session, SessionStore
from iia.protocol import SET_MEDIA_TYPE, SET_TYP

__all__ = ["CAEP_EVENTS", "MANAGE_SCOPE", "PUSH", "SSF_BASE", "VERIFICATION", "ManagementTokens",
           "SsfTransmitter", "Stream"]

SSF_BASE = "/v1.0/ssf"
MANAGE_SCOPE = "ssf.manage"
PUSH = "urn:ietf:rfc:8935"
_CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
CAEP_EVENTS = {name: _CAEP + name for name in
               ("session-revoked", "credential-change", "token-claims-change")}
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
SUPPORTED = sorted([*CAEP_EVENTS.values(), VERIFICATION])
TOKEN_TTL = 3600  # seconds a management access token lives
JWT_TTL = 900  # seconds a JWT management token for another transmitter lives (RFC 9068)
MAX_TOKENS = 1000
MAX_STREAMS = 100
MAX_QUEUED = 10_000
RETRY_FOR = 30.0
FIRST_RETRY, MAX_RETRY = 0.05, 1.0

# why a session ended (SessionStore reasons) -> CAEP initiating_entity
_INITIATED_BY = {"logout": "user", "admin": "admin", "deactivated": "admin",
                 "deleted": "admin", "reuse": "policy", "replayed": "policy",
                 "CAEP": "policy", "delegation": "admin"}


class ManagementTokens:
    """Opaque access tokens for stream management, issued at the token endpoint by the client
    credentials grant (`ClientCredentialsGrant` in grants.py) and checked here, the one
    resource they are for. Kept as digests, at most `MAX_TOKENS`, each `TOKEN_TTL` seconds."""

    def __init__(self, clock: Callable[[], float] = time.time, *, issuer: str | None = None,
                 sign: Callable[[dict[str, Any]], str] | None = None) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.issuer = issuer  # with `sign`: JWT tokens for another transmitter (`resource`)
        self._sign = sign

    def grant(self, client: Client, form: Mapping[str, str]) -> Response:
        scope = form.get("scope") or MANAGE_SCOPE
        if scope.split() != [MANAGE_SCOPE] or MANAGE_SCOPE not in client.scopes:
            return JSONResponse({"error": "invalid_scope", "error_description":
                                 f"{client.client_id} may ask only for {MANAGE_SCOPE}, and "
                                 "only when registered for it"}, status_code=400,
                                headers={"Cache-Control": "no-store"})
        if form.get("resource"):
            return self._for_resource(client, str(form["resource"]))
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[_digest(token)] = (client.client_id, self._clock() + TOKEN_TTL)
            while len(self._tokens) > MAX_TOKENS:
                self._tokens.popitem(last=False)
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": TOKEN_TTL, "scope": MANAGE_SCOPE},
                            headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _for_resource(self, client: Client, resource: str) -> Response:
        """RFC 8707 + RFC 9068: a JWT access token for the transmitter at `resource`."""
        parts = urlsplit(resource)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment or \
                self._sign is None or self.issuer is None:
            return JSONResponse({"error": "invalid_target", "error_description":
                                 "resource must be the absolute http(s) URL of an SSF "
                                 "transmitter, without a fragment (RFC 8707 §2)"},
                                status_code=400, headers={"Cache-Control": "no-store"})
        now = int(self._clock())
        token = self._sign({"iss": self.issuer, "sub": client.client_id, "aud": resource,
                            "client_id": client.client_id, "scope": MANAGE_SCOPE, "iat": now,
                            "exp": now + JWT_TTL, "jti": secrets.token_urlsafe(16)})
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": JWT_TTL, "scope": MANAGE_SCOPE},
                            headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    def client_of(self, authorization: str) -> str | None:
        """The client a `Bearer` management token was issued to (None: none, unknown or
        expired)."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        with self._lock:
            found = self._tokens.get(_digest(token.strip()))
        if found is None or found[1] <= self._clock():
            return None
        return found[0]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class _Outgoing:
    stream_id: str
    token: str
    event_type: str
    queued_at: float
    attempts: int = 0
    not_before: float = 0.0
    jti: str = field(default="")


@dataclass
class Stream:
    stream_id: str
    owner: str
    aud: str
    endpoint_url: str
    authorization_header: str | None
    events_requested: list[str]
    description: str | None = None
    status: str = "enabled"
    reason: str | None = None
    held: deque[_Outgoing] = field(default_factory=lambda: deque(maxlen=MAX_QUEUED))

    @property
    def events_delivered(self) -> list[str]:
        return [e for e in self.events_requested if e in SUPPORTED]

    def config(self, issuer: str) -> dict[str, Any]:
        """SSF 1.0 §7.1.1: the stream configuration (the authorization header never echoed)."""
        out: dict[str, Any] = {
            "stream_id": self.stream_id, "iss": issuer, "aud": self.aud,
            "events_supported": SUPPORTED, "events_requested": self.events_requested,
            "events_delivered": self.events_delivered,
            "delivery": {"method": PUSH, "endpoint_url": self.endpoint_url}}
        if self.description is not None:
            out["description"] = self.description
        return out


class _Refused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": f'Bearer error="{self.error}"'} if self.status == 401 \
            else {}
        return JSONResponse({"error": self.error, "error_description": self.description},
                            status_code=self.status, headers=headers)


class SsfTransmitter:
    def __init__(self, *, base_url: str, oidc_issuer: str, sessions: SessionStore,
                 audit: AuditTrail, tokens: ManagementTokens,
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = base_url.rstrip("/")
        self.oidc_issuer = oidc_issuer
        self.audit = audit
        self.tokens = tokens
        self._clock = clock
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "verify-ssf-" + secrets.token_hex(6)
        self._lock = threading.Condition()
        self._streams: dict[str, Stream] = {}
        self._queue: deque[_Outgoing] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.sent: deque[dict[str, Any]] = deque(maxlen=1000)  # delivery outcomes (lab view)
        self._unsubscribe = sessions.on_end(self.session_ended)

    # -- metadata and keys ---------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        base = self.issuer + SSF_BASE
        return {"spec_version": "1_0", "issuer": self.issuer, "jwks_uri": f"{base}/jwks",
                "delivery_methods_supported": [PUSH],
                "configuration_endpoint": f"{base}/streams",
                "status_endpoint": f"{base}/status",
                "verification_endpoint": f"{base}/verify",
                "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
                "default_subjects": "ALL"}

    def jwks(self) -> dict[str, Any]:
        public = json.loads(ECAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "ES256"}]}

    # -- what is transmitted ---------------------------------------------------------------------

    def session_ended(self, session: Session) -> None:
        reason = session.end_reason or "session ended"
        self.session_revoked(session, reason, _initiator(reason))

    def session_revoked(self, session: Session, reason: str, initiated_by: str) -> None:
        self.publish(CAEP_EVENTS["session-revoked"], {
            "event_timestamp": int(self._clock()), "initiating_entity": initiated_by,
            "reason_admin": {"en": reason},
            "reason_user": {"en": "Your session was ended at IBM Verify."}},
            self._session_subject(session))

    def delegation_withdrawn(self, user_id: str, live: list[Session]) -> None:
        """The tenant admin withdrew the user's delegation to the agent: the `may_act` claim is
        gone from their tokens, and every live session of theirs is revoked for the agent."""
        self.publish(CAEP_EVENTS["token-claims-change"], {
            "event_timestamp": int(self._clock()), "initiating_entity": "admin",
            "claims": {"may_act": None},
            "reason_admin": {"en": "the tenant admin withdrew the user's delegation to the "
                                   "agent"}}, self._user_subject(user_id))
        for session in live:
            self.session_revoked(session, "delegation to the agent withdrawn by the tenant "
                                 "admin", "admin")

    def credential_created(self, user_id: str, friendly_name: str) -> None:
        self.publish(CAEP_EVENTS["credential-change"], {
            "event_timestamp": int(self._clock()), "initiating_entity": "user",
            "credential_type": "fido2-platform", "change_type": "create",
            "friendly_name": friendly_name}, self._user_subject(user_id))

    def _user_subject(self, user_id: str) -> dict[str, Any]:
        return {"format": "iss_sub", "iss": self.oidc_issuer, "sub": user_id}

    def _session_subject(self, session: Session) -> dict[str, Any]:
        return {"format": "complex", "user": self._user_subject(session.user_id),
                "session": {"format": "opaque", "id": session.sid}}

    def publish(self, event_type: str, payload: Mapping[str, Any],
                subject: Mapping[str, Any], *, only: str | None = None) -> int:
        """Sign one SET per enabled stream that asked for `event_type` (or just stream `only`)
        and queue it for push; the number queued."""
        with self._lock:
            streams = [s for s in self._streams.values()
                       if (only is None and s.status != "disabled"
                           and event_type in s.events_delivered) or s.stream_id == only]
        queued = 0
        for stream in streams:
            jti = secrets.token_hex(16)
            claims = {"iss": self.issuer, "aud": stream.aud, "iat": int(self._clock()),
                      "jti": jti, "sub_id": dict(subject), "events": {event_type: dict(payload)}}
            token = jwt.encode(claims, self._key, algorithm="ES256",
                               headers={"typ": SET_TYP, "kid": self.kid})
            item = _Outgoing(stream.stream_id, token, event_type, self._clock(), jti=jti)
            with self._lock:
                if stream.status == "paused" and only is None:  # SSF 1.0 §7.1.2: held
                    stream.held.append(item)
                    queued += 1
                    continue
                if len(self._queue) >= MAX_QUEUED:
                    self.audit.record(Decision(kind="ssf_transmit", outcome="dropped",
                                               jti=jti, reason="the delivery queue is full"))
                    continue
                self._queue.append(item)
                self._start()
                self._lock.notify()
            queued += 1
        return queued

    # -- delivery (RFC 8935) ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="verify-ssf-push",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5, follow_redirects=False) as http:
            while True:
                with self._lock:
                    head, wait = self._due()
                    while not self._closed and head is None:
                        self._lock.wait(wait)
                        head, wait = self._due()
                    if self._closed or head is None:
                        return
                    stream = self._streams.get(head.stream_id)
                if stream is None:  # deleted meanwhile: nothing owed
                    self._done(head, "dropped", "the stream was deleted")
                    continue
                self._push(http, stream, head)

    def _due(self) -> tuple[_Outgoing | None, float | None]:
        """The oldest SET whose stream has nothing older waiting and whose retry time has
        come (per-stream FIFO: one receiver that is down delays only its own stream), else
        None and how long until the next one is due. The caller holds the lock."""
        now, seen, soonest = time.monotonic(), set(), None
        for item in self._queue:
            if item.stream_id in seen:
                continue
            seen.add(item.stream_id)
            if item.not_before <= now:
                return item, None
            soonest = item.not_before - now if soonest is None else min(
                soonest, item.not_before - now)
        return None, soonest

    def _push(self, http: httpx.Client, stream: Stream, item: _Outgoing) -> None:
        headers = {"Content-Type": SET_MEDIA_TYPE, "Accept": "application/json"}
        if stream.authorization_header:
            headers["Authorization"] = stream.authorization_header
        try:
            response = http.post(stream.endpoint_url, content=item.token, headers=headers)
        except httpx.HTTPError as exc:
            self._retry(item, f"the receiver cannot be reached ({exc.__class__.__name__})")
            return
        if response.status_code in (200, 202):
            self._done(item, "delivered", None)
        elif response.status_code in (400, 401, 403):
            err = _err(response)
            self._done(item, "refused", f"the receiver refused the SET: {err}")
        else:
            self._retry(item, f"the receiver answered {response.status_code}")

    def _retry(self, item: _Outgoing, why: str) -> None:
        item.attempts += 1
        if self._clock() - item.queued_at > RETRY_FOR:
            self._done(item, "failed", f"{why}; given up after {item.attempts} attempts")
            return
        with self._lock:
            item.not_before = time.monotonic() + min(MAX_RETRY,
                                                     FIRST_RETRY * 2 ** (item.attempts - 1))

    def _done(self, item: _Outgoing, outcome: str, why: str | None) -> None:
        with self._lock:
            with contextlib.suppress(ValueError):
                self._queue.remove(item)
            self.sent.append({"jti": item.jti, "stream_id": item.stream_id,
                              "event_type": item.event_type, "outcome": outcome,
                              "reason": why})
        if outcome != "delivered":
            self.audit.record(Decision(kind="ssf_transmit", outcome=outcome, jti=item.jti,
                                       reason=why or "", details={"streamId": item.stream_id}))

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._unsubscribe()

    # -- stream management (SSF 1.0 §7) ------------------------------------------------------

    def _owner(self, request: Request) -> str:
        client = self.tokens.client_of(request.headers.get("authorization", ""))
        if client is None:
            raise _Refused(401, "invalid_token", "stream management needs an access token "
                           f"of this tenant with scope {MANAGE_SCOPE} (client credentials)")
        return client

    def _stream(self, owner: str, stream_id: str | None) -> Stream:
        if not stream_id:
            raise _Refused(400, "invalid_request", "stream_id is required")
        with self._lock:
            stream = self._streams.get(stream_id)
        if stream is None or stream.owner != owner:
            raise _Refused(404, "not_found", f"no stream {stream_id!r} of this client")
        return stream

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise _Refused(400, "invalid_request", "the body is not JSON") from exc
        if not isinstance(body, dict):
            raise _Refused(400, "invalid_request", "the body is not a JSON object")
        return body

    @staticmethod
    def _events(body: Mapping[str, Any], default: list[str]) -> list[str]:
        events = body.get("events_requested", default)
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            raise _Refused(400, "invalid_request", "events_requested is a list of event-type "
                           "URIs")
        return list(events)

    @staticmethod
    def _delivery(body: Mapping[str, Any]) -> tuple[str, str | None]:
        delivery = body.get("delivery")
        if not isinstance(delivery, dict) or delivery.get("method") != PUSH:
            raise _Refused(400, "invalid_request", f"delivery.method must be {PUSH} (push, "
                           "RFC 8935): the only method this transmitter supports")
        url = delivery.get("endpoint_url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise _Refused(400, "invalid_request", "delivery.endpoint_url must be an http(s) "
                           "URL")
        header = delivery.get("authorization_header")
        if header is not None and not isinstance(header, str):
            raise _Refused(400, "invalid_request", "delivery.authorization_header is a string")
        return url, header

    async def _handle(self, request: Request,
                      run: Callable[[str], Any]) -> Response:
        try:
            return await run(self._owner(request))  # type: ignore[no-any-return]
        except _Refused as exc:
            return exc.response()

    async def streams(self, request: Request) -> Response:
        async def run(owner: str) -> Response:
            method = request.method
            stream_id = request.query_params.get("stream_id")
            if method == "GET":
                if stream_id:
                    return JSONResponse(self._stream(owner, stream_id).config(self.issuer))
                with self._lock:
                    mine = [s.config(self.issuer) for s in self._streams.values()
                            if s.owner == owner]
                return JSONResponse(mine)
            if method == "DELETE":
                stream = self._stream(owner, stream_id)
                with self._lock:
                    self._streams.pop(stream.stream_id, None)
                self.audit.record(Decision(kind="ssf_stream", outcome="deleted",
                                           details={"streamId": stream.stream_id,
                                                    "client": owner}))
                return Response(status_code=204)
            body = await self._body(request)
            if method == "POST":
                return self._create(owner, body)
            stream = self._stream(owner, str(body.get("stream_id") or ""))
            for fixed in ("iss", "aud", "events_supported", "events_delivered"):
                if fixed in body and body[fixed] != stream.config(self.issuer)[fixed]:
                    raise _Refused(400, "invalid_request", f"{fixed} is set by the "
                                   "transmitter and cannot be changed")
            replace = method == "PUT"
            events = self._events(body, [] if replace else stream.events_requested)
            url, header = (self._delivery(body) if replace or "delivery" in body
                           else (stream.endpoint_url, stream.authorization_header))
            with self._lock:
                stream.events_requested = events
                stream.endpoint_url, stream.authorization_header = url, header
                if replace or "description" in body:
                    stream.description = body.get("description")
            return JSONResponse(stream.config(self.issuer))
        return await self._handle(request, run)

    def _create(self, owner: str, body: Mapping[str, Any]) -> Response:
        url, header = self._delivery(body)
        events = self._events(body, [])
        aud = body.get("aud", owner)
        if not isinstance(aud, str) or not aud:
            raise _Refused(400, "invalid_request", "aud is the receiver's audience, a string")
        stream = Stream(stream_id=secrets.token_urlsafe(12), owner=owner, aud=aud,
                        endpoint_url=url, authorization_header=header,
                        events_requested=events,
                        description=body.get("description") if isinstance(
                            body.get("description"), str) else None)
        with self._lock:
            if len(self._streams) >= MAX_STREAMS:
                raise _Refused(409, "conflict", f"this transmitter holds {MAX_STREAMS} "
                               "streams already; delete one first")
            self._streams[stream.stream_id] = stream
        self.audit.record(Decision(kind="ssf_stream", outcome="created", details={
            "streamId": stream.stream_id, "client": owner, "aud": aud,
            "eventsDelivered": stream.events_delivered}))
        return JSONResponse(stream.config(self.issuer), status_code=201)

    async def status(self, request: Request) -> Response:
        async def run(owner: str) -> Response:
            if request.method == "GET":
                stream = self._stream(owner, request.query_params.get("stream_id"))
            else:
                body = await self._body(request)
                stream = self._stream(owner, str(body.get("stream_id") or ""))
                if body.get("status") not in ("enabled", "paused", "disabled"):
                    raise _Refused(400, "invalid_request", "status is enabled, paused or "
                                   "disabled")
                with self._lock:
                    stream.status = str(body["status"])
                    if stream.status != "paused":  # the held events go now, or never
                        held, stream.held = list(stream.held), deque(maxlen=MAX_QUEUED)
                        if stream.status == "enabled" and held:
                            for item in held:
                                item.queued_at = self._clock()
                            self._queue.extend(held)
                            self._start()
                            self._lock.notify()
                    stream.reason = body.get("reason") if isinstance(
                        body.get("reason"), str) else None
            out = {"stream_id": stream.stream_id, "status": stream.status}
            return JSONResponse({**out, **({"reason": stream.reason} if stream.reason else {})})
        return await self._handle(request, run)

    async def verify(self, request: Request) -> Response:
        async def run(owner: str) -> Response:
            body = await self._body(request)
            stream = self._stream(owner, str(body.get("stream_id") or ""))
            state = body.get("state")
            self.publish(VERIFICATION, {"state": state} if isinstance(state, str) else {},
                         {"format": "opaque", "id": stream.stream_id}, only=stream.stream_id)
            return Response(status_code=204)
        return await self._handle(request, run)

    async def configuration(self, request: Request) -> Response:
        return JSONResponse(self.metadata())

    async def jwks_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.jwks(), headers={"Cache-Control": "max-age=60"})

    def routes(self) -> list[Route]:
        b = SSF_BASE
        return [Route("/.well-known/ssf-configuration", self.configuration),
                Route(f"{b}/jwks", self.jwks_endpoint),
                Route(f"{b}/streams", self.streams,
                      methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
                Route(f"{b}/status", self.status, methods=["GET", "POST"]),
                Route(f"{b}/verify", self.verify, methods=["POST"])]


def _initiator(reason: str) -> str:
    for word, entity in _INITIATED_BY.items():
        if word in reason:
            return entity
    return "system"


def _err(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    return str(body.get("err", response.status_code)) if isinstance(body, dict) \
        else f"HTTP {response.status_code}"
