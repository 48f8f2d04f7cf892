"""The bindings of DESIGN.md §7 that the simulated Verify enforces at token exchange, over real
HTTP with the MCP server's real workload identity:

* a tier-3 approval serves this user, **this session** (the `sid` of the user's access token the
  push carried as CIBA `login_hint_token`), this exact authorization_details and argument digest,
  once; any other session, target or digest is refused and leaves the approval unspent;
* delegation is checked live at the tenant, not only in the token's `may_act`: a tenant admin
  withdrawing it (`POST /lab/delegations/{email}/revoke`, `iia-lab delegation revoke USER`) stops
  the very next exchange, and granting it again restores it.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from harness.lab_client import DelegationApi
from harness.verify.audit import Decision
from harness.verify.errors import InvalidAuthorizationDetails
from iia.identity import WorkloadIdentity
from iia.oauth.errors import error_from_response
from tests.helpers import bc_authorize, exchange, poll, rar, sid_of, user_token

ALICE = "alice@example.com"
TIER3 = "tier3-needs-call-approval"


# -- what must not change ---------------------------------------------------------------------

def issued_count(lab: Lab) -> int:
    return sum(1 for d in lab.verify.audit.decisions("token_exchange") if d.outcome == "issued")


def directory_state(lab: Lab) -> list[tuple[Any, ...]]:
    directory = lab.verify.directory
    return [(u.id, u.user_name, u.active, directory.delegated(u),
             sorted(g.id or "" for g in directory.groups_of(u.id or "")))
            for u in directory.users()]


def approvals_state(lab: Lab) -> list[tuple[str, str | None, bool]]:
    return [(a.id, a.session, a.used) for a in lab.verify.approvals.call_approvals()]


@dataclass(frozen=True)
class Before:
    issued: int
    decisions: int
    directory: list[tuple[Any, ...]]
    approvals: list[tuple[str, str | None, bool]]
    pending: int


def before(lab: Lab) -> Before:
    return Before(issued_count(lab), len(lab.verify.audit), directory_state(lab),
                  approvals_state(lab), len(lab.verify.approvals.pending()))


def refused(response: httpx.Response, error: str, lab: Lab, was: Before, *, reason: str,
            policy_id: str | None = None) -> Decision:
    """The exchange was refused with `error` and a description holding `reason`; nothing was
    minted, no approval was spent, the directory is as it was, and the tenant recorded exactly
    this refusal."""
    body = response.json()
    assert response.status_code == 400, body
    assert body["error"] == error, body
    assert "access_token" not in body
    assert reason in body["error_description"], body
    assert issued_count(lab) == was.issued
    assert approvals_state(lab) == was.approvals
    assert directory_state(lab) == was.directory
    new = lab.verify.audit.since(was.decisions, "token_exchange")
    assert [(d.outcome, d.error, d.reason) for d in new] == [
        ("denied", error, body["error_description"])]
    if policy_id is not None:
        assert body["policy_id"] == policy_id and new[0].policy_id == policy_id
    return new[0]


def issued(response: httpx.Response, lab: Lab) -> Decision:
    assert response.status_code == 200, response.json().get("error_description")
    decision = lab.verify.audit.last("token_exchange")
    assert decision is not None and decision.outcome == "issued"
    return decision


# -- pushes that name the session -------------------------------------------------------------

def push_for(lab: Lab, identity: WorkloadIdentity, details: dict[str, Any],
             user_token_: str) -> httpx.Response:
    """What the MCP server sends: the user's access token as login_hint_token."""
    return bc_authorize(lab, identity, ALICE, details, login_hint=None,
                        login_hint_token=user_token_)


def approve(lab: Lab, identity: WorkloadIdentity, details: dict[str, Any],
            user_token_: str | None) -> str:
    """Push (for the session of `user_token_`, or by email when None), tap Approve, poll the
    receipt; returns the approval's id."""
    response = (push_for(lab, identity, details, user_token_) if user_token_
                else bc_authorize(lab, identity, ALICE, details))
    assert response.status_code == 200, response.json()
    auth_req_id = response.json()["auth_req_id"]
    pushed = lab.verify.approvals.by_auth_req_id(auth_req_id)
    assert pushed is not None
    lab.verify.ciba.answer(pushed.id, approve=True)
    receipt = poll(lab, identity, auth_req_id)
    deadline = time.monotonic() + 10
    while receipt.json().get("error") == "slow_down" and time.monotonic() < deadline:
        time.sleep(0.2)
        receipt = poll(lab, identity, auth_req_id)
    assert receipt.status_code == 200, receipt.json().get("error")
    return pushed.id


# -- 1. a tier-3 approval: this user, this session, this call, once ---------------------------

def test_a_tier3_approval_serves_only_the_session_that_asked_for_it(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """Alice approves a deactivation in session A; her session B presents exactly the same
    call: refused, and the approval is still there for A, which redeems it once."""
    session_a, session_b = user_token(lab)["access_token"], user_token(lab)["access_token"]
    assert sid_of(session_a) != sid_of(session_b)
    obj = rar(lab, "verify_deactivate_user", target="u-bind-session")
    approval = approve(lab, identity, obj, session_a)
    assert [d.sid for d in lab.verify.audit.decisions("ciba")
            if d.approval_id == approval] == [sid_of(session_a)] * 2  # pending, approved

    was = before(lab)
    decision = refused(exchange(lab, identity, session_b, obj), "access_denied", lab, was,
                       reason="in another of their sessions", policy_id=TIER3)
    assert decision.sid == sid_of(session_b) and decision.approval_id is None
    assert lab.verify.sessions.alive(sid_of(session_a))
    assert lab.verify.sessions.alive(sid_of(session_b))

    # unspent: the session that asked redeems it, once
    redeemed = issued(exchange(lab, identity, session_a, obj), lab)
    assert redeemed.approval_id == approval and redeemed.sid == sid_of(session_a)
    was = before(lab)
    refused(exchange(lab, identity, session_a, obj), "access_denied", lab, was,
            reason="exactly this call", policy_id=TIER3)


def test_a_tier3_approval_serves_only_its_user_target_and_digest(
        lab: Lab, identity: WorkloadIdentity) -> None:
    session = user_token(lab)["access_token"]
    bob = user_token(lab, "bob@example.com")["access_token"]
    obj = rar(lab, "verify_revoke_user_sessions", target="u-bind-target")
    approval = approve(lab, identity, obj, session)
    for who, mismatch in ((session, rar(lab, "verify_revoke_user_sessions",
                                        target="u-bind-other")),
                          (bob, obj)):
        was = before(lab)
        refused(exchange(lab, identity, who, mismatch), "access_denied", lab, was,
                reason="exactly this call", policy_id=TIER3)
    # another digest: refused, by the policy (no approval of it) or, where the tenant checks
    # that a digest is the one of the object's own fields, already as a malformed object
    other_digest = {**obj, "digest": "sha256:" + "0" * 64}
    try:
        lab.verify.registry.validate(other_digest, location=lab.verify.admin_api_url)
        error, words = "access_denied", "exactly this call"
    except InvalidAuthorizationDetails:
        error, words = "invalid_authorization_details", "digest"
    was = before(lab)
    refused(exchange(lab, identity, session, other_digest), error, lab, was, reason=words)
    assert issued(exchange(lab, identity, session, obj), lab).approval_id == approval


def test_a_tier3_push_that_names_no_session_serves_no_exchange(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """A push by email only (login_hint) says which user but not which session: its approval
    binds to no session, so not even the user's own sessions can redeem it."""
    session = user_token(lab)["access_token"]
    obj = rar(lab, "verify_deactivate_user", target="u-bind-nosession")
    approval = approve(lab, identity, obj, None)
    assert [(a.session, a.used) for a in lab.verify.approvals.call_approvals()
            if a.id == approval] == [(None, False)]
    was = before(lab)
    refused(exchange(lab, identity, session, obj), "access_denied", lab, was,
            reason="names no session", policy_id=TIER3)


# -- 2. the login_hint_token names a live session of an active user ---------------------------

def _expired(lab: Lab, token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return lab.verify.keys.sign({**claims, "exp": int(time.time()) - 5}, typ="at+jwt")


def _ended(lab: Lab, token: str) -> str:
    lab.verify.sessions.end(sid_of(token), "user logged out")
    return token


def _for_another_audience(lab: Lab, token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return lab.verify.keys.sign({**claims, "aud": lab.verify.admin_api_url}, typ="at+jwt")


def _delegated(lab: Lab, token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return lab.verify.keys.sign({**claims, "act": {"sub": WORKLOAD_SPIFFE_ID}}, typ="at+jwt")


@pytest.mark.parametrize("case,error,words", [
    ("expired", "expired_login_hint_token", "expired"),
    ("session ended", "invalid_request", "session has ended"),
    ("another audience", "invalid_request", "audience"),
    ("itself delegated", "invalid_request", "delegated"),
    ("not a token", "invalid_request", "not a JWT"),
    ("two hints", "invalid_request", "exactly one hint"),
])
def test_a_push_whose_login_hint_token_is_no_live_user_token_is_refused(
        lab: Lab, identity: WorkloadIdentity, case: str, error: str, words: str) -> None:
    token = user_token(lab)["access_token"]
    hint = {"expired": _expired, "session ended": _ended,
            "another audience": _for_another_audience, "itself delegated": _delegated,
            "not a token": lambda _lab, _t: "not-a-token",
            "two hints": lambda _lab, t: t}[case](lab, token)
    extra = {"login_hint": ALICE} if case == "two hints" else {"login_hint": None}
    was = before(lab)
    response = bc_authorize(lab, identity, ALICE,
                            rar(lab, "verify_deactivate_user", target="u-bind-hint"),
                            **{**extra, "login_hint_token": hint})
    body = response.json()
    assert response.status_code == 400 and body["error"] == error, body
    assert words in body["error_description"], body
    assert len(lab.verify.approvals.pending()) == was.pending  # nothing reached the phone
    assert lab.verify.audit.since(was.decisions, "ciba") == []


def test_a_write_consent_is_asked_for_the_session_that_asks(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """Tier 2 with login_hint_token: the session in authorization_details must be the hint's."""
    session_a, session_b = user_token(lab)["access_token"], user_token(lab)["access_token"]
    consent_b = rar(lab, "agent_write_consent", session=sid_of(session_b), duration=1800)
    was = before(lab)
    response = push_for(lab, identity, consent_b, session_a)
    assert response.status_code == 400, response.json()
    assert response.json()["error"] == "invalid_authorization_details"
    assert "session of the login_hint_token" in response.json()["error_description"]
    assert len(lab.verify.approvals.pending()) == was.pending
    user_id = jwt.decode(session_b, options={"verify_signature": False})["sub"]
    assert lab.verify.approvals.session_consent_age(user_id, sid_of(session_b)) is None
    # the same consent asked by session B itself is fine, and covers B only
    approve(lab, identity, consent_b, session_b)
    write = rar(lab, "verify_create_user", target="bind.consent@example.com")
    issued(exchange(lab, identity, session_b, write), lab)
    was = before(lab)
    refused(exchange(lab, identity, session_a, write), "access_denied", lab, was,
            reason="this session", policy_id="tier2-needs-session-approval")


# -- 3. delegation is checked live at the tenant ----------------------------------------------

@pytest.fixture
def delegation(lab: Lab) -> Iterator[DelegationApi]:
    """The tenant admin's delegation API; every user this test touches is granted again."""
    api = DelegationApi(lab.verify.base_url)
    delegated = {d["user"] for d in api.delegations() if d["delegated"]}
    yield api
    try:
        for user in delegated:
            assert api.grant(user).status_code == 200
        assert {d["user"] for d in api.delegations() if d["delegated"]} == delegated
    finally:
        api.close()


def test_withdrawing_delegation_stops_the_very_next_exchange_and_granting_restores_it(
        lab: Lab, identity: WorkloadIdentity, delegation: DelegationApi) -> None:
    token = user_token(lab)["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["may_act"] == {
        "sub": WORKLOAD_SPIFFE_ID}
    read = rar(lab, "verify_read_users")
    issued(exchange(lab, identity, token, read), lab)

    withdrawn = delegation.revoke(ALICE)
    assert withdrawn.status_code == 200
    assert withdrawn.json() == {"user": ALICE, "agent": WORKLOAD_SPIFFE_ID, "delegated": False}
    recorded = lab.verify.audit.last("delegation")
    assert (recorded.outcome, recorded.user, recorded.actor) == ("revoked", ALICE,
                                                                 WORKLOAD_SPIFFE_ID)

    was = before(lab)
    response = exchange(lab, identity, token, read)
    decision = refused(response, "invalid_grant", lab, was,
                       reason=f"{ALICE} has withdrawn the delegation to {WORKLOAD_SPIFFE_ID}")
    assert decision.user == ALICE and decision.actor == WORKLOAD_SPIFFE_ID
    # withdrawing is not signing out: the session lives, and the MCP server will not read
    # this refusal as a dead session (it would drop the user's session on it)
    assert lab.verify.sessions.alive(sid_of(token))
    assert error_from_response(400, response.json()).ends_session is False
    # a token issued meanwhile carries no may_act at all
    meanwhile = user_token(lab)["access_token"]
    assert "may_act" not in jwt.decode(meanwhile, options={"verify_signature": False})

    granted = delegation.grant(ALICE)
    assert granted.status_code == 200 and granted.json()["delegated"] is True
    assert lab.verify.audit.last("delegation").outcome == "granted"
    issued(exchange(lab, identity, token, read), lab)


def test_withdrawing_delegation_voids_what_was_approved_under_it(
        lab: Lab, identity: WorkloadIdentity, delegation: DelegationApi) -> None:
    """The session's write consent and an unused call approval do not survive the withdrawal:
    after the grant the user is asked again."""
    session = user_token(lab)["access_token"]
    user_id = jwt.decode(session, options={"verify_signature": False})["sub"]
    approve(lab, identity, rar(lab, "agent_write_consent", session=sid_of(session),
                               duration=1800), session)
    sensitive = rar(lab, "verify_deactivate_user", target="u-bind-void")
    approval = approve(lab, identity, sensitive, session)
    assert lab.verify.approvals.session_consent_age(user_id, sid_of(session)) is not None

    assert delegation.revoke(ALICE).status_code == 200
    assert lab.verify.audit.last("delegation").details == {
        "changed": True, "voided_consents": 1, "voided_call_approvals": 1}
    assert lab.verify.approvals.session_consent_age(user_id, sid_of(session)) is None
    assert [a.used for a in lab.verify.approvals.call_approvals() if a.id == approval] == [True]
    assert delegation.grant(ALICE).status_code == 200

    write = rar(lab, "verify_create_user", target="bind.void@example.com")
    was = before(lab)
    refused(exchange(lab, identity, session, write), "access_denied", lab, was,
            reason="this session", policy_id="tier2-needs-session-approval")
    was = before(lab)
    refused(exchange(lab, identity, session, sensitive), "access_denied", lab, was,
            reason="exactly this call", policy_id=TIER3)


def test_a_delegation_change_for_no_user_or_no_action_is_404_and_changes_nothing(
        lab: Lab, delegation: DelegationApi) -> None:
    base = f"{lab.verify.base_url}/lab/delegations"
    was = before(lab)
    for url, words in ((f"{base}/nobody@example.com/revoke", "no user nobody@example.com"),
                       (f"{base}/{ALICE}/delete", "revoke or grant")):
        response = httpx.post(url)
        assert response.status_code == 404, response.text
        assert response.json()["error"] == "not_found"
        assert words in response.json()["error_description"]
    assert directory_state(lab) == was.directory
    assert lab.verify.audit.since(was.decisions) == []


@pytest.fixture
def cli_lab_dir(lab: Lab, tmp_path: Path) -> Iterator[Path]:
    """A lab directory that names the session lab as running (state written, lock held), so
    `iia-lab` commands talk to it over HTTP like to a lab started by `iia-lab up`."""
    directory = tmp_path / "lab"
    lab.write_state(directory, os.getpid())
    with (directory / "lab.lock").open("a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield directory


def iia_lab(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args],
                          env={**os.environ, "IIA_LAB_DIR": str(directory)},
                          capture_output=True, text=True, timeout=60)


def test_iia_lab_delegation_revoke_and_grant(lab: Lab, identity: WorkloadIdentity,
                                             cli_lab_dir: Path,
                                             delegation: DelegationApi) -> None:
    token = user_token(lab)["access_token"]
    read = rar(lab, "verify_read_users")
    revoked = iia_lab(cli_lab_dir, "delegation", "revoke", ALICE)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"{ALICE}: delegation withdrawn from {WORKLOAD_SPIFFE_ID}"
    was = before(lab)
    refused(exchange(lab, identity, token, read), "invalid_grant", lab, was,
            reason="has withdrawn the delegation")

    granted = iia_lab(cli_lab_dir, "delegation", "grant", ALICE)
    assert granted.returncode == 0, granted.stderr
    assert granted.stdout.strip() == f"{ALICE}: delegation granted to {WORKLOAD_SPIFFE_ID}"
    issued(exchange(lab, identity, token, read), lab)

    was = before(lab)
    unknown = iia_lab(cli_lab_dir, "delegation", "revoke", "nobody@example.com")
    assert unknown.returncode == 1 and "no user nobody@example.com" in unknown.stderr
    assert directory_state(lab) == was.directory
    listed = json.loads(httpx.get(f"{lab.verify.base_url}/lab/delegations").text)
    assert {"user": ALICE, "agent": WORKLOAD_SPIFFE_ID, "delegated": True} in listed
