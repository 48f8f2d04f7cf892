"""Each named check of the simulated Verify's RFC 8693 token exchange (`TokenExchange._grant` is
their ordered list), called on its own with one violation: the error class and wire code it
raises, that the same input without the violation passes, and that nothing changed (the tenant's
decision record, directory, approvals, pushes, sessions). Then, over real HTTP, the explicit
session-ended signal (`iia.protocol.SESSION_ENDED`) and the two actor-token rules py-spiffe's
validator brought to light.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from harness.keyset import SigningKey
from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from harness.verify.approvals import CallApproval
from harness.verify.client_auth import Client
from harness.verify.errors import (
    AccessDenied,
    InvalidAuthorizationDetails,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    SessionEnded,
    SessionEndedGrant,
    UnauthorizedClient,
)
from harness.verify.token_exchange import TemporarilyUnavailable, TokenExchange
from iia.identity import WorkloadIdentity
from iia.jwks import JwksUnavailableError
from iia.protocol import (
    ID_TOKEN_TYPE,
    SESSION_ENDED,
    TOKEN_EXCHANGE_GRANT,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT,
)
from tests.helpers import deactivated, exchange, rar, sid_of, user_token
from tests.test_rules_exchange import before, refused
from tests.test_vault import hs256_with_public_key

OTHER_WORKLOAD = "spiffe://iia.lab/other-workload"


# -- what must not change ---------------------------------------------------------------------

@dataclass(frozen=True)
class State:
    decisions: int
    directory: list[tuple[Any, ...]]
    call_approvals: list[tuple[str, str | None, bool]]
    pushes: list[tuple[str, str, bool]]
    sessions: list[tuple[str, bool]]


def state(lab: Lab) -> State:
    verify = lab.verify
    users = verify.directory.users()
    return State(
        decisions=len(verify.audit),
        directory=[(u.id, u.user_name, u.active,
                    sorted(g.id or "" for g in verify.directory.groups_of(u.id or "")))
                   for u in users],
        call_approvals=[(a.id, a.session, a.used) for a in verify.approvals.call_approvals()],
        pushes=[(p.id, p.status, p.redeemed) for p in verify.approvals.all()],
        sessions=sorted((s.sid, s.alive) for u in users
                        for s in verify.sessions.sessions_of(u.id or "")))


def refuses(lab: Lab, error: type[OAuthError], code: str, check: Callable[..., object],
            *args: Any, words: str = "") -> OAuthError:
    """`check(*args)` raises exactly `error` (wire code `code`, a description holding `words`)
    and changes nothing; returns the error."""
    was = state(lab)
    with pytest.raises(OAuthError) as caught:
        check(*args)
    exc = caught.value
    assert type(exc) is error, exc
    assert exc.error == code and exc.body()["error"] == code
    assert words in exc.description and exc.body()["error_description"] == exc.description
    assert state(lab) == was
    return exc


@pytest.fixture
def x(lab: Lab) -> TokenExchange:
    return lab.verify.exchange


@pytest.fixture
def alice_claims(lab: Lab) -> dict[str, Any]:
    """A fresh session's access token of alice, verified by the tenant."""
    token = user_token(lab)["access_token"]
    return lab.verify.tokens.decode(token, typ="at+jwt")


def form(lab: Lab, **overrides: str | None) -> dict[str, str]:
    """A token-exchange form that passes every request-shape check; None drops a field."""
    base: dict[str, str | None] = {
        "subject_token": "a-subject-token", "subject_token_type": TOKEN_TYPE_ACCESS_TOKEN,
        "actor_token": "an-actor-token", "actor_token_type": TOKEN_TYPE_JWT,
        "audience": lab.verify.admin_api_url}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


# -- the request (RFC 8693 §2.1) ---------------------------------------------------------------

def test_client_may_exchange(lab: Lab, x: TokenExchange) -> None:
    other = Client(client_id="iia-ui-like", public=False,
                   grant_types=frozenset({"authorization_code"}))
    refuses(lab, UnauthorizedClient, "unauthorized_client", x._client_may_exchange, other,
            words="may not use token exchange")
    x._client_may_exchange(Client(client_id="iia-mcp-server", public=False,
                                  grant_types=frozenset({TOKEN_EXCHANGE_GRANT})))


@pytest.mark.parametrize("case,overrides,words", [
    ("no subject_token", {"subject_token": None}, "subject_token is required"),
    ("no subject_token_type", {"subject_token_type": None}, "subject_token_type is required"),
    ("a JWT, not an access token", {"subject_token_type": TOKEN_TYPE_JWT},
     f"must be {TOKEN_TYPE_ACCESS_TOKEN}"),
])
def test_subject_token_params(lab: Lab, x: TokenExchange, case: str,
                              overrides: dict[str, str | None], words: str) -> None:
    refuses(lab, InvalidRequest, "invalid_request", x._subject_token_params,
            form(lab, **overrides), words=words)
    x._subject_token_params(form(lab))


@pytest.mark.parametrize("case,overrides,words", [
    ("no actor: impersonation", {"actor_token": None}, "never impersonation"),
    ("an ID token as actor", {"actor_token_type": ID_TOKEN_TYPE}, "a JWT-SVID"),
    ("no actor_token_type", {"actor_token_type": None}, f"must be {TOKEN_TYPE_JWT}"),
])
def test_actor_token_params(lab: Lab, x: TokenExchange, case: str,
                            overrides: dict[str, str | None], words: str) -> None:
    refuses(lab, InvalidRequest, "invalid_request", x._actor_token_params,
            form(lab, **overrides), words=words)
    x._actor_token_params(form(lab))


def test_requested_token_type(lab: Lab, x: TokenExchange) -> None:
    refuses(lab, InvalidRequest, "invalid_request", x._requested_token_type,
            form(lab, requested_token_type=ID_TOKEN_TYPE), words="only access tokens")
    x._requested_token_type(form(lab))
    x._requested_token_type(form(lab, requested_token_type=TOKEN_TYPE_ACCESS_TOKEN))


@pytest.mark.parametrize("case,overrides,words", [
    ("no audience", {"audience": None}, "name the admin API"),
    ("another audience", {"audience": "https://elsewhere.example"}, "not https://elsewhere"),
    ("another resource beside it", {"resource": "https://elsewhere.example/v2.0"},
     "not https://elsewhere"),
])
def test_audience_is_admin_api(lab: Lab, x: TokenExchange, case: str,
                               overrides: dict[str, str | None], words: str) -> None:
    refuses(lab, InvalidTarget, "invalid_target", x._audience_is_admin_api,
            form(lab, **overrides), words=words)
    x._audience_is_admin_api(form(lab))
    x._audience_is_admin_api(form(lab, audience=None, resource=lab.verify.admin_api_url + "/"))


def test_no_scope(lab: Lab, x: TokenExchange) -> None:
    refuses(lab, InvalidScope, "invalid_scope", x._no_scope, form(lab, scope="users:write"),
            words="authorization_details, not scope")
    x._no_scope(form(lab))


# -- the subject ------------------------------------------------------------------------------

def test_subject(lab: Lab, x: TokenExchange) -> None:
    tokens = user_token(lab)
    refuses(lab, InvalidGrant, "invalid_grant", x._subject, "not-a-jwt", {},
            words="subject_token: the token is not a JWT")
    # an ID token (RS256 by default) is refused by its algorithm before its typ
    refuses(lab, InvalidGrant, "invalid_grant", x._subject, tokens["id_token"], {},
            words="subject_token: algorithm 'RS256' is not accepted")
    ctx: dict[str, Any] = {}
    assert x._subject(tokens["access_token"], ctx)["sid"] == sid_of(tokens["access_token"])
    assert ctx == {"user": "alice@example.com", "sid": sid_of(tokens["access_token"])}
    # the session is the next check's: a token whose session ended still decodes here
    lab.verify.sessions.end(sid_of(tokens["access_token"]), "user logged out")
    assert x._subject(tokens["access_token"], {})["sub"] == ctx_user_id(lab)


def ctx_user_id(lab: Lab, email: str = "alice@example.com") -> str:
    user = lab.verify.directory.user_by_username(email)
    assert user is not None and user.id is not None
    return user.id


def test_subject_session_alive(lab: Lab, x: TokenExchange,
                               alice_claims: dict[str, Any]) -> None:
    x._subject_session_alive(alice_claims)
    lab.verify.sessions.end(alice_claims["sid"], "user logged out")
    exc = refuses(lab, SessionEndedGrant, "invalid_grant", x._subject_session_alive,
                  alice_claims, words="session has ended (user logged out)")
    assert exc.body()[SESSION_ENDED] is True and isinstance(exc, SessionEnded)
    # a session that lapsed on its own has no end reason
    lapsed = lab.verify.sessions.create(alice_claims["sub"], "alice@example.com", "iia-ui",
                                        lifetime=-1)
    refuses(lab, SessionEndedGrant, "invalid_grant", x._subject_session_alive,
            {**alice_claims, "sid": lapsed.sid}, words="session has ended (it lapsed)")


def test_subject_for_mcp_server(lab: Lab, x: TokenExchange,
                                alice_claims: dict[str, Any]) -> None:
    refuses(lab, InvalidGrant, "invalid_grant", x._subject_for_mcp_server,
            {**alice_claims, "aud": lab.verify.admin_api_url}, words="not issued for the MCP")
    x._subject_for_mcp_server(alice_claims)


def test_subject_not_delegated(lab: Lab, x: TokenExchange,
                               alice_claims: dict[str, Any]) -> None:
    refuses(lab, InvalidGrant, "invalid_grant", x._subject_not_delegated,
            {**alice_claims, "act": {"sub": WORKLOAD_SPIFFE_ID}}, words="itself delegated")
    x._subject_not_delegated(alice_claims)


def test_subject_user_active(lab: Lab, x: TokenExchange) -> None:
    dave = jwt.decode(user_token(lab, "dave@example.com")["access_token"],
                      options={"verify_signature": False})
    assert x._subject_user_active(dave).user_name == "dave@example.com"
    refuses(lab, InvalidGrant, "invalid_grant", x._subject_user_active,
            {**dave, "sub": "u-nobody"}, words="not an active user")
    with deactivated(lab, "dave@example.com"):
        refuses(lab, InvalidGrant, "invalid_grant", x._subject_user_active, dave,
                words="not an active user")


# -- the actor --------------------------------------------------------------------------------

def svid_claims(lab: Lab, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": WORKLOAD_SPIFFE_ID, "aud": lab.verify.issuer, "iat": now, "exp": now + 300,
              "iss": lab.endpoints["spiffe_oidc"]}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def test_actor_trust_domain(lab: Lab, x: TokenExchange) -> None:
    keys = lab.authority.keys
    assert x._actor_trust_domain(keys.sign(svid_claims(lab))) == "iia.lab"
    refuses(lab, InvalidGrant, "invalid_grant", x._actor_trust_domain,
            keys.sign(svid_claims(lab, sub="workload")), words="not a JWT-SVID")
    refuses(lab, InvalidGrant, "invalid_grant", x._actor_trust_domain, "not-a-jwt",
            words="not a JWT-SVID")


def test_actor_trusted(lab: Lab, x: TokenExchange) -> None:
    x._actor_trusted("iia.lab")
    refuses(lab, InvalidGrant, "invalid_grant", x._actor_trusted, "evil.lab",
            words="trust domain 'evil.lab', which this tenant does not trust")


def _svid_cases(lab: Lab) -> dict[str, tuple[str, str]]:
    keys = lab.authority.keys
    now = int(time.time())
    good = svid_claims(lab)
    return {
        "expired": (keys.sign(svid_claims(lab, iat=now - 400, exp=now - 60)),
                    "token has expired"),
        "audience vault": (lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, ["vault"]),
                           f"audience {lab.verify.issuer!r} is not in the token's audiences"),
        "signed by a stranger": (keys.sign(good, key=SigningKey.generate(now)),
                                 "key is not in the bundle"),
        "forged under our kid": (
            keys.sign(good, key=SigningKey(kid=keys.current.kid,
                                           private_key=SigningKey.generate(now).private_key,
                                           created_at=now)), "signature does not verify"),
        "alg none": (jwt.encode(good, None, algorithm="none",
                                headers={"kid": keys.current.kid}), "algorithm is not allowed"),
        "HS256 with the public key": (hs256_with_public_key(good, keys.current),
                                      "algorithm is not allowed"),
        "no exp": (keys.sign(svid_claims(lab, exp=None)), "token has no exp claim"),
        "typ at+jwt": (keys.sign(good, typ="at+jwt"), "token type is not a JWT-SVID"),
    }


@pytest.mark.parametrize("case", ["expired", "audience vault", "signed by a stranger",
                                  "forged under our kid", "alg none",
                                  "HS256 with the public key", "no exp", "typ at+jwt"])
def test_actor_svid(lab: Lab, x: TokenExchange, identity: WorkloadIdentity, case: str) -> None:
    """SPIFFE JWT-SVID §4 by py-spiffe (`no exp`: py-spiffe 0.3.2 alone raises KeyError)."""
    token, words = _svid_cases(lab)[case]
    refuses(lab, InvalidGrant, "invalid_grant", x._actor_svid, token,
            words=f"actor_token: {words}")
    assert x._actor_svid(identity.svid(lab.verify.issuer).token)["sub"] == WORKLOAD_SPIFFE_ID


class _Unreachable:
    def bundles(self, kid: str | None = None) -> dict[str, dict[str, Any]]:
        raise JwksUnavailableError("the SPIFFE bundle endpoint did not answer",
                                   dependency="spire")


def test_actor_svid_without_a_bundle_is_temporarily_unavailable(
        lab: Lab, x: TokenExchange, identity: WorkloadIdentity,
        monkeypatch: pytest.MonkeyPatch) -> None:
    token = identity.svid(lab.verify.issuer).token
    monkeypatch.setattr(x, "spiffe", _Unreachable())
    exc = refuses(lab, TemporarilyUnavailable, "temporarily_unavailable", x._actor_svid, token,
                  words="trust bundle is unreachable")
    assert exc.response().status_code == 503


def test_actor_for_this_idp_only(lab: Lab, x: TokenExchange) -> None:
    issuer = lab.verify.issuer
    for aud in (issuer, [issuer], [issuer, issuer]):
        x._actor_for_this_idp_only({"sub": WORKLOAD_SPIFFE_ID, "aud": aud})
    refuses(lab, InvalidGrant, "invalid_grant", x._actor_for_this_idp_only,
            {"sub": WORKLOAD_SPIFFE_ID, "aud": [issuer, "vault"]},
            words="also valid for 'vault'")


# -- delegation -------------------------------------------------------------------------------

def test_may_act_names_actor(lab: Lab, x: TokenExchange, alice_claims: dict[str, Any]) -> None:
    x._may_act_names_actor(alice_claims, WORKLOAD_SPIFFE_ID)
    for no_may_act in ({k: v for k, v in alice_claims.items() if k != "may_act"},
                       {**alice_claims, "may_act": WORKLOAD_SPIFFE_ID},
                       {**alice_claims, "may_act": {}}):
        refuses(lab, InvalidGrant, "invalid_grant", x._may_act_names_actor, no_may_act,
                WORKLOAD_SPIFFE_ID, words="has not delegated to any agent (no may_act)")
    refuses(lab, InvalidGrant, "invalid_grant", x._may_act_names_actor, alice_claims,
            OTHER_WORKLOAD, words=f"does not name the actor {OTHER_WORKLOAD}")


def test_delegation_live(lab: Lab, x: TokenExchange) -> None:
    directory = lab.verify.directory
    alice_user = directory.user_by_username("alice@example.com")
    dave_user = directory.user_by_username("dave@example.com")
    assert alice_user is not None and alice_user.id and dave_user is not None and dave_user.id
    alice = directory.user_record(alice_user.id)
    dave = directory.user_record(dave_user.id)
    assert alice is not None and dave is not None
    x._delegation_live(alice, WORKLOAD_SPIFFE_ID)
    refuses(lab, InvalidGrant, "invalid_grant", x._delegation_live, dave, WORKLOAD_SPIFFE_ID,
            words="dave@example.com has withdrawn the delegation")
    refuses(lab, InvalidGrant, "invalid_grant", x._delegation_live, alice, OTHER_WORKLOAD,
            words="no longer honoured")


# -- what the token is for, and the policy ----------------------------------------------------

def test_authorization_details(lab: Lab, x: TokenExchange) -> None:
    good = rar(lab, "verify_read_user", target="u-checks")
    ctx: dict[str, Any] = {}
    obj, spec = x._authorization_details({"authorization_details": json.dumps([good])}, ctx)
    assert obj == good and (spec.name, spec.tier) == ("verify_read_user", 1)
    assert ctx == {"rar_type": "verify_read_user", "tier": 1, "target": "u-checks"}
    for bad, words in (([good, good], "exactly one authorization_details object"),
                       ([], "non-empty JSON array"),
                       ([{**good, "type": "verify_everything"}], "verify_everything")):
        refuses(lab, InvalidAuthorizationDetails, "invalid_authorization_details",
                x._authorization_details, {"authorization_details": json.dumps(bad)}, {},
                words=words)


@pytest.fixture
def heidi_approval(lab: Lab) -> Iterator[tuple[dict[str, Any], dict[str, Any], CallApproval]]:
    """heidi approved (on the phone) exactly one tier-3 call in one of her sessions, and the
    MCP server redeemed it: her claims in that session, the object, and the recorded
    approval."""
    tokens = user_token(lab, "heidi@example.com")
    claims = lab.verify.tokens.decode(tokens["access_token"], typ="at+jwt")
    obj = rar(lab, "verify_deactivate_user", target=f"u-checks-{time.time_ns()}")
    push = lab.verify.approvals.create(
        client_id="iia-mcp-server", user_id=claims["sub"], email="heidi@example.com", tier=3,
        binding_message="checks", authorization_details=[obj], session=claims["sid"])
    lab.verify.approvals.answer(push.id, True)
    assert lab.verify.approvals.redeem(push)  # the MCP server's token request took it
    assert lab.verify.approvals.take_effect(push)
    approval = next(a for a in lab.verify.approvals.call_approvals(claims["sub"])
                    if a.id == push.id)
    yield claims, obj, approval
    lab.verify.approvals.void_user(claims["sub"])


def test_call_approval(lab: Lab, x: TokenExchange,
                       heidi_approval: tuple[dict[str, Any], dict[str, Any], CallApproval]
                       ) -> None:
    """A lookup, not a refusal: the approval of exactly this object in this session, found and
    not spent (the policy decides; `_call_approval_single_use` spends it)."""
    claims, obj, approval = heidi_approval
    spec = lab.verify.registry.validate(obj, location=lab.verify.admin_api_url)
    was = state(lab)
    ctx: dict[str, Any] = {}
    found = x._call_approval(claims, spec, obj, ctx)
    assert found is not None and found.id == approval.id and not found.used
    assert ctx == {"approval_id": approval.id}
    other_session = {**claims, "sid": "another-session"}
    assert x._call_approval(other_session, spec, obj, {}) is None
    assert x._call_approval(claims, spec, {**obj, "target": "u-other"}, {}) is None
    tier1 = rar(lab, "verify_read_users")
    assert x._call_approval(claims, lab.verify.registry.validate(
        tier1, location=lab.verify.admin_api_url), tier1, {}) is None
    assert state(lab) == was


def test_policy(lab: Lab, x: TokenExchange, alice_claims: dict[str, Any]) -> None:
    registry, where = lab.verify.registry, lab.verify.admin_api_url
    read = rar(lab, "verify_read_users")
    allowed = x._policy(alice_claims, WORKLOAD_SPIFFE_ID, read,
                        registry.validate(read, location=where), None)
    assert allowed.allowed and allowed.policy_id == "tier1-read"
    for type_, policy_id in (("verify_delete_user", "tier4-blocked"),
                             ("verify_deactivate_user", "tier3-needs-call-approval")):
        obj = rar(lab, type_, target="u-checks-policy")
        exc = refuses(lab, AccessDenied, "access_denied", x._policy, alice_claims,
                      WORKLOAD_SPIFFE_ID, obj, registry.validate(obj, location=where), None,
                      words=f"(policy {policy_id})")
        assert exc.body()["policy_id"] == policy_id and SESSION_ENDED not in exc.body()


def test_call_approval_single_use(lab: Lab, x: TokenExchange) -> None:
    spent = CallApproval(id="apv_spent", user_id="u", session="s", details={}, approved_at=0,
                         used=True)
    exc = refuses(lab, AccessDenied, "access_denied", x._call_approval_single_use, spent,
                  words="already used")
    assert exc.body()["policy_id"] == "tier3-needs-call-approval"
    fresh = CallApproval(id="apv_fresh", user_id="u", session="s", details={}, approved_at=0)
    x._call_approval_single_use(fresh)
    assert fresh.used  # spent by the check: a second use is the refusal above
    x._call_approval_single_use(None)


# -- over HTTP: the explicit session-ended signal ---------------------------------------------

def test_an_exchange_refused_because_the_session_ended_says_so_in_a_member(
        lab: Lab, identity: WorkloadIdentity) -> None:
    token = user_token(lab)["access_token"]
    lab.verify.sessions.end(sid_of(token), "user logged out")
    was = before(lab)
    response = exchange(lab, identity, token, rar(lab, "verify_read_users"))
    decision = refused(response, "invalid_grant", lab, was,
                       reason="the token's session has ended (user logged out)")
    assert response.json()[SESSION_ENDED] is True
    assert (decision.user, decision.sid) == ("alice@example.com", sid_of(token))


@pytest.mark.parametrize("case", ["no may_act", "delegated subject"])
def test_another_invalid_grant_carries_no_session_ended(lab: Lab, identity: WorkloadIdentity,
                                                        case: str) -> None:
    if case == "no may_act":
        token, words = user_token(lab, "dave@example.com")["access_token"], "no may_act"
    else:
        claims = jwt.decode(user_token(lab)["access_token"], options={"verify_signature": False})
        token = lab.verify.keys.sign({**claims, "act": {"sub": WORKLOAD_SPIFFE_ID}},
                                     typ="at+jwt")
        words = "itself delegated"
    was = before(lab)
    response = exchange(lab, identity, token, rar(lab, "verify_read_users"))
    refused(response, "invalid_grant", lab, was, reason=words)
    assert SESSION_ENDED not in response.json()


# -- over HTTP: the actor rules py-spiffe's validator brought to light ------------------------

def test_an_actor_svid_also_valid_at_vault_is_refused(lab: Lab,
                                                      identity: WorkloadIdentity) -> None:
    """A JWT-SVID for [the IdP, vault] verifies for the IdP's audience (py-spiffe: aud contains
    it), but whoever it is sent to could log in to Vault with it: the IdP takes it only when
    it is the sole audience."""
    actor = lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, [lab.verify.issuer, "vault"])
    was = before(lab)
    decision = refused(exchange(lab, identity, user_token(lab)["access_token"],
                                rar(lab, "verify_read_users"), actor_token=actor),
                       "invalid_grant", lab, was, reason="also valid for 'vault'")
    assert decision.actor is None


def test_an_actor_svid_without_exp_is_invalid_grant(lab: Lab,
                                                    identity: WorkloadIdentity) -> None:
    """JWT-SVID §3 requires exp; py-spiffe 0.3.2's parse_and_validate raises KeyError on a
    signed token without it (a 500), so validation.py checks the claims first."""
    actor = lab.authority.keys.sign(svid_claims(lab, exp=None))
    was = before(lab)
    refused(exchange(lab, identity, user_token(lab)["access_token"],
                     rar(lab, "verify_read_users"), actor_token=actor),
            "invalid_grant", lab, was, reason="actor_token: token has no exp claim")
