"""OpenID Connect Client-Initiated Backchannel Authentication (CIBA) 1.0, poll and ping modes.

The MCP server asks the user to approve on their phone:

    POST /bc-authorize  login_hint_token | login_hint, binding_message, scope=openid,
                        authorization_details
      -> {auth_req_id, expires_in, interval}                                       (§7)
    POST /token  grant_type=urn:openid:params:grant-type:ciba, auth_req_id
      -> authorization_pending | slow_down | access_denied | expired_token | tokens (§10, §11)

A client registered for ping mode (client metadata `backchannel_token_delivery_mode` "ping" and
its `backchannel_client_notification_endpoint`, fixtures/tenant/clients.json) must send a
`client_notification_token` with each request (§7.1); when the user answers or the request
expires, the tenant POSTs `{"auth_req_id"}` to that endpoint with the token as bearer (§10.2,
harness/verify/ciba_ping.py), and the client makes one token request instead of polling. It may
still poll (§7.3 gives it the interval): that is its fallback when a callback is lost.

What can be pushed (one authorization_details object): `agent_write_consent` for a live session of
the user (tier 2: consent to writes in that session), or a tier-3 operation (approval of exactly
that call). Tier 1 needs no approval and tier 4 can never be approved, so both are refused here.

Which session asks (§7.1, "deployment specific" hint): the MCP server sends the user's access
token, the one it is acting on (RFC 9068, issued here for the MCP server, live session), as
`login_hint_token`. The tenant verifies it and binds a tier-3 approval to that token's `sid`, so
only a token exchange in the same session can redeem it; for a tier-2 consent the session named
in authorization_details must be that token's session. `login_hint` (the user's email) is still
accepted, but a tier-3 approval pushed with it names no session and serves no exchange.

Each rule is one method: `authorize` and `grant` are the ordered lists of them. A refusal made
because the user's session has ended (the login_hint_token's at bc-authorize, the one the
approval was asked for at the token request) carries `iia.protocol.SESSION_ENDED`.

The user answers in the Verify app (harness/verify/verify_app.py, `/lab/phone`), with a passkey
assertion bound to the push; `answer` here is the recording step it calls once that verified.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urljoin, urlsplit

from scim2_models import User
from starlette.responses import JSONResponse

from harness.verify.approvals import Approvals, PushRequest
from harness.verify.audit import AuditTrail, Decision
from harness.verify.ciba_ping import PingCallbacks
from harness.verify.client_auth import Client
from harness.verify.directory import Directory
from harness.verify.errors import (
    NO_STORE,
    AccessDenied,
    AuthenticationRequestDenied,
    AuthorizationPending,
    ExpiredToken,
    InvalidAuthorizationDetails,
    InvalidBindingMessage,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    OAuthError,
    SessionEndedGrant,
    SessionEndedRequest,
    SlowDown,
    UnauthorizedClient,
)
from harness.verify.passkeys import Verified
from harness.verify.rar import RarRegistry, parse_authorization_details
from harness.verify.sessions import SessionStore
from harness.verify.tokens import TokenInvalid, TokenService
from iia.protocol import (
    ACCESS_TOKEN_TYP,
    CIBA_AUTH_REQ_ID_CLAIM,
    CIBA_GRANT,
    PASSKEY_ANSWER_CLAIM,
)
from iia.rar import RarType

__all__ = ["CIBA_GRANT", "DELIVERY_MODES", "Ciba", "PushLimits", "UnknownUserId",
           "ciba_delivery"]

MAX_BINDING_MESSAGE = 200
DELIVERY_MODES = ("poll", "ping")  # §4 backchannel_token_delivery_mode values served here
MAX_NOTIFICATION_TOKEN = 1024  # §7.1
MIN_NOTIFICATION_TOKEN = 22  # 128 bits (§7.1's minimum entropy) take 22 base64 characters
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1 b64token
PUSH_WINDOW = 60.0  # seconds: the "minute" of PushLimits.max_per_minute


@dataclass(frozen=True)
class PushLimits:
    """The tenant's push-flood limits, per user (fixtures/tenant/push_limits.json): at most
    `max_pending` pushes waiting on the phone at once, and at most `max_per_minute` pushes in
    any 60 s that the user has not approved (still pending, denied or expired). An approval is
    the user's own decision, not a flood. Beyond either, bc-authorize answers `access_denied`."""

    max_pending: int = 3
    max_per_minute: int = 10

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{f.name} must be a whole number of pushes, at least 1, "
                                 f"got {value!r}")


def ciba_delivery(raw: Mapping[str, Any], mcp_resource: str) -> tuple[str, str | None]:
    """A client's §4 CIBA delivery metadata from its registration (clients.json): the mode
    ("poll" unless it says "ping") and, for ping, the notification endpoint: an absolute URL, or
    one relative to the MCP server's URL (what the lab knows of the MCP server's address). §4
    asks for HTTPS; the lab's loopback services are plain HTTP, so http is accepted on a
    loopback host only."""
    client_id = raw.get("client_id", "?")
    mode = raw.get("backchannel_token_delivery_mode", "poll")
    endpoint = raw.get("backchannel_client_notification_endpoint")
    if mode not in DELIVERY_MODES:
        raise ValueError(f"client {client_id}: backchannel_token_delivery_mode {mode!r} is not "
                         f"served here (one of {', '.join(DELIVERY_MODES)})")
    if mode == "poll":
        if endpoint:
            raise ValueError(f"client {client_id}: a backchannel_client_notification_endpoint "
                             "is for ping mode; this client polls")
        return mode, None
    if not isinstance(endpoint, str) or not endpoint:
        raise ValueError(f"client {client_id}: ping mode needs a "
                         "backchannel_client_notification_endpoint (CIBA §4)")
    if not urlsplit(endpoint).scheme:
        if not mcp_resource:
            raise ValueError(f"client {client_id}: the notification endpoint {endpoint!r} is "
                             "relative and the tenant knows no MCP server URL to resolve it by")
        endpoint = urljoin(mcp_resource, endpoint)
    url = urlsplit(endpoint)
    loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
    if not url.hostname or not (url.scheme == "https" or (url.scheme == "http" and loopback)) \
            or url.fragment:
        raise ValueError(f"client {client_id}: the notification endpoint {endpoint!r} must be "
                         "an https URL (http on a loopback host in the lab), with no fragment")
    return mode, endpoint


def _answer_claims(push: PushRequest) -> dict[str, Any]:
    """The ID Token claims of an answered push: which request it answers (CIBA §10.3.1) and,
    when the user answered with a passkey in the Verify app, which passkey signed the answer,
    whether it verified the user, and the answer (iia.protocol.PASSKEY_ANSWER_CLAIM)."""
    claims: dict[str, Any] = {CIBA_AUTH_REQ_ID_CLAIM: push.auth_req_id}
    if push.answered_with is not None:
        claims[PASSKEY_ANSWER_CLAIM] = {
            "credentialIdDigest": push.answered_with, "userVerified": push.user_verified is True,
            "answer": "approve" if push.status == "approved" else "deny"}
    return claims


def _pushes(n: int) -> str:
    return f"{n} push" if n == 1 else f"{n} pushes"


class UnknownUserId(OAuthError):
    """CIBA §13: the hint does not identify a known, active user."""

    error = "unknown_user_id"


class ExpiredLoginHintToken(OAuthError):
    """CIBA §13: the login_hint_token has expired."""

    error = "expired_login_hint_token"


class Ciba:
    def __init__(self, *, directory: Directory, sessions: SessionStore, tokens: TokenService,
                 registry: RarRegistry, approvals: Approvals, audit: AuditTrail,
                 admin_api_url: str, mcp_resource: str,
                 clock: Callable[[], float] = time.time,
                 push_limits: PushLimits | None = None) -> None:
        self.limits = push_limits or PushLimits()
        self._push_lock = threading.Lock()  # counting a user's pushes and adding one: one step
        self.directory = directory
        self.mcp_resource = mcp_resource  # the audience of a login_hint_token
        self.sessions = sessions
        self.tokens = tokens
        self.registry = registry
        self.approvals = approvals
        self.audit = audit
        self.admin_api_url = admin_api_url
        self._clock = clock
        self.pings = PingCallbacks(approvals)  # §10.2 callbacks owed to ping clients

    # -- §7 backchannel authentication request ----------------------------------------------

    def authorize(self, client: Client, form: Mapping[str, str]) -> JSONResponse:
        """§7.1 the request's checks, in the order they run, then the push (§7.3)."""
        self._client_registered(client)
        notification_token = self._notification_token(client, form)
        self._openid_scope(client, form)
        user, hinted_sid = self._hinted_user(form)
        binding = self._binding_message(form)
        details, spec = self._one_object(form)
        session = self._approval_session(spec, details[0], user, hinted_sid)
        expiry = self._requested_expiry(form)
        push = self._push(client, user, spec, details, binding, session, expiry)
        self._owe_ping(client, push, notification_token)
        return JSONResponse({"auth_req_id": push.auth_req_id,
                             "expires_in": int(push.expires_at - push.created_at),
                             "interval": int(push.interval)},
                            headers=NO_STORE)

    def _client_registered(self, client: Client) -> None:
        """§13 `unauthorized_client`: the client is registered for CIBA (both endpoints)."""
        if CIBA_GRANT not in client.grant_types:
            raise UnauthorizedClient(f"{client.client_id} is not registered for CIBA")

    def _notification_token(self, client: Client, form: Mapping[str, str]) -> str | None:
        """§7.1 client_notification_token: required of a ping-mode client, a bearer token (RFC
        6750 §2.1 syntax) of 22 to 1024 characters (at least 128 bits, as §7.1 asks); a
        poll-mode client's is not used."""
        if client.backchannel_token_delivery_mode != "ping":  # noqa: S105 - a mode's name
            return None
        token = form.get("client_notification_token", "")
        if not token:
            raise InvalidRequest(f"client_notification_token is required: {client.client_id} "
                                 "is registered for CIBA ping mode, and the tenant calls it "
                                 "back with that bearer token")
        if not MIN_NOTIFICATION_TOKEN <= len(token) <= MAX_NOTIFICATION_TOKEN \
                or not _B64TOKEN.fullmatch(token):
            raise InvalidRequest(f"client_notification_token must be a bearer token (RFC 6750 "
                                 f"§2.1 characters) of {MIN_NOTIFICATION_TOKEN} to "
                                 f"{MAX_NOTIFICATION_TOKEN} characters")
        return token

    def _owe_ping(self, client: Client, push: PushRequest, token: str | None) -> None:
        """§10.2: a ping-mode client is called back when this push is answered or expires."""
        endpoint = client.backchannel_client_notification_endpoint
        if token is not None and endpoint:
            self.pings.register(push, endpoint, token)

    def _openid_scope(self, client: Client, form: Mapping[str, str]) -> None:
        """§7.1: a CIBA request asks for the `openid` scope, and only for scopes the client is
        registered for (§13 `invalid_scope`)."""
        scopes = form.get("scope", "").split()
        if "openid" not in scopes:
            raise InvalidScope("a CIBA request must ask for the openid scope")
        unregistered = sorted(set(scopes) - client.scopes)
        if unregistered:
            raise InvalidScope(f"{client.client_id} is not registered for the scope "
                               f"{' '.join(unregistered)}")

    def _binding_message(self, form: Mapping[str, str]) -> str:
        """§7.1 binding_message: required here, 1 to MAX_BINDING_MESSAGE characters (§13
        invalid_binding_message)."""
        binding = form.get("binding_message", "")
        if not binding or len(binding) > MAX_BINDING_MESSAGE:
            raise InvalidBindingMessage(f"binding_message is required (1 to {MAX_BINDING_MESSAGE} "
                                 "characters): it is what the user reads on the phone")
        return binding

    def _one_object(self, form: Mapping[str, str]) -> tuple[list[dict[str, Any]], RarType]:
        """RFC 9396 §5: exactly one authorization_details object, of a type the registry knows
        and that may be approved."""
        details = parse_authorization_details(form.get("authorization_details"))
        if len(details) != 1:
            raise InvalidAuthorizationDetails("push exactly one authorization_details object")
        return details, self.registry.validate(details[0], location=self.admin_api_url,
                                               approval=True)

    def _approval_session(self, spec: RarType, obj: Mapping[str, Any], user: User[Any],
                          hinted_sid: str | None) -> str | None:
        """The session the approval will belong to: a consent's own session, or the hint's for
        a tier-3 approval (which serves only the session that asked)."""
        if spec.name == "agent_write_consent":
            return self._consent_session(obj, user, hinted_sid)
        self._pushable_tier(spec)
        return hinted_sid

    def _consent_session(self, obj: Mapping[str, Any], user: User[Any],
                         hinted_sid: str | None) -> str:
        """Tier 2: the consent names a live session of this user, and with a
        login_hint_token, that token's session (consent is asked by the session it covers)."""
        session = str(obj["session"])
        owner = self.sessions.get(session)
        if owner is None or not owner.alive or owner.user_id != user.id:
            raise InvalidAuthorizationDetails("session is not a live session of this user")
        if hinted_sid is not None and session != hinted_sid:
            raise InvalidAuthorizationDetails("session is not the session of the "
                                              "login_hint_token: consent is asked for the "
                                              "session that makes the request")
        return session

    def _pushable_tier(self, spec: RarType) -> None:
        """Only tier 3 is pushed besides consent: tier 4 can never be approved (§13
        access_denied), tier 1 needs no approval."""
        if spec.tier == 4:
            raise AuthenticationRequestDenied(
                f"{spec.name} is blocked by tenant policy; there is nothing to approve")
        if spec.tier != 3:
            raise InvalidAuthorizationDetails(
                f"{spec.name} is tier {spec.tier}: only tier-2 session consent "
                "(agent_write_consent) and tier-3 operations are approved by push")

    def _requested_expiry(self, form: Mapping[str, str]) -> float | None:
        """§7.1 requested_expiry: seconds, clamped to 1 s .. the tenant's request TTL."""
        if not form.get("requested_expiry"):
            return None
        try:
            return max(1.0, min(float(form["requested_expiry"]), self.approvals.request_ttl))
        except ValueError as exc:
            raise InvalidRequest("requested_expiry must be a number of seconds") from exc

    def _push(self, client: Client, user: User[Any], spec: RarType,
              details: list[dict[str, Any]], binding: str, session: str | None,
              expiry: float | None) -> PushRequest:
        """Within the user's push limits, put the request on the phone and record it."""
        with self._push_lock:  # a flood of concurrent requests cannot all pass the count
            self._within_push_limits(client, user.id or "", user.user_name or "", spec.name,
                                     spec.tier, details[0], session)
            push = self.approvals.create(
                client_id=client.client_id, user_id=user.id or "", email=user.user_name or "",
                tier=spec.tier, binding_message=binding, authorization_details=details,
                session=session, expiry=expiry)
        self.audit.record(Decision(kind="ciba", outcome="pending", user=push.email,
                                   sid=session, client_id=client.client_id, rar_type=spec.name,
                                   tier=spec.tier, approval_id=push.id,
                                   target=str(details[0].get("target", "")) or None,
                                   reason=binding))
        return push

    def _within_push_limits(self, client: Client, user_id: str, email: str, rar_type: str,
                            tier: int, details: Mapping[str, Any], session: str | None) -> None:
        """Refuse (CIBA §13 access_denied, HTTP 403) a push beyond the user's flood limits,
        recording the refusal and its reason; the caller holds `_push_lock`."""
        limits = self.limits
        now = self.approvals.clock()
        pending = [p for p in self.approvals.pending() if p.user_id == user_id]
        unapproved = [p for p in self.approvals.all() if p.user_id == user_id
                      and p.status != "approved" and now - p.created_at < PUSH_WINDOW]
        if len(pending) >= limits.max_pending:
            limit, count, most = "max_pending", len(pending), limits.max_pending
            reason = (f"{email} already has {_pushes(count)} waiting for an answer on their "
                      f"phone (at most {most} at a time): the agent may ask again once they "
                      "answer one or it expires")
        elif len(unapproved) >= limits.max_per_minute:
            limit, count, most = "max_per_minute", len(unapproved), limits.max_per_minute
            wait = PUSH_WINDOW - (now - min(p.created_at for p in unapproved))
            reason = (f"{email} was sent {_pushes(count)} in the last minute that they did not "
                      f"approve (at most {most} a minute): the agent may ask again in "
                      f"{max(1, round(wait))} s")
        else:
            return
        self.audit.record(Decision(kind="ciba", outcome="refused", error="access_denied",
                                   reason=reason, user=email, sid=session,
                                   client_id=client.client_id, rar_type=rar_type, tier=tier,
                                   target=str(details.get("target", "")) or None,
                                   details={"limit": limit, "count": count, "max": most}))
        raise AuthenticationRequestDenied(reason)

    def _hinted_user(self, form: Mapping[str, str]) -> tuple[User[Any], str | None]:
        """§7.1: exactly one hint. The user it names and, for a login_hint_token (the user's
        access token for the MCP server), the session it belongs to."""
        if self._one_hint(form) == "login_hint":
            return self._login_hint_user(form["login_hint"]), None
        claims = self._hint_token_claims(form["login_hint_token"])
        self._hint_session_alive(claims)
        self._hint_not_delegated(claims)
        return self._hint_token_user(claims), str(claims["sid"])

    def _one_hint(self, form: Mapping[str, str]) -> str:
        """§7.1: exactly one of login_hint_token and login_hint (id_token_hint is not taken)."""
        hints = [h for h in ("login_hint", "login_hint_token", "id_token_hint") if form.get(h)]
        if hints not in (["login_hint"], ["login_hint_token"]):
            raise InvalidRequest("send exactly one hint: login_hint_token (the user's access "
                                 "token, which binds the approval to its session) or "
                                 "login_hint (the user's email)")
        return hints[0]

    def _login_hint_user(self, email: str) -> User[Any]:
        """§13 unknown_user_id: login_hint names an active user of this tenant."""
        user = self.directory.user_by_username(email)
        if user is None or not user.active or user.id is None:
            raise UnknownUserId("login_hint does not name an active user of this tenant")
        return user

    def _hint_token_claims(self, token: str) -> dict[str, Any]:
        """The login_hint_token is a user's access token of this tenant for the MCP server
        (RFC 9068: signature, issuer, typ, audience, expiry (§13 expired_login_hint_token), not
        revoked); its session is checked next, on its own."""
        try:
            return self.tokens.decode(token, typ=ACCESS_TOKEN_TYP, audience=self.mcp_resource,
                                      check_session=False)
        except TokenInvalid as exc:
            if str(exc) == "the token has expired":  # TokenService.decode's words
                raise ExpiredLoginHintToken("login_hint_token has expired") from exc
            raise InvalidRequest(f"login_hint_token is not a user's access token of this "
                                 f"tenant for the MCP server: {exc}") from exc

    def _hint_session_alive(self, claims: Mapping[str, Any]) -> None:
        """The login_hint_token's session is alive: nobody is asked on behalf of a session that
        has ended (`invalid_request`, marked `session_ended`, iia.protocol)."""
        if not self.sessions.alive(claims["sid"]):
            raise SessionEndedRequest.because("login_hint_token: the token's session",
                                              self.sessions.get(claims["sid"]))

    def _hint_not_delegated(self, claims: Mapping[str, Any]) -> None:
        """The login_hint_token is the user's own token, not an on-behalf-of token (`act`)."""
        if "act" in claims:
            raise InvalidRequest("login_hint_token is a delegated token, not the user's own")

    def _hint_token_user(self, claims: Mapping[str, Any]) -> User[Any]:
        """§13 unknown_user_id: the token's user is an active user of this tenant, now."""
        user = self.directory.user(str(claims["sub"]))
        if user is None or not user.active or user.id is None:
            raise UnknownUserId("login_hint_token does not name an active user of this tenant")
        return user

    # -- §10/§11 the token request ----------------------------------------------------------

    def grant(self, client: Client, form: Mapping[str, str]) -> JSONResponse:
        """§10.1 the token request's checks, in the order they run, then the tokens (§10.2)."""
        push = self._own_push(client, form)
        self._not_withdrawn(push)
        self._not_redeemed(push)
        self._push_session_alive(push)
        self._answered(push)
        self._redeem_once(push)
        self._push_user_active(push)
        self._takes_effect(push)
        return self._approval_tokens(client, push)

    def _own_push(self, client: Client, form: Mapping[str, str]) -> PushRequest:
        """§11 invalid_grant: auth_req_id names a request of this very client."""
        auth_req_id = form.get("auth_req_id")
        if not auth_req_id:
            raise InvalidRequest("auth_req_id is required")
        push = self.approvals.by_auth_req_id(auth_req_id)
        if push is None or push.client_id != client.client_id:
            raise InvalidGrant("auth_req_id is unknown or belongs to another client")
        return push

    def _not_withdrawn(self, push: PushRequest) -> None:
        """invalid_grant: the client withdrew this request (harness/verify/ciba_withdrawal.py),
        or its approval was voided before it was redeemed (withdrawn after the user approved,
        or the user's delegation withdrawn); nothing is issued for it."""
        if push.status == "withdrawn":
            raise InvalidGrant("auth_req_id was withdrawn by the client: nothing is issued "
                               "for it")
        if push.voided:
            raise InvalidGrant("auth_req_id was approved, then voided before it was redeemed "
                               "(withdrawn by the client, or the user's delegation was "
                               "withdrawn): nothing is issued for it")

    def _not_redeemed(self, push: PushRequest) -> None:
        """§11 invalid_grant: an auth_req_id is exchanged for tokens once."""
        if push.redeemed:
            raise InvalidGrant("auth_req_id was already exchanged for tokens")

    def _push_session_alive(self, push: PushRequest) -> None:
        """The session the approval was asked for (the login_hint_token's, or the consent's)
        is alive: when it has ended there is nothing left to approve for (`invalid_grant`,
        marked `session_ended`, iia.protocol)."""
        if push.session is not None and not self.sessions.alive(push.session):
            raise SessionEndedGrant.because("the session this approval was asked for",
                                            self.sessions.get(push.session))

    def _answered(self, push: PushRequest) -> None:
        """§11: expired_token, access_denied, slow_down or authorization_pending until the
        user has approved."""
        since = self.approvals.poll(push)
        if push.status == "expired":
            raise ExpiredToken("the request expired before the user answered")
        if push.status == "denied":
            self.approvals.redeem(push)
            raise AccessDenied("the user denied the request", **self._denial_id_token(push))
        if push.status == "pending":
            if since < push.interval:
                raise SlowDown(f"poll at most every {push.interval:g} s")
            raise AuthorizationPending("the user has not answered yet")

    def _redeem_once(self, push: PushRequest) -> None:
        """§11 invalid_grant: of two concurrent polls of an approval, one gets the tokens."""
        if not self.approvals.redeem(push):
            raise InvalidGrant("auth_req_id was already exchanged for tokens")

    def _takes_effect(self, push: PushRequest) -> None:
        """The approval takes effect as its tokens go to the client (harness/verify/
        approvals.py): the write consent or call approval is recorded now, not at the tap;
        `invalid_grant` if it was voided meanwhile."""
        if not self.approvals.take_effect(push):
            raise InvalidGrant("auth_req_id was voided before it was redeemed: nothing is "
                               "issued for it")

    def _push_user_active(self, push: PushRequest) -> None:
        """The user who approved is still an active user."""
        user = self.directory.user(push.user_id)
        if user is None or not user.active:
            raise InvalidGrant("the user is no longer active")

    def _approval_tokens(self, client: Client, push: PushRequest) -> JSONResponse:
        """§10.2. The approval authenticated the user on their device: as in any CIBA flow,
        that is a session of its own, at the requesting client. Its tokens are receipts for the
        client (aud = client_id), accepted by no resource server, and the session lapses with
        them."""
        session = self.sessions.create(push.user_id, push.email, client.client_id,
                                       lifetime=self.tokens.access_ttl)
        token, claims = self.tokens.approval_token(
            session, client_id=client.client_id, approval_id=push.id,
            authorization_details=push.authorization_details)
        id_token = self.tokens.id_token(session, client_id=client.client_id, nonce=None,
                                        name=None, alg=client.id_token_signed_response_alg,
                                        access_token=token, extra=_answer_claims(push))
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": claims["exp"] - claims["iat"], "id_token": id_token,
                             "authorization_details": push.authorization_details},
                            headers=NO_STORE)

    def _denial_id_token(self, push: PushRequest) -> dict[str, str]:
        """A denial signed with a passkey is attested like an approval: the access_denied
        error carries an ID Token (extension member `id_token`) with the same answer claims;
        it opens no session. A denial not made in the Verify app carries none."""
        if push.answered_with is None:
            return {}
        return {"id_token": self.tokens.sessionless_id_token(
            user_id=push.user_id, email=push.email, client_id=push.client_id,
            extra=_answer_claims(push))}

    # -- the phone --------------------------------------------------------------------------

    def answer(self, approval_id: str, approve: bool,
               signed: Verified | None = None) -> PushRequest:
        """Record the user's answer; `signed` is the passkey assertion that made it (verified by
        the Verify app), which the token response then attests (`passkey_claims`)."""
        push = self.approvals.answer(
            approval_id, approve,
            answered_with=signed.credential.digest if signed else None,
            user_verified=signed.user_verified if signed else None)
        details = push.authorization_details[0]
        self.audit.record(Decision(kind="ciba", outcome=push.status, user=push.email,
                                   sid=push.session, client_id=push.client_id,
                                   rar_type=details["type"], tier=push.tier,
                                   approval_id=push.id,
                                   target=str(details.get("target", "")) or None))
        return push
