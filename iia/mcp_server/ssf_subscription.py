"""The MCP server's subscription to the identity provider's own SSF 1.0 transmitter: when a
session ends at the IdP (logout, an admin revocation, a refresh-token reuse, a deactivation, a
withdrawn delegation), the IdP pushes CAEP `session-revoked` and the MCP server drops the session
before the user's next call runs any step.

At start (`start`): an access token from the IdP's token endpoint by the client credentials grant
(RFC 6749 §4.4, scope `ssf.manage`) with the MCP server's Vault-held client credential; the
transmitter's configuration from `<IdP origin>/.well-known/ssf-configuration` (SSF 1.0 §6; its
`issuer` must be that origin); trust in the transmitter's issuer and JWKS
(`iia.ssf.SetValidator`); then a push stream (SSF 1.0 §7.1.1.1, RFC 8935) to
`<MCP origin>/ssf/idp/events`, with a fresh Authorization header the pushes must carry.

The IdP down at start: start-up goes on (the MCP server must be reachable to say what is
wrong), but it fails closed: until the stream exists, every tool call is refused with
`temporarily_unavailable`, naming the IdP's SSF transmitter and why (`problem`); the failure is
logged and emitted (`ssf:subscription_failed`), and the subscription is retried in the
background every `retry` seconds until it succeeds (`ssf:subscribed`). `/healthz` answers 503
with the same sentence meanwhile, so a supervisor counts the MCP server as still starting.

Once subscribed, the stream is read back every `check_every` seconds (SSF 1.0 §7.1.1.2): an IdP
that lost it (restarted: its streams and tokens were in memory) answers 401 to the old token and
404 to a new one; the MCP server then refuses calls again and subscribes anew at once.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from iia.errors import IIAError
from iia.events import EventBus
from iia.identity import WorkloadIdentity
from iia.oauth.client import AuthorizationServerClient
from iia.protocol import CAEP_EVENT
from iia.ssf import SetValidator, Transmitter

__all__ = ["EVENTS_REQUESTED", "IDP_PUSH_PATH", "MANAGE_SCOPE", "PUSH", "IdpStream"]

IDP_PUSH_PATH = "/ssf/idp/events"
MANAGE_SCOPE = "ssf.manage"
PUSH = "urn:ietf:rfc:8935"
EVENTS_REQUESTED = [CAEP_EVENT["session-revoked"], CAEP_EVENT["credential-change"],
                    CAEP_EVENT["token-claims-change"]]

log = logging.getLogger(__name__)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class IdpStream:
    def __init__(self, *, idp: AuthorizationServerClient, identity: WorkloadIdentity,
                 validator: SetValidator, audience: str, endpoint_url: str,
                 events: EventBus | None = None, retry: float = 0.5,
                 check_every: float = 2.0,
                 http: Callable[[], httpx.Client] | None = None) -> None:
        self.idp = idp
        self.identity = identity
        self.validator = validator
        self.audience = audience
        self.endpoint_url = endpoint_url
        self.events = events
        self.retry = retry
        self.check_every = check_every
        self.configuration_url = origin(idp.issuer) + "/.well-known/ssf-configuration"
        self._http = http or (lambda: httpx.Client(timeout=5, follow_redirects=False))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = False
        self.stream_id: str | None = None
        self.problem: str | None = None  # why there is no stream yet (None once subscribed)
        self._management: tuple[str, str] | None = None  # (configuration endpoint, token)

    @property
    def ready(self) -> bool:
        return self.stream_id is not None

    def refusal(self) -> str | None:
        """Why a tool call must be refused now (None: subscribed, or never started)."""
        if not self.started or self.ready:
            return None
        return self.problem or "the identity provider's SSF stream is not subscribed yet"

    def start(self) -> bool:
        """Subscribe once now; on failure, keep retrying in the background. True: subscribed."""
        self.started = True
        subscribed = self.subscribe_once()
        self._thread = threading.Thread(target=self._watch, name="iia-idp-ssf-subscription",
                                        daemon=True)
        self._thread.start()
        return subscribed

    def _watch(self) -> None:
        while not self._stop.wait(self.check_every if self.ready else self.retry):
            if not self.ready or self.lost():
                self.subscribe_once()

    def lost(self) -> bool:
        """Read the stream back; True (and not ready any more) when the IdP no longer has it.
        An IdP that cannot be reached is not a lost stream: it is checked again later."""
        with self._lock:
            management, stream_id = self._management, self.stream_id
        if management is None or stream_id is None:
            return False
        try:
            with self._http() as http:
                status = self._read(http, management, stream_id)
                if status == 401:  # the token lapsed, or the IdP forgot it: a new one
                    management = (management[0], self._token())
                    with self._lock:
                        self._management = management
                    status = self._read(http, management, stream_id)
        except (IIAError, httpx.HTTPError):
            return False
        if status != 404:
            return False
        problem = (f"the identity provider ({self.configuration_url}) no longer holds this "
                   f"server's SSF stream {stream_id} (did it restart?); tool calls are "
                   "refused until it is subscribed again")
        with self._lock:
            self.stream_id, self.problem = None, problem
        log.warning("%s", problem)
        if self.events is not None:
            self.events.emit("ssf:subscription_failed", outcome="error", reason=problem,
                             details={"dependency": "verify_ssf"})
        return True

    @staticmethod
    def _read(http: httpx.Client, management: tuple[str, str], stream_id: str) -> int:
        return http.get(management[0], params={"stream_id": stream_id}, headers={
            "Authorization": f"Bearer {management[1]}"}).status_code

    def subscribe_once(self) -> bool:
        try:
            self._subscribe()
        except (IIAError, httpx.HTTPError, ValueError, KeyError) as exc:
            why = exc.description if isinstance(exc, IIAError) else \
                f"{exc.__class__.__name__}: {exc}"
            problem = (f"the identity provider's SSF transmitter ({self.configuration_url}) "
                       f"cannot be subscribed to: {why}; tool calls are refused until it can "
                       "(retrying)")
            first = self.problem is None or "no longer holds" in self.problem
            self.problem = problem
            if first:
                log.warning("%s", problem)
                if self.events is not None:
                    self.events.emit("ssf:subscription_failed", outcome="error",
                                     reason=problem, details={"dependency": "verify_ssf"})
            return False
        self.problem = None
        log.info("subscribed to the identity provider's SSF stream %s", self.stream_id)
        if self.events is not None:
            self.events.emit("ssf:subscribed", outcome="success",
                             reason="subscribed to the identity provider's SSF transmitter",
                             details={"streamId": self.stream_id or "",
                                      "transmitter": self.validator.trusted.issuer
                                      if self.validator.trusted else ""})
        return True

    def _token(self) -> str:
        body = self.identity.with_credential(lambda credential: self.idp.token(
            {"grant_type": "client_credentials", "scope": MANAGE_SCOPE}, credential))
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise ValueError("the token response carries no access_token")
        return token

    def _subscribe(self) -> None:
        token = self._token()
        with self._http() as http:
            response = http.get(self.configuration_url)
            response.raise_for_status()
            meta: dict[str, Any] = response.json()
            issuer = meta["issuer"]
            if issuer.rstrip("/") != origin(self.configuration_url):
                raise ValueError(f"its configuration names issuer {issuer!r}, not the origin "
                                 "it was fetched from (SSF 1.0 §6.2)")
            if PUSH not in meta.get("delivery_methods_supported", []):
                raise ValueError("it does not offer push delivery (RFC 8935)")
            header = "Bearer " + secrets.token_urlsafe(24)
            # trust first: a SET pushed the instant the stream exists must be accepted
            self.validator.trust(Transmitter(issuer, meta["jwks_uri"], header))
            created = http.post(meta["configuration_endpoint"], headers={
                "Authorization": f"Bearer {token}"}, json={
                "delivery": {"method": PUSH, "endpoint_url": self.endpoint_url,
                             "authorization_header": header},
                "events_requested": EVENTS_REQUESTED, "aud": self.audience,
                "description": "the IIA MCP server: drop a session the IdP ended"})
            if created.status_code != 201:
                raise ValueError(f"stream creation answered HTTP {created.status_code} "
                                 f"{_error(created)}")
            stream = created.json()
        with self._lock:
            self.stream_id = str(stream["stream_id"])
            self._management = (meta["configuration_endpoint"], token)

    def close(self) -> None:
        """Stop retrying; delete the stream at the IdP (best effort: it may be down)."""
        self._stop.set()
        with self._lock:
            management, stream_id = self._management, self.stream_id
            self.stream_id = None
        if management is None or stream_id is None:
            return
        try:
            with self._http() as http:
                http.delete(management[0], params={"stream_id": stream_id},
                            headers={"Authorization": f"Bearer {management[1]}"})
        except httpx.HTTPError:
            log.info("the IdP's SSF stream %s was not deleted: the IdP is unreachable",
                     stream_id)


def _error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("error_description", "")) if isinstance(body, dict) else ""
