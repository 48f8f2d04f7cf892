"""Security rules of token exchange, the tenant policy, tier-3 approvals, the actor SVID, the
code flow and the RAR digest that a mutation run found untested (issue #11): each test here fails
when its rule is removed, over real HTTP against the session lab.

Every refusal is checked on the wire (the OAuth `error`) and for what must not have happened: no
on-behalf-of token minted, the tenant's decision record showing the refusal and its reason, the
approval still unspent, the directory unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hvac
import jwt
import pytest

from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from harness.spire import JwtAuthority, RegistrationEntry
from harness.spire.attestor import lab_substitutions
from harness.spire.validation import validate_jwt_svid
from harness.verify.audit import Decision
from harness.verify.spiffe_bundle import SpiffeBundleSource
from iia.identity import IdentitySettings, WorkloadIdentity
from iia.rar import details_digest
from tests.agent_helpers import mcp_call, phone, user_id
from tests.conftest import FakeClock
from tests.helpers import approve_next, bc_authorize, deactivated, exchange, rar, user_token
from tests.test_verify_oidc import authorize, redeem, redirect_params

OTHER_WORKLOAD = "spiffe://iia.lab/other-workload"
FOREIGN_DOMAIN = "evil.lab"
FOREIGN_AGENT = f"spiffe://{FOREIGN_DOMAIN}/agentic-workload"


# -- what must not change ---------------------------------------------------------------------

def issued_count(lab: Lab) -> int:
    return sum(1 for d in lab.verify.audit.decisions("token_exchange") if d.outcome == "issued")


def directory_state(lab: Lab) -> list[tuple[Any, ...]]:
    directory = lab.verify.directory
    return [(u.id, u.user_name, u.active,
             sorted(g.id or "" for g in directory.groups_of(u.id or "")))
            for u in directory.users()]


@dataclass(frozen=True)
class Before:
    issued: int
    decisions: int
    directory: list[tuple[Any, ...]]


def before(lab: Lab) -> Before:
    return Before(issued_count(lab), len(lab.verify.audit), directory_state(lab))


def refused(response: httpx.Response, error: str, lab: Lab, was: Before, *,
            reason: str, policy_id: str | None = None) -> Decision:
    """The exchange was refused with `error`, nothing was minted or changed, and the tenant
    recorded exactly this refusal with `reason` in it; returns that decision."""
    body = response.json()
    assert response.status_code in (400, 401, 403), response.text
    assert body["error"] == error, body
    assert "access_token" not in body
    assert reason in body["error_description"], body
    assert issued_count(lab) == was.issued
    new = lab.verify.audit.since(was.decisions, "token_exchange")
    assert [(d.outcome, d.error, d.reason) for d in new] == [
        ("denied", error, body["error_description"])]
    if policy_id is not None:
        assert body["policy_id"] == policy_id and new[0].policy_id == policy_id
    assert directory_state(lab) == was.directory
    return new[0]


# -- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def alice(lab: Lab) -> dict[str, Any]:
    return user_token(lab, "alice@example.com")


@pytest.fixture
def other_workload(lab: Lab) -> Iterator[WorkloadIdentity]:
    """A genuinely attested workload of the lab's trust domain that is not the agent."""
    me = lab_substitutions()
    entry = lab.workload_api.registry.add(RegistrationEntry(
        OTHER_WORKLOAD, frozenset({f"unix:uid:{me['LAB_UID']}"})))
    ident = WorkloadIdentity(IdentitySettings.from_env(lab.iia_env(), spiffe_id=OTHER_WORKLOAD))
    yield ident
    ident.close()
    lab.workload_api.registry.remove(entry)


@pytest.fixture
def delegate_to(lab: Lab) -> Iterator[Callable[[str], None]]:
    """Make the tenant's delegation name another workload (the users' `may_act` names it),
    restored after the test."""
    directory = lab.verify.directory
    original = directory.agent_spiffe_id

    def set_agent(spiffe_id: str) -> None:
        directory.agent_spiffe_id = spiffe_id

    yield set_agent
    directory.agent_spiffe_id = original


class FederatedBundle:
    """The tenant's SPIFFE bundle source plus a federated trust domain's keys: a tenant that
    knows a foreign domain's keys but does not list it among the domains it trusts for actors."""

    def __init__(self, home: SpiffeBundleSource, domain: str, keys: Mapping[str, Any]) -> None:
        self.home = home
        self.domain = domain
        self.keys = dict(keys)

    def bundles(self, kid: str | None = None) -> dict[str, dict[str, Any]]:
        return {**self.home.bundles(None if kid in self.keys else kid), self.domain: self.keys}


@pytest.fixture
def federated(lab: Lab) -> Iterator[JwtAuthority]:
    foreign = JwtAuthority(FOREIGN_DOMAIN, "http://spiffe.evil.lab")
    exchange_grant = lab.verify.exchange
    home = exchange_grant.spiffe
    exchange_grant.spiffe = FederatedBundle(home, FOREIGN_DOMAIN,  # type: ignore[assignment]
                                            foreign.keys.public_keys())
    yield foreign
    exchange_grant.spiffe = home


@pytest.fixture
def recorded_exchanges(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, str]]:
    """The token-exchange forms as the tenant's token endpoint received them (never logged)."""
    seen: list[dict[str, str]] = []
    handler = lab.verify.exchange.grant  # what the token endpoint's exchange grant calls

    def record(client: Any, form: Any) -> Any:
        seen.append({k: str(v) for k, v in form.items()})
        return handler(client, form)

    monkeypatch.setattr(lab.verify.exchange, "grant", record)
    return seen


@pytest.fixture
def approvals_clock(lab: Lab) -> Iterator[FakeClock]:
    clock = FakeClock()
    approvals = lab.verify.approvals
    original = approvals.clock
    approvals.clock = clock
    yield clock
    approvals.clock = original


@pytest.fixture
def edited_policy(lab: Lab, tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """Serve the tenant's policy plus `extra` from a copy (the fixtures file is shared by every
    engineer's lab), restored after the test."""
    policy = lab.verify.policy
    original = policy.path

    def install(extra: str) -> None:
        copy = tmp_path / "token_exchange.cedar"
        copy.write_text(original.read_text() + extra)
        policy.path = copy

    yield install
    policy.path = original


def approved_push_id(lab: Lab, details: Mapping[str, Any]) -> str:
    pushes = [p for p in lab.verify.approvals.all()
              if p.authorization_details == [dict(details)] and p.status == "approved"]
    assert pushes
    return pushes[-1].id


# -- 1. the subject token may not itself be delegated -------------------------------------------

def test_a_delegated_subject_token_is_refused(lab: Lab, identity: WorkloadIdentity,
                                              alice: dict[str, Any]) -> None:
    """A token for the MCP server, signed by this tenant, with a live session and may_act, but
    carrying `act`: exchanging it would build a delegation chain."""
    claims = jwt.decode(alice["access_token"], options={"verify_signature": False})
    delegated = lab.verify.keys.sign({**claims, "act": {"sub": WORKLOAD_SPIFFE_ID}},
                                     typ="at+jwt")
    was = before(lab)
    decision = refused(exchange(lab, identity, delegated, rar(lab, "verify_read_users")),
                       "invalid_grant", lab, was, reason="itself delegated")
    assert decision.user == "alice@example.com"
    # the same token without `act` is accepted: only the delegation was refused
    plain = lab.verify.keys.sign(claims, typ="at+jwt")
    assert exchange(lab, identity, plain, rar(lab, "verify_read_users")).status_code == 200


# -- 2. the actor's trust domain must be on the allow-list -------------------------------------

def test_an_actor_of_an_untrusted_trust_domain_is_refused_even_with_its_keys_known(
        lab: Lab, identity: WorkloadIdentity, federated: JwtAuthority,
        delegate_to: Callable[[str], None]) -> None:
    """The tenant knows evil.lab's keys (federation) and the user's may_act names the evil.lab
    workload: only the trust-domain allow-list stands between that actor and a token."""
    delegate_to(FOREIGN_AGENT)
    subject = user_token(lab, "alice@example.com")["access_token"]
    actor = federated.sign_svid(FOREIGN_AGENT, [lab.verify.issuer])
    kid = jwt.get_unverified_header(actor)["kid"]
    bundles = lab.verify.exchange.spiffe.bundles(kid)
    assert validate_jwt_svid(actor, bundles, lab.verify.issuer)["sub"] == FOREIGN_AGENT
    was = before(lab)
    decision = refused(exchange(lab, identity, subject, rar(lab, "verify_read_users"),
                                actor_token=actor),
                       "invalid_grant", lab, was, reason=f"trust domain {FOREIGN_DOMAIN!r}")
    assert "does not trust" in decision.reason and decision.actor is None


# -- 3. an inactive user cannot delegate ------------------------------------------------------

def test_a_deactivated_user_cannot_delegate(lab: Lab, identity: WorkloadIdentity) -> None:
    """The user's token and session are alive, but the tenant deactivated them since."""
    email = "kevin@example.com"
    token = user_token(lab, email)["access_token"]
    with deactivated(lab, email):
        was = before(lab)
        decision = refused(exchange(lab, identity, token, rar(lab, "verify_read_users")),
                           "invalid_grant", lab, was, reason="not an active user")
        assert decision.user == email
    # reactivated, the same token delegates again: the refusal was the user's state
    assert exchange(lab, identity, token, rar(lab, "verify_read_users")).status_code == 200


# -- 4. a policy evaluation error denies ------------------------------------------------------

def test_a_policy_evaluation_error_denies(lab: Lab, identity: WorkloadIdentity,
                                          alice: dict[str, Any],
                                          edited_policy: Callable[[str], None]) -> None:
    """A trainer's forbid reads an attribute users do not have: Cedar skips the erroring policy
    and `tier1-read` still permits; the tenant must refuse instead of failing open."""
    edited_policy('''
@id("quarantine")
@reason("users in quarantine may not delegate")
forbid (principal, action, resource) when { principal.department == "Quarantine" };
''')
    was = before(lab)
    decision = refused(exchange(lab, identity, alice["access_token"],
                                rar(lab, "verify_read_users")),
                       "access_denied", lab, was, reason="policy evaluation failed",
                       policy_id="policy-error")
    assert "department" in decision.reason


# -- 5. the policy: only the agent may act ----------------------------------------------------

def test_policy_refuses_an_actor_that_is_not_the_agent(
        lab: Lab, identity: WorkloadIdentity, other_workload: WorkloadIdentity,
        delegate_to: Callable[[str], None]) -> None:
    """A genuine SVID of another lab workload, for this issuer, named by the user's may_act:
    every token check passes, and the Cedar rule must still refuse."""
    delegate_to(OTHER_WORKLOAD)
    subject = user_token(lab, "alice@example.com")["access_token"]
    assert jwt.decode(subject, options={"verify_signature": False})["may_act"] == {
        "sub": OTHER_WORKLOAD}
    actor = other_workload.svid(lab.verify.issuer).token
    was = before(lab)
    decision = refused(exchange(lab, identity, subject, rar(lab, "verify_read_users"),
                                actor_token=actor),
                       "access_denied", lab, was, reason="only the MCP server workload",
                       policy_id="actor-must-be-the-agent")
    assert decision.actor == OTHER_WORKLOAD


# -- 6. tier-3 approvals expire ---------------------------------------------------------------

def test_a_call_approval_older_than_its_ttl_is_not_redeemable(
        lab: Lab, identity: WorkloadIdentity, alice: dict[str, Any],
        approvals_clock: FakeClock) -> None:
    obj = rar(lab, "verify_deactivate_user", target="u-rules-ttl")
    assert approve_next(lab, identity, "alice@example.com", obj,
                        session_token=alice["access_token"]).status_code == 200
    approval = approved_push_id(lab, obj)
    approvals_clock.advance(lab.verify.approvals.call_approval_ttl + 1)
    was = before(lab)
    refused(exchange(lab, identity, alice["access_token"], obj), "access_denied", lab, was,
            reason="exactly this call", policy_id="tier3-needs-call-approval")
    # back within its lifetime the approval serves: the refusal did not spend it
    approvals_clock.offset = 0
    issued = exchange(lab, identity, alice["access_token"], obj)
    assert issued.status_code == 200, issued.text
    assert lab.verify.audit.last("token_exchange").approval_id == approval


# -- 7. the actor SVID is for the IdP only ----------------------------------------------------

def test_the_actor_token_the_chain_sends_is_for_the_idp_only(
        lab: Lab, alice: dict[str, Any], recorded_exchanges: list[dict[str, str]]) -> None:
    result = mcp_call(lab, alice["access_token"], "list_users", {"count": 5})
    assert not result.is_error, result.text
    assert recorded_exchanges, "the chain did not exchange a token"
    actor = recorded_exchanges[-1]["actor_token"]
    claims = jwt.decode(actor, options={"verify_signature": False})
    assert claims["sub"] == WORKLOAD_SPIFFE_ID
    audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert audience == [lab.verify.issuer]
    # replayed at Vault (what anyone holding it could try), it does not log in
    logins = lab.openbao.login_count()
    with pytest.raises((hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)) as err:
        hvac.Client(url=lab.endpoints["vault"]).auth.jwt.jwt_login(
            role="mcp-server", jwt=actor, path="jwt")
    assert "aud" in " ".join(err.value.errors or [])
    assert lab.openbao.login_count() == logins


# -- 8, 9. authorization codes: same redirect_uri, short-lived, single use ----------------------

def _login_sid(lab: Lab, mark: int) -> str:
    logins = [d for d in lab.verify.audit.since(mark, "login") if d.outcome == "allowed"]
    assert len(logins) == 1 and logins[0].sid
    return logins[0].sid


def _code_refused(response: httpx.Response, lab: Lab, sid: str, mark: int,
                  reason: str) -> None:
    body = response.json()
    assert response.status_code == 400, response.text
    assert body["error"] == "invalid_grant" and reason in body["error_description"], body
    assert not {"access_token", "id_token", "refresh_token"} & set(body)
    # nothing was issued for the code's session (the login at /authorize is the only record)
    assert [d.kind for d in lab.verify.audit.since(mark) if d.sid == sid] == ["login"]


def test_a_code_redeemed_with_another_redirect_uri_is_refused_and_dead(lab: Lab) -> None:
    """RFC 6749 §4.1.3: the redirect_uri must be identical to the authorization request's, even
    one the client could have registered (another loopback port, RFC 8252 §7.3)."""
    mark = len(lab.verify.audit)
    response = authorize(lab, redirect_uri="http://127.0.0.1:5555/callback")
    code = redirect_params(response)["code"]
    sid = _login_sid(lab, mark)
    verifier = response.verifier  # type: ignore[attr-defined]
    _code_refused(redeem(lab, code, verifier, redirect_uri="http://127.0.0.1:5556/callback"),
                  lab, sid, mark, "redirect_uri does not match")
    assert lab.verify.sessions.alive(sid)
    # the code was spent by that attempt (§4.1.2: used once): the right redirect_uri is too late,
    # and presenting it again is a replay, which ends the code's session
    _code_refused(redeem(lab, code, verifier, redirect_uri="http://127.0.0.1:5555/callback"),
                  lab, sid, mark, "already used")
    assert not lab.verify.sessions.alive(sid)


def test_an_expired_code_is_refused_and_dead(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(lab.verify.oidc, "_clock", clock)  # the code flow's clock
    mark = len(lab.verify.audit)
    response = authorize(lab)
    code = redirect_params(response)["code"]
    sid = _login_sid(lab, mark)
    verifier = response.verifier  # type: ignore[attr-defined]
    clock.advance(61)  # codes live 60 s
    _code_refused(redeem(lab, code, verifier), lab, sid, mark, "expired")
    clock.offset = 0  # back within its lifetime, the code is still spent
    _code_refused(redeem(lab, code, verifier), lab, sid, mark, "already used")


# -- 10. the RAR digest binds the exact arguments ---------------------------------------------

def own_digest(obj: Mapping[str, Any]) -> str:
    """The digest an object must carry: iia.rar's, the one definition (pinned to fixed bytes
    and hex by tests/test_rar_registry.py, so a change to it cannot pass unseen here)."""
    return details_digest(obj)


def fresh_session(lab: Lab) -> str:
    """A new session of alice's: a session whose user denies 3 pushes in a row is ended by
    Antenna's anomaly rule, so the tests that deny do it in sessions of their own."""
    return str(user_token(lab, "alice@example.com")["access_token"])


def test_the_digest_the_chain_pushes_is_of_the_objects_own_fields(lab: Lab) -> None:
    """Tier-3 pushes carry the whole object to the IdP; the user denies, so nothing happens."""
    targets = [user_id(lab, "mike@example.com"), user_id(lab, "nina@example.com")]
    token = fresh_session(lab)
    pushes = len(lab.verify.approvals.all())
    was = before(lab)
    with phone(lab, plan=False) as p:
        for target in targets:
            result = mcp_call(lab, token, "deactivate_user", {"user_id": target})
            assert result.is_error, result.text
    assert [a.approved for a in p.answered] == [False, False]
    sent = [push.authorization_details[0] for push in lab.verify.approvals.all()[pushes:]]
    assert [obj["target"] for obj in sent] == targets
    assert [obj["digest"] for obj in sent] == [own_digest(obj) for obj in sent]
    assert sent[0]["digest"] != sent[1]["digest"]
    assert issued_count(lab) == was.issued and directory_state(lab) == was.directory


def test_the_digest_changes_with_every_argument(lab: Lab) -> None:
    """create_user's four arguments each change what the request does, so each changes the
    digest; the same arguments give the same digest. The user denies the session consent, so
    no user is created."""
    base = {"user_name": "rita.rules@example.com", "given_name": "Rita", "family_name": "Rules"}
    calls = [base, dict(base), {**base, "user_name": "rota.rules@example.com"},
             {**base, "given_name": "Rota"}, {**base, "family_name": "Rulez"},
             {**base, "title": "Auditor"}]
    was = before(lab)
    digests = []
    with phone(lab, plan=False):
        for arguments in calls:
            mark = lab.events.cursor()
            result = mcp_call(lab, fresh_session(lab), "create_user", arguments)
            assert result.is_error, result.text
            events = [e for e in lab.events.since(mark)[0] if e.tool_name == "create_user"]
            seen = {e.correlation.get("rarDigest") for e in events}
            assert len(seen) == 1 and None not in seen, events
            digests.append(seen.pop())
    assert digests[0] == digests[1]
    assert len(set(digests)) == len(calls) - 1
    assert issued_count(lab) == was.issued and directory_state(lab) == was.directory


def test_an_object_whose_digest_is_not_its_own_is_refused_and_spends_no_approval(
        lab: Lab, identity: WorkloadIdentity, alice: dict[str, Any]) -> None:
    """An approval of call A; the same object carrying call B's digest is no valid object at
    the token endpoint or the push endpoint, and refusing it leaves A's approval unspent."""
    approved = rar(lab, "verify_deactivate_user", target="u-rules-digest")
    other = rar(lab, "verify_deactivate_user", target="u-rules-other")
    assert approved["digest"] == own_digest(approved) != other["digest"]
    assert approve_next(lab, identity, "alice@example.com", approved,
                        session_token=alice["access_token"]).status_code == 200
    approval = approved_push_id(lab, approved)
    forged = {**approved, "digest": other["digest"]}
    was = before(lab)
    refused(exchange(lab, identity, alice["access_token"], forged),
            "invalid_authorization_details", lab, was, reason="digest does not match")
    read = rar(lab, "verify_read_user", target="u-1")  # tier 1: no approval to fall back on
    was = before(lab)
    refused(exchange(lab, identity, alice["access_token"],
                     {**read, "digest": rar(lab, "verify_read_user", target="u-2")["digest"]}),
            "invalid_authorization_details", lab, was, reason="digest does not match")
    pushes = len(lab.verify.approvals.all())
    push = bc_authorize(lab, identity, "alice@example.com", forged, login_hint=None,
                        login_hint_token=alice["access_token"])
    assert push.status_code == 400 and push.json()["error"] == "invalid_authorization_details"
    assert len(lab.verify.approvals.all()) == pushes
    issued = exchange(lab, identity, alice["access_token"], approved)
    assert issued.status_code == 200, issued.text
    assert lab.verify.audit.last("token_exchange").approval_id == approval
