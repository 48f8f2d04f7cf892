"""Each named check of the simulated Verify's CIBA endpoints (`Ciba.authorize` and `Ciba.grant`
are their ordered lists), called on its own with one violation: the error class and wire code
it raises, that the same input without the violation passes, and that nothing changed (the
tenant's decision record, directory, approvals, pushes, sessions). Then, over real HTTP, the
explicit session-ended signal (`iia.protocol.SESSION_ENDED`) at both CIBA endpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from harness.verify.approvals import PushRequest
from harness.verify.ciba import Ciba, ExpiredLoginHintToken, UnknownUserId
from harness.verify.client_auth import Client
from harness.verify.errors import (
    AccessDenied,
    AuthenticationRequestDenied,
    AuthorizationPending,
    ExpiredToken,
    InvalidAuthorizationDetails,
    InvalidBindingMessage,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    SessionEnded,
    SessionEndedGrant,
    SessionEndedRequest,
    SlowDown,
    UnauthorizedClient,
)
from iia.identity import WorkloadIdentity
from iia.protocol import CIBA_GRANT, SESSION_ENDED
from tests.helpers import bc_authorize, deactivated, poll, rar, sid_of, user_token
from tests.test_exchange_checks import refuses, state

HEIDI = "heidi@example.com"  # the pushes here go to heidi: alice's push limits stay as they are


@pytest.fixture
def c(lab: Lab) -> Ciba:
    return lab.verify.ciba


@pytest.fixture
def heidi(lab: Lab) -> dict[str, Any]:
    """A fresh session of heidi: her access token and its verified claims."""
    token = user_token(lab, HEIDI)["access_token"]
    return {"token": token, "claims": lab.verify.tokens.decode(token, typ="at+jwt")}


def heidi_user(lab: Lab) -> Any:
    user = lab.verify.directory.user_by_username(HEIDI)
    assert user is not None and user.id is not None
    return user


def push_of(**overrides: Any) -> PushRequest:
    """A push request as the approvals store keeps it, not registered anywhere."""
    now = time.time()
    fields: dict[str, Any] = {
        "id": "apv_checks", "auth_req_id": "req_checks", "client_id": "iia-mcp-server",
        "user_id": "u-nobody", "email": HEIDI, "tier": 3, "binding_message": "checks",
        "authorization_details": [{"type": "verify_deactivate_user", "target": "u-x"}],
        "created_at": now, "expires_at": now + 60, "interval": 1.0}
    fields.update(overrides)
    return PushRequest(**fields)


# -- §7.1 the backchannel authentication request ----------------------------------------------

def test_client_registered(lab: Lab, c: Ciba) -> None:
    refuses(lab, UnauthorizedClient, "unauthorized_client", c._client_registered,
            Client(client_id="iia-ui-like", public=False,
                   grant_types=frozenset({"authorization_code"})),
            words="not registered for CIBA")
    c._client_registered(Client(client_id="iia-mcp-server", public=False,
                                grant_types=frozenset({CIBA_GRANT})))


def test_openid_scope(lab: Lab, c: Ciba) -> None:
    client = lab.verify.clients.get("iia-mcp-server")
    for scope in ("", "profile", "openidx"):
        refuses(lab, InvalidScope, "invalid_scope", c._openid_scope, client, {"scope": scope},
                words="openid scope")
    # CIBA §13 invalid_scope: a scope the client is not registered for (iia-mcp-server: openid)
    for scope in ("openid profile", "openid admin:all"):
        refuses(lab, InvalidScope, "invalid_scope", c._openid_scope, client, {"scope": scope},
                words="iia-mcp-server is not registered for the scope")
    c._openid_scope(client, {"scope": "openid"})
    wider = Client(client_id="wide", public=False, grant_types=frozenset({CIBA_GRANT}))
    c._openid_scope(wider, {"scope": "profile openid"})


def test_binding_message(lab: Lab, c: Ciba) -> None:
    for message in ("", "x" * 201):  # CIBA §13 names this code
        refuses(lab, InvalidBindingMessage, "invalid_binding_message", c._binding_message,
                {"binding_message": message}, words="1 to 200 characters")
    assert c._binding_message({"binding_message": "x" * 200}) == "x" * 200


def test_one_object(lab: Lab, c: Ciba) -> None:
    good = rar(lab, "verify_deactivate_user", target="u-checks")
    details, spec = c._one_object({"authorization_details": json.dumps([good])})
    assert details == [good] and (spec.name, spec.tier) == ("verify_deactivate_user", 3)
    refuses(lab, InvalidAuthorizationDetails, "invalid_authorization_details", c._one_object,
            {"authorization_details": json.dumps([good, good])},
            words="push exactly one authorization_details object")
    refuses(lab, InvalidAuthorizationDetails, "invalid_authorization_details", c._one_object,
            {"authorization_details": json.dumps([{**good, "type": "verify_everything"}])},
            words="verify_everything")


def test_consent_session(lab: Lab, c: Ciba, heidi: dict[str, Any]) -> None:
    user, sid = heidi_user(lab), heidi["claims"]["sid"]
    consent = rar(lab, "agent_write_consent", session=sid, duration=1800)
    assert c._consent_session(consent, user, None) == sid
    assert c._consent_session(consent, user, sid) == sid
    refuses(lab, InvalidAuthorizationDetails, "invalid_authorization_details",
            c._consent_session, consent, user, "another-sid",
            words="not the session of the login_hint_token")
    alices = rar(lab, "agent_write_consent", session=sid_of(user_token(lab)["access_token"]),
                 duration=1800)
    refuses(lab, InvalidAuthorizationDetails, "invalid_authorization_details",
            c._consent_session, alices, user, None, words="not a live session of this user")
    lab.verify.sessions.end(sid, "user logged out")
    refuses(lab, InvalidAuthorizationDetails, "invalid_authorization_details",
            c._consent_session, consent, user, None, words="not a live session of this user")


def test_approval_session(lab: Lab, c: Ciba, heidi: dict[str, Any]) -> None:
    """Tier 3: the hint's session (None without one); consent: the consent's own."""
    user, sid = heidi_user(lab), heidi["claims"]["sid"]
    obj = rar(lab, "verify_deactivate_user", target="u-checks")
    spec = lab.verify.registry.validate(obj, location=lab.verify.admin_api_url, approval=True)
    assert c._approval_session(spec, obj, user, sid) == sid
    assert c._approval_session(spec, obj, user, None) is None
    consent = rar(lab, "agent_write_consent", session=sid, duration=1800)
    consent_spec = lab.verify.registry.validate(consent, location=lab.verify.admin_api_url,
                                                approval=True)
    assert c._approval_session(consent_spec, consent, user, None) == sid


def test_pushable_tier(lab: Lab, c: Ciba) -> None:
    registry, where = lab.verify.registry, lab.verify.admin_api_url

    def spec(type_: str, **fields: Any) -> Any:
        return registry.validate(rar(lab, type_, **fields), location=where)

    c._pushable_tier(spec("verify_deactivate_user", target="u-checks"))
    exc = refuses(lab, AuthenticationRequestDenied, "access_denied", c._pushable_tier,
                  spec("verify_delete_user", target="u-checks"),
                  words="blocked by tenant policy; there is nothing to approve")
    assert exc.response().status_code == 403
    refuses(lab, InvalidAuthorizationDetails, "invalid_authorization_details",
            c._pushable_tier, spec("verify_read_users"), words="is tier 1")


def test_requested_expiry(lab: Lab, c: Ciba) -> None:
    refuses(lab, InvalidRequest, "invalid_request", c._requested_expiry,
            {"requested_expiry": "soon"}, words="a number of seconds")
    assert c._requested_expiry({}) is None
    assert c._requested_expiry({"requested_expiry": "30"}) == 30.0
    assert c._requested_expiry({"requested_expiry": "0"}) == 1.0
    assert c._requested_expiry({"requested_expiry": "1e9"}) == lab.verify.approvals.request_ttl


# -- §7.1 the hint ------------------------------------------------------------------------------

def test_one_hint(lab: Lab, c: Ciba) -> None:
    for hints in ({}, {"login_hint": HEIDI, "login_hint_token": "t"},
                  {"id_token_hint": "t"}, {"login_hint": HEIDI, "id_token_hint": "t"}):
        refuses(lab, InvalidRequest, "invalid_request", c._one_hint, hints,
                words="send exactly one hint")
    assert c._one_hint({"login_hint": HEIDI}) == "login_hint"
    assert c._one_hint({"login_hint_token": "t", "login_hint": ""}) == "login_hint_token"


def test_login_hint_user(lab: Lab, c: Ciba) -> None:
    assert c._login_hint_user(HEIDI).user_name == HEIDI
    refuses(lab, UnknownUserId, "unknown_user_id", c._login_hint_user, "nobody@example.com",
            words="does not name an active user")
    with deactivated(lab, HEIDI):
        refuses(lab, UnknownUserId, "unknown_user_id", c._login_hint_user, HEIDI,
                words="does not name an active user")


def test_hint_token_claims(lab: Lab, c: Ciba, heidi: dict[str, Any]) -> None:
    claims = heidi["claims"]
    keys = lab.verify.keys
    assert c._hint_token_claims(heidi["token"])["sid"] == claims["sid"]
    refuses(lab, ExpiredLoginHintToken, "expired_login_hint_token", c._hint_token_claims,
            keys.sign({**claims, "exp": int(time.time()) - 5}, typ="at+jwt"),
            words="login_hint_token has expired")
    refuses(lab, InvalidRequest, "invalid_request", c._hint_token_claims,
            keys.sign({**claims, "aud": lab.verify.admin_api_url}, typ="at+jwt"),
            words="not a user's access token of this tenant for the MCP server")
    refuses(lab, InvalidRequest, "invalid_request", c._hint_token_claims, "not-a-token",
            words="not a JWT")
    # the session is the next check's: a token whose session ended still decodes here
    lab.verify.sessions.end(claims["sid"], "user logged out")
    assert c._hint_token_claims(heidi["token"])["sid"] == claims["sid"]


def test_hint_session_alive(lab: Lab, c: Ciba, heidi: dict[str, Any]) -> None:
    claims = heidi["claims"]
    c._hint_session_alive(claims)
    lab.verify.sessions.end(claims["sid"], "user logged out")
    exc = refuses(lab, SessionEndedRequest, "invalid_request", c._hint_session_alive, claims,
                  words="login_hint_token: the token's session has ended (user logged out)")
    assert exc.body()[SESSION_ENDED] is True and isinstance(exc, SessionEnded)


def test_hint_not_delegated(lab: Lab, c: Ciba, heidi: dict[str, Any]) -> None:
    c._hint_not_delegated(heidi["claims"])
    refuses(lab, InvalidRequest, "invalid_request", c._hint_not_delegated,
            {**heidi["claims"], "act": {"sub": WORKLOAD_SPIFFE_ID}}, words="delegated token")


def test_hint_token_user(lab: Lab, c: Ciba, heidi: dict[str, Any]) -> None:
    claims = heidi["claims"]
    assert c._hint_token_user(claims).user_name == HEIDI
    refuses(lab, UnknownUserId, "unknown_user_id", c._hint_token_user,
            {**claims, "sub": "u-nobody"}, words="does not name an active user")
    with deactivated(lab, HEIDI):
        refuses(lab, UnknownUserId, "unknown_user_id", c._hint_token_user, claims,
                words="does not name an active user")


# -- §10/§11 the token request ------------------------------------------------------------------

@pytest.fixture
def another_clients_push(lab: Lab) -> Iterator[PushRequest]:
    """A push of heidi's that another client started; approved afterwards (an approval is no
    flood, so it does not count against her push limits)."""
    push = lab.verify.approvals.create(
        client_id="another-client", user_id=heidi_user(lab).id, email=HEIDI, tier=3,
        binding_message="checks", session=None,
        authorization_details=[rar(lab, "verify_deactivate_user", target="u-checks-own")])
    yield push
    lab.verify.approvals.answer(push.id, True)


def test_own_push(lab: Lab, c: Ciba, another_clients_push: PushRequest) -> None:
    mine = Client(client_id="iia-mcp-server", public=False, grant_types=frozenset({CIBA_GRANT}))
    theirs = Client(client_id="another-client", public=False,
                    grant_types=frozenset({CIBA_GRANT}))
    refuses(lab, InvalidRequest, "invalid_request", c._own_push, mine, {},
            words="auth_req_id is required")
    for auth_req_id in ("req_unknown", another_clients_push.auth_req_id):
        refuses(lab, InvalidGrant, "invalid_grant", c._own_push, mine,
                {"auth_req_id": auth_req_id}, words="unknown or belongs to another client")
    assert c._own_push(theirs, {"auth_req_id": another_clients_push.auth_req_id}).id == \
        another_clients_push.id


def test_not_redeemed(lab: Lab, c: Ciba) -> None:
    c._not_redeemed(push_of())
    refuses(lab, InvalidGrant, "invalid_grant", c._not_redeemed, push_of(redeemed=True),
            words="already exchanged")


def test_push_session_alive(lab: Lab, c: Ciba, heidi: dict[str, Any]) -> None:
    sid = heidi["claims"]["sid"]
    c._push_session_alive(push_of(session=sid))
    c._push_session_alive(push_of(session=None))  # a login_hint push names no session
    lab.verify.sessions.end(sid, "CAEP session-revoked")
    exc = refuses(lab, SessionEndedGrant, "invalid_grant", c._push_session_alive,
                  push_of(session=sid),
                  words="the session this approval was asked for has ended "
                        "(CAEP session-revoked)")
    assert exc.body()[SESSION_ENDED] is True


def test_answered(lab: Lab, c: Ciba) -> None:
    refuses(lab, ExpiredToken, "expired_token", c._answered, push_of(status="expired"),
            words="expired before the user answered")
    denied = push_of(status="denied")
    exc = refuses(lab, AccessDenied, "access_denied", c._answered, denied,
                  words="the user denied")
    assert denied.redeemed and SESSION_ENDED not in exc.body()  # a denial is final
    pending = push_of()
    refuses(lab, AuthorizationPending, "authorization_pending", c._answered, pending,
            words="not answered yet")
    refuses(lab, SlowDown, "slow_down", c._answered, pending, words="poll at most every 1 s")
    c._answered(push_of(status="approved"))


def test_redeem_once(lab: Lab, c: Ciba) -> None:
    push = push_of(status="approved")
    c._redeem_once(push)
    assert push.redeemed
    refuses(lab, InvalidGrant, "invalid_grant", c._redeem_once, push,
            words="already exchanged")


def test_push_user_active(lab: Lab, c: Ciba) -> None:
    user_id = heidi_user(lab).id
    c._push_user_active(push_of(user_id=user_id))
    refuses(lab, InvalidGrant, "invalid_grant", c._push_user_active,
            push_of(user_id="u-nobody"), words="no longer active")
    with deactivated(lab, HEIDI):
        refuses(lab, InvalidGrant, "invalid_grant", c._push_user_active,
                push_of(user_id=user_id), words="no longer active")


# -- over HTTP: the explicit session-ended signal ---------------------------------------------

def test_a_push_refused_because_the_session_ended_says_so_in_a_member(
        lab: Lab, identity: WorkloadIdentity, heidi: dict[str, Any]) -> None:
    lab.verify.sessions.end(heidi["claims"]["sid"], "user logged out")
    obj = rar(lab, "verify_deactivate_user", target="u-checks-http")
    was = state(lab)
    response = bc_authorize(lab, identity, HEIDI, obj, login_hint=None,
                            login_hint_token=heidi["token"])
    body = response.json()
    assert response.status_code == 400 and body["error"] == "invalid_request", body
    assert body[SESSION_ENDED] is True and "session has ended (user logged out)" in \
        body["error_description"]
    assert state(lab) == was  # nothing reached the phone, nothing recorded
    # another invalid_request (two hints) carries no such member
    two = bc_authorize(lab, identity, HEIDI, obj, login_hint=HEIDI,
                       login_hint_token=heidi["token"])
    assert two.status_code == 400 and two.json()["error"] == "invalid_request"
    assert SESSION_ENDED not in two.json() and state(lab) == was


def test_polling_an_approval_whose_session_ended_says_so_in_a_member(
        lab: Lab, identity: WorkloadIdentity, heidi: dict[str, Any]) -> None:
    """The user approved on the phone, then their session ended (here: signed out) before the
    MCP server polled: the approval has no session left to serve, and the poll says why in
    the member, with no tokens and no receipt session."""
    obj = rar(lab, "verify_deactivate_user", target=f"u-checks-{time.time_ns()}")
    started = bc_authorize(lab, identity, HEIDI, obj, login_hint=None,
                           login_hint_token=heidi["token"])
    assert started.status_code == 200, started.text
    auth_req_id = started.json()["auth_req_id"]
    push = lab.verify.approvals.by_auth_req_id(auth_req_id)
    assert push is not None and push.session == heidi["claims"]["sid"]
    lab.verify.ciba.answer(push.id, True)
    lab.verify.sessions.end(heidi["claims"]["sid"], "user logged out")
    was = state(lab)
    response = poll(lab, identity, auth_req_id)
    body = response.json()
    assert response.status_code == 400 and body["error"] == "invalid_grant", body
    assert body[SESSION_ENDED] is True and "access_token" not in body
    assert "the session this approval was asked for has ended (user logged out)" in \
        body["error_description"]
    assert state(lab) == was and not push.redeemed
    # another invalid_grant (an auth_req_id nobody issued) carries no such member
    unknown = poll(lab, identity, "req-nobody-issued")
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_grant"
    assert SESSION_ENDED not in unknown.json() and state(lab) == was


def test_a_live_sessions_approval_still_polls_tokens(lab: Lab, identity: WorkloadIdentity,
                                                     heidi: dict[str, Any]) -> None:
    """The same flow without the session ending: tokens, so the check above is about the
    session and nothing else."""
    obj = rar(lab, "verify_deactivate_user", target=f"u-checks-{time.time_ns()}")
    started = bc_authorize(lab, identity, HEIDI, obj, login_hint=None,
                           login_hint_token=heidi["token"])
    assert started.status_code == 200, started.text
    push = lab.verify.approvals.by_auth_req_id(started.json()["auth_req_id"])
    assert push is not None
    lab.verify.ciba.answer(push.id, True)
    tokens = poll(lab, identity, started.json()["auth_req_id"])
    assert tokens.status_code == 200, tokens.text
    assert jwt.decode(tokens.json()["access_token"],
                      options={"verify_signature": False})["authorization_details"] == [obj]
