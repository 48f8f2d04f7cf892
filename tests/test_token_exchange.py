"""RFC 8693 token exchange with RFC 9396 authorization_details at the simulated Verify, over real
HTTP, with the MCP server's real workload identity (JWT-SVID actor, Vault-held credential)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import jwt
import pytest

from harness.keyset import SigningKey
from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from harness.spire import JwtAuthority, RegistrationEntry
from harness.spire.attestor import lab_substitutions
from iia.identity import IdentitySettings, WorkloadIdentity
from tests.helpers import approve_next, exchange, rar, sid_of, user_token
from tests.test_vault import hs256_with_public_key


@pytest.fixture(scope="module")
def alice(lab: Lab) -> dict:
    return user_token(lab, "alice@example.com")


def issued_count(lab: Lab) -> int:
    return len(lab.verify.audit.decisions("token_exchange")) and sum(
        1 for d in lab.verify.audit.decisions("token_exchange") if d.outcome == "issued")


def refused(response, error: str, lab: Lab, before: int) -> str:
    """Assert an OAuth error and that no token was minted; return the description."""
    body = response.json()
    assert response.status_code in (400, 401, 403), response.text
    assert body["error"] == error, body
    assert "access_token" not in body
    assert issued_count(lab) == before
    return body["error_description"]


# -- the happy path ---------------------------------------------------------------------------

def test_tier1_exchange_mints_an_obo_token_for_exactly_this_operation(
        lab: Lab, identity: WorkloadIdentity, alice: dict) -> None:
    details = rar(lab, "verify_read_users", summary="Read SCIM users, limit=50")
    response = exchange(lab, identity, alice["access_token"], details)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "Bearer" and body["expires_in"] == 900
    assert body["authorization_details"] == [details]
    header = jwt.get_unverified_header(body["access_token"])
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    user = jwt.decode(alice["access_token"], options={"verify_signature": False})
    assert header["typ"] == "at+jwt"
    assert claims["aud"] == lab.verify.admin_api_url
    assert claims["act"] == {"sub": WORKLOAD_SPIFFE_ID}
    assert claims["authorization_details"] == [details]
    assert claims["sub"] == user["sub"] and claims["sid"] == user["sid"]
    assert claims["exp"] - claims["iat"] == 900 and claims["jti"]
    decision = lab.verify.audit.last("token_exchange")
    assert decision.outcome == "issued" and decision.policy_id == "tier1-read"
    assert decision.jti == claims["jti"] and decision.user == "alice@example.com"


def test_user_tokens_carry_may_act_only_when_delegated(lab: Lab) -> None:
    alice = jwt.decode(user_token(lab, "alice@example.com")["access_token"],
                       options={"verify_signature": False})
    dave = jwt.decode(user_token(lab, "dave@example.com")["access_token"],
                      options={"verify_signature": False})
    assert alice["may_act"] == {"sub": WORKLOAD_SPIFFE_ID}
    assert "may_act" not in dave


# -- the subject token ------------------------------------------------------------------------

def forged_user_tokens(lab: Lab, alice: dict) -> dict[str, str]:
    base = jwt.decode(alice["access_token"], options={"verify_signature": False})
    keys = lab.verify.keys
    now = int(time.time())
    stranger = SigningKey.generate(time.time())
    return {
        "expired": keys.sign({**base, "iat": now - 1000, "exp": now - 60}, typ="at+jwt"),
        "wrong audience": keys.sign({**base, "aud": "https://elsewhere.example"}, typ="at+jwt"),
        "wrong issuer": keys.sign({**base, "iss": "https://evil.example"}, typ="at+jwt"),
        "alg none": jwt.encode(base, None, algorithm="none",
                               headers={"typ": "at+jwt", "kid": keys.current.kid}),
        "HS256 with the public key": hs256_with_public_key(base, keys.current),
        "wrong typ (an ID token)": alice["id_token"],
        "signed by a stranger": keys.sign(base, typ="at+jwt", key=stranger),
    }


@pytest.mark.parametrize("case", ["expired", "wrong audience", "wrong issuer", "alg none",
                                  "HS256 with the public key", "wrong typ (an ID token)",
                                  "signed by a stranger"])
def test_bad_subject_tokens_are_invalid_grant(lab: Lab, identity: WorkloadIdentity,
                                              alice: dict, case: str) -> None:
    token = forged_user_tokens(lab, alice)[case]
    before = issued_count(lab)
    refused(exchange(lab, identity, token, rar(lab, "verify_read_users")), "invalid_grant",
            lab, before)
    assert lab.verify.audit.last("token_exchange").outcome == "denied"


def test_missing_subject_token_is_invalid_request(lab: Lab, identity: WorkloadIdentity) -> None:
    before = issued_count(lab)
    refused(exchange(lab, identity, None, rar(lab, "verify_read_users")),  # type: ignore[arg-type]
            "invalid_request", lab, before)


def test_an_obo_token_cannot_be_exchanged_again(lab: Lab, identity: WorkloadIdentity,
                                                 alice: dict) -> None:
    obo = exchange(lab, identity, alice["access_token"],
                   rar(lab, "verify_read_users")).json()["access_token"]
    before = issued_count(lab)
    refused(exchange(lab, identity, obo, rar(lab, "verify_read_users")), "invalid_grant", lab,
            before)


# -- the actor --------------------------------------------------------------------------------

@pytest.fixture
def other_workload(lab: Lab) -> Iterator[WorkloadIdentity]:
    me = lab_substitutions()
    entry = lab.workload_api.registry.add(RegistrationEntry(
        "spiffe://iia.lab/other-workload", frozenset({f"unix:uid:{me['LAB_UID']}"})))
    ident = WorkloadIdentity(IdentitySettings.from_env(
        lab.iia_env(), spiffe_id="spiffe://iia.lab/other-workload"))
    yield ident
    ident.close()
    lab.workload_api.registry.remove(entry)


def test_actor_not_named_by_may_act_is_refused(lab: Lab, identity: WorkloadIdentity,
                                                alice: dict,
                                                other_workload: WorkloadIdentity) -> None:
    actor = other_workload.svid(lab.verify.issuer).token  # a genuine SVID, of another workload
    before = issued_count(lab)
    why = refused(exchange(lab, identity, alice["access_token"], rar(lab, "verify_read_users"),
                           actor_token=actor), "invalid_grant", lab, before)
    assert "may_act" in why


def test_user_who_did_not_delegate_is_refused(lab: Lab, identity: WorkloadIdentity) -> None:
    dave = user_token(lab, "dave@example.com")
    before = issued_count(lab)
    why = refused(exchange(lab, identity, dave["access_token"], rar(lab, "verify_read_users")),
                  "invalid_grant", lab, before)
    assert "delegated" in why


def test_svid_from_another_trust_domain_is_refused(lab: Lab, identity: WorkloadIdentity,
                                                    alice: dict) -> None:
    evil = JwtAuthority("evil.lab", "http://evil")
    actor = evil.sign_svid("spiffe://evil.lab/agentic-workload", [lab.verify.issuer])
    before = issued_count(lab)
    why = refused(exchange(lab, identity, alice["access_token"], rar(lab, "verify_read_users"),
                           actor_token=actor), "invalid_grant", lab, before)
    assert "evil.lab" in why


@pytest.mark.parametrize("case", ["expired", "audience vault", "signed by a stranger",
                                  "alg none"])
def test_bad_actor_tokens_are_refused(lab: Lab, identity: WorkloadIdentity, alice: dict,
                                      case: str) -> None:
    now = int(time.time())
    good = {"sub": WORKLOAD_SPIFFE_ID, "aud": lab.verify.issuer, "iat": now, "exp": now + 300,
            "iss": lab.endpoints["spiffe_oidc"]}
    keys = lab.authority.keys
    token = {
        "expired": lambda: keys.sign({**good, "iat": now - 400, "exp": now - 60}),
        "audience vault": lambda: lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, ["vault"]),
        "signed by a stranger": lambda: keys.sign(good, key=SigningKey.generate(now)),
        "alg none": lambda: jwt.encode(good, None, algorithm="none",
                                       headers={"kid": keys.current.kid}),
    }[case]()
    before = issued_count(lab)
    refused(exchange(lab, identity, alice["access_token"], rar(lab, "verify_read_users"),
                     actor_token=token), "invalid_grant", lab, before)


def test_impersonation_without_actor_is_refused(lab: Lab, identity: WorkloadIdentity,
                                                alice: dict) -> None:
    before = issued_count(lab)
    response = exchange(lab, identity, alice["access_token"], rar(lab, "verify_read_users"),
                        actor_token=None, actor_token_type=None)
    assert "impersonation" in refused(response, "invalid_request", lab, before)


# -- authorization_details --------------------------------------------------------------------

def test_rar_validation(lab: Lab, identity: WorkloadIdentity, alice: dict) -> None:
    good = rar(lab, "verify_read_user", target="u-1")
    cases = {
        "unknown type": {**good, "type": "verify_everything"},
        "extra field": {**good, "reason": "because"},
        "wrong field type": {**good, "tier": "1"},
        "missing field": {k: v for k, v in good.items() if k != "target"},
        "missing digest": {k: v for k, v in good.items() if k != "digest"},
        "malformed digest": {**good, "digest": "md5:abc"},
        "wrong tier claimed": {**rar(lab, "verify_delete_user", target="u-1"), "tier": 1},
        "wrong actions": {**good, "actions": ["read", "delete"]},
        "wrong location": {**good, "locations": ["https://other.example/v2.0"]},
        "target mismatch": {**good, "locations": [f"{lab.verify.admin_api_url}/Users/u-2"]},
        "approval-only type": rar(lab, "agent_write_consent", session="s", duration=1800),
    }
    for case, obj in cases.items():
        before = issued_count(lab)
        response = exchange(lab, identity, alice["access_token"], obj)
        refused(response, "invalid_authorization_details", lab, before)
        assert response.json()["error_description"], case
    before = issued_count(lab)
    refused(exchange(lab, identity, alice["access_token"], [good, good]),
            "invalid_authorization_details", lab, before)
    refused(exchange(lab, identity, alice["access_token"], "not json"),
            "invalid_authorization_details", lab, before)


def test_rar_target_mismatch(lab: Lab, identity: WorkloadIdentity, alice: dict) -> None:
    """RFC 9396 §2.2: `locations` may name the admin API or exactly the resource the object
    covers; a location naming another user than `target` is refused, and so is a target that
    is not one path segment (it would name another resource once filled into the path)."""
    api = lab.verify.admin_api_url
    good = rar(lab, "verify_read_user", target="u-1")
    exact = {**good, "locations": [f"{api}/Users/u-1"]}
    cases = {
        "target mismatch": ({**good, "locations": [f"{api}/Users/u-2"]},
                            f"verify_read_user: target mismatch: locations name {api}/Users/u-2, "
                            f"but the object's target 'u-1' names {api}/Users/u-1"),
        "group mismatch": ({**rar(lab, "verify_add_group_member", target="u-1", group="g-1"),
                            "locations": [f"{api}/Groups/g-2"]},
                           "verify_add_group_member: target mismatch: locations name "
                           f"{api}/Groups/g-2, but the object's group 'g-1' names "
                           f"{api}/Groups/g-1"),
        "target is two segments": (rar(lab, "verify_read_user", target="u-1/sessions"),
                                   "verify_read_user: target 'u-1/sessions' is not one path "
                                   "segment"),
        "resource of another type": ({**rar(lab, "verify_read_users"),
                                      "locations": [f"{api}/Users/u-1"]},
                                     f"verify_read_users: locations must be [{api!r}] or "
                                     f"[{api + '/Users'!r}]"),
    }
    for case, (obj, description) in cases.items():
        before = issued_count(lab)
        decisions = len(lab.verify.audit.decisions("token_exchange"))
        response = exchange(lab, identity, alice["access_token"], obj)
        assert refused(response, "invalid_authorization_details", lab, before) == description, \
            case
        refusal = lab.verify.audit.decisions("token_exchange")[decisions:]
        assert [(d.outcome, d.error, d.reason) for d in refusal] == [
            ("denied", "invalid_authorization_details", description)], case
    # the exact resource is a valid location: the token carries it unchanged
    issued = exchange(lab, identity, alice["access_token"], exact)
    assert issued.status_code == 200, issued.text
    assert issued.json()["authorization_details"] == [exact]


def test_audience_must_be_the_admin_api(lab: Lab, identity: WorkloadIdentity,
                                        alice: dict) -> None:
    before = issued_count(lab)
    refused(exchange(lab, identity, alice["access_token"], rar(lab, "verify_read_users"),
                     audience="https://evil.example/api"), "invalid_target", lab, before)
    refused(exchange(lab, identity, alice["access_token"], rar(lab, "verify_read_users"),
                     audience=None), "invalid_target", lab, before)


def test_only_access_tokens_and_no_scopes(lab: Lab, identity: WorkloadIdentity,
                                          alice: dict) -> None:
    before = issued_count(lab)
    refused(exchange(lab, identity, alice["access_token"], rar(lab, "verify_read_users"),
                     requested_token_type="urn:ietf:params:oauth:token-type:id_token"),
            "invalid_request", lab, before)
    refused(exchange(lab, identity, alice["access_token"], rar(lab, "verify_read_users"),
                     scope="admin"), "invalid_scope", lab, before)


# -- the tiers --------------------------------------------------------------------------------

def test_tier4_is_always_refused_by_policy(lab: Lab, identity: WorkloadIdentity,
                                           alice: dict) -> None:
    for obj in (rar(lab, "verify_delete_user", target="u-ivan"),
                rar(lab, "verify_grant_admin_role", target="u-ivan")):
        before = issued_count(lab)
        response = exchange(lab, identity, alice["access_token"], obj)
        why = refused(response, "access_denied", lab, before)
        assert response.status_code == 400  # RFC 6749 §5.2: every token-endpoint error
        assert "tier4-blocked" in why and response.json()["policy_id"] == "tier4-blocked"
        decision = lab.verify.audit.last("token_exchange")
        assert decision.policy_id == "tier4-blocked" and decision.tier == 4


def test_tier4_push_is_refused_so_nothing_can_unlock_it(lab: Lab,
                                                        identity: WorkloadIdentity) -> None:
    from tests.helpers import bc_authorize

    response = bc_authorize(lab, identity, "alice@example.com",
                            rar(lab, "verify_delete_user", target="u-ivan"))
    assert response.status_code == 403 and response.json()["error"] == "access_denied"


def test_admin_group_membership_is_refused_even_with_consent(lab: Lab,
                                                             identity: WorkloadIdentity) -> None:
    tokens = user_token(lab)
    sid = sid_of(tokens["access_token"])
    consent = rar(lab, "agent_write_consent", session=sid, duration=1800)
    assert approve_next(lab, identity, "alice@example.com", consent).status_code == 200
    obj = rar(lab, "verify_add_group_member", target="u-ivan",
              group=lab.verify.directory.admin_group_id)
    before = issued_count(lab)
    response = exchange(lab, identity, tokens["access_token"], obj)
    assert "no-admin-group-by-membership" in refused(response, "access_denied", lab, before)


def test_tier2_needs_session_consent_which_lasts_30_minutes(
        lab: Lab, identity: WorkloadIdentity) -> None:
    from tests.conftest import FakeClock

    tokens = user_token(lab)
    obj = rar(lab, "verify_create_user", target="zoe@example.com")
    before = issued_count(lab)
    response = exchange(lab, identity, tokens["access_token"], obj)
    assert "tier2-needs-session-approval" in refused(response, "access_denied", lab, before)

    clock = FakeClock()
    original = lab.verify.approvals.clock
    lab.verify.approvals.clock = clock
    try:
        consent = rar(lab, "agent_write_consent", session=sid_of(tokens["access_token"]),
                      duration=1800)
        assert approve_next(lab, identity, "alice@example.com", consent).status_code == 200
        assert exchange(lab, identity, tokens["access_token"], obj).status_code == 200
        clock.advance(29 * 60)
        assert exchange(lab, identity, tokens["access_token"], obj).status_code == 200
        clock.advance(2 * 60)  # 31 minutes after the approval
        before = issued_count(lab)
        response = exchange(lab, identity, tokens["access_token"], obj)
        assert "tier2-needs-session-approval" in refused(response, "access_denied", lab, before)
    finally:
        lab.verify.approvals.clock = original


def test_consent_in_one_session_does_not_cover_another(lab: Lab,
                                                       identity: WorkloadIdentity) -> None:
    session_a, session_b = user_token(lab), user_token(lab)
    assert sid_of(session_a["access_token"]) != sid_of(session_b["access_token"])
    consent = rar(lab, "agent_write_consent", session=sid_of(session_a["access_token"]),
                  duration=1800)
    assert approve_next(lab, identity, "alice@example.com", consent).status_code == 200
    obj = rar(lab, "verify_create_user", target="yan@example.com")
    assert exchange(lab, identity, session_a["access_token"], obj).status_code == 200
    before = issued_count(lab)
    refused(exchange(lab, identity, session_b["access_token"], obj), "access_denied", lab,
            before)


def test_tier3_needs_an_approval_of_exactly_this_call_used_once(
        lab: Lab, identity: WorkloadIdentity, alice: dict) -> None:
    obj = rar(lab, "verify_deactivate_user", target="u-mike")
    before = issued_count(lab)
    response = exchange(lab, identity, alice["access_token"], obj)
    assert "tier3-needs-call-approval" in refused(response, "access_denied", lab, before)

    assert approve_next(lab, identity, "alice@example.com", obj,
                        session_token=alice["access_token"]).status_code == 200
    other_target = rar(lab, "verify_deactivate_user", target="u-nina")
    other_summary = {**obj, "summary": "Deactivate someone else"}  # what the user read differs
    for mismatch in (other_target, other_summary):
        before = issued_count(lab)
        refused(exchange(lab, identity, alice["access_token"], mismatch), "access_denied", lab,
                before)
    # a digest that is not the object's own is no object at all (and spends no approval)
    before = issued_count(lab)
    refused(exchange(lab, identity, alice["access_token"], {**obj, "digest": "sha256:" + "0" * 64}),
            "invalid_authorization_details", lab, before)
    issued = exchange(lab, identity, alice["access_token"], obj)
    assert issued.status_code == 200, issued.text
    assert lab.verify.audit.last("token_exchange").approval_id
    before = issued_count(lab)
    refused(exchange(lab, identity, alice["access_token"], obj), "access_denied", lab, before)


def test_tier3_approval_of_one_user_does_not_serve_another(lab: Lab,
                                                           identity: WorkloadIdentity) -> None:
    obj = rar(lab, "verify_revoke_user_sessions", target="u-oscar")
    assert approve_next(lab, identity, "alice@example.com", obj).status_code == 200
    bob = user_token(lab, "bob@example.com")
    before = issued_count(lab)
    refused(exchange(lab, identity, bob["access_token"], obj), "access_denied", lab, before)


def test_a_denied_push_leaves_no_approval(lab: Lab, identity: WorkloadIdentity,
                                          alice: dict) -> None:
    obj = rar(lab, "verify_deactivate_user", target="u-peggy")
    response = approve_next(lab, identity, "alice@example.com", obj, approve=False)
    assert response.json()["error"] == "access_denied"
    before = issued_count(lab)
    refused(exchange(lab, identity, alice["access_token"], obj), "access_denied", lab, before)


# -- the client -------------------------------------------------------------------------------

def test_a_wrong_client_secret_is_invalid_client(lab: Lab, alice: dict,
                                                 identity: WorkloadIdentity) -> None:
    import httpx

    response = httpx.post(f"{lab.verify.issuer}/token", auth=("iia-mcp-server", "guess"), data={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": alice["access_token"],
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "actor_token": identity.svid(lab.verify.issuer).token,
        "actor_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "audience": lab.verify.admin_api_url,
        "authorization_details": json.dumps([rar(lab, "verify_read_users")])})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_the_public_client_may_not_exchange(lab: Lab, alice: dict,
                                            identity: WorkloadIdentity) -> None:
    import httpx

    response = httpx.post(f"{lab.verify.issuer}/token", data={
        "client_id": "iia-ui", "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": alice["access_token"],
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"})
    assert response.json()["error"] == "unauthorized_client"
