"""OpenID CIBA Core 1.0 §10.2, the ping callback, as the client receives it: the MCP server's
client notification endpoint (`backchannel_client_notification_endpoint`, client metadata §4).

Each backchannel authentication request carries a fresh `client_notification_token` (§7.1;
256 bits from `secrets`). When the user answers (or the request expires) the identity provider
POSTs `{"auth_req_id": ...}` here with `Authorization: Bearer <that token>`; the waiting request
wakes and makes one token request instead of polling.

    no or malformed bearer, or a token that is not this request's   401 invalid_token
    a token already used (a replayed callback)                       401 invalid_token
    a body that is not {"auth_req_id": "<string>"}                     400 invalid_request
    an auth_req_id no request here is waiting for                     404 not_found
    accepted                                                          204 (§10.2)

The token is compared in constant time with the one of the request the auth_req_id names, and
is good once. A callback can beat the bc-authorize response that names its auth_req_id (a fast
phone); it is then matched by its token among the requests still waiting for their response.
A refused callback changes nothing: the request waits as it did, and its poll fallback still
finds the answer.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = ["NOTIFICATION_PATH", "PingReceiver", "PingWait"]

NOTIFICATION_PATH = "/ciba/notification"  # where the MCP server's app serves the endpoint
TOKEN_BYTES = 32  # §7.1 asks for at least 128 bits (160 recommended)
MAX_BODY = 4096  # bytes: {"auth_req_id": ...} is far smaller


@dataclass
class PingWait:
    """One backchannel authentication request waiting for its callback."""

    token: str = field(repr=False)
    auth_req_id: str | None = None  # None until bc-authorize has answered
    notified: threading.Event = field(default_factory=threading.Event)
    used: bool = False  # the token was accepted once
    early: str | None = field(default=None, repr=False)  # auth_req_id of a callback that came
    # before the bc-authorize response


class PingReceiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, PingWait] = {}  # auth_req_id -> its wait
        self._unbound: list[PingWait] = []  # bc-authorize not answered yet
        self.accepted = 0
        self.refused = 0

    # -- the waiting side (iia.hitl) --------------------------------------------------------

    def expect(self) -> PingWait:
        """A fresh, unguessable client_notification_token for one request."""
        wait = PingWait(token=secrets.token_urlsafe(TOKEN_BYTES))
        with self._lock:
            self._unbound.append(wait)
        return wait

    def bind(self, wait: PingWait, auth_req_id: str) -> None:
        """bc-authorize answered `auth_req_id` for this request; a callback that came first
        for this very auth_req_id counts now."""
        with self._lock:
            if wait in self._unbound:
                self._unbound.remove(wait)
            wait.auth_req_id = auth_req_id
            self._waiting[auth_req_id] = wait
            if wait.early is not None and hmac.compare_digest(wait.early.encode(),
                                                              auth_req_id.encode()):
                wait.notified.set()

    def discard(self, wait: PingWait) -> None:
        """The request is over (answered, refused, timed out): its token is good no more."""
        with self._lock:
            if wait in self._unbound:
                self._unbound.remove(wait)
            if wait.auth_req_id is not None and self._waiting.get(wait.auth_req_id) is wait:
                del self._waiting[wait.auth_req_id]
            wait.used = True

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._unbound)

    # -- the callback -----------------------------------------------------------------------

    def receive(self, authorization: str | None, body: bytes) -> tuple[int, dict[str, str]]:
        """Judge one callback: (HTTP status, error body; empty when accepted)."""
        token = _bearer(authorization)
        if token is None:
            return self._refuse(401, "invalid_token", "the callback carries no bearer "
                                "client_notification_token")
        auth_req_id = _auth_req_id(body)
        if auth_req_id is None:
            return self._refuse(400, "invalid_request", 'the body must be the JSON object '
                                '{"auth_req_id": "<string>"} (CIBA §10.2)')
        with self._lock:
            wait = self._waiting.get(auth_req_id)
            if wait is None:
                return self._early(token, auth_req_id)
            if not hmac.compare_digest(token.encode(), wait.token.encode()):
                return self._refuse(401, "invalid_token", "the bearer token is not the "
                                    "client_notification_token of this request")
            if wait.used:
                return self._refuse(401, "invalid_token", "this client_notification_token "
                                    "was already used: a callback is accepted once")
            wait.used = True
            wait.notified.set()
            self.accepted += 1
        return 204, {}

    def _early(self, token: str, auth_req_id: str) -> tuple[int, dict[str, str]]:
        """No request is waiting for `auth_req_id` under that name: it may be one whose
        bc-authorize response has not been read yet (the caller holds the lock)."""
        matched = None
        for wait in self._unbound:  # every one compared, in constant time each
            if hmac.compare_digest(token.encode(), wait.token.encode()):
                matched = wait
        if matched is None:
            return self._refuse(404, "not_found", "no backchannel authentication request "
                                "here is waiting for this auth_req_id")
        if matched.used:
            return self._refuse(401, "invalid_token", "this client_notification_token was "
                                "already used: a callback is accepted once")
        matched.used = True
        matched.early = auth_req_id
        self.accepted += 1
        return 204, {}

    def _refuse(self, status: int, error: str,
                description: str) -> tuple[int, dict[str, str]]:
        self.refused += 1
        return status, {"error": error, "error_description": description}

    async def endpoint(self, request: Request) -> Response:
        """The Starlette route: POST only (the app's Route says so)."""
        body = await request.body()
        status, error = self.receive(request.headers.get("authorization"),
                                     body if len(body) <= MAX_BODY else b"")
        if status == 204:
            return Response(status_code=204)
        headers = {"Cache-Control": "no-store"}
        if status == 401:  # RFC 6750 §3
            headers["WWW-Authenticate"] = f'Bearer error="{error["error"]}"'
        return JSONResponse(error, status_code=status, headers=headers)


def _bearer(authorization: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>` (RFC 6750 §2.1), else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def _auth_req_id(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = doc.get("auth_req_id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and value else None
