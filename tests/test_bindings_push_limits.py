"""Push floods stop at the IdP (issue #12, item 4).

Per user, the tenant (fixtures/tenant/push_limits.json; defaults 3 and 10) lets at most
`max_pending` pushes wait on the phone at once, and sends at most `max_per_minute` pushes in any
minute that the user has not approved. Beyond that, bc-authorize answers OpenID CIBA §13
`access_denied` (HTTP 403) with a sentence naming the user and the limit: no push reaches the
phone, nothing is pending, and the refusal is in the IdP's decision record with its reason.

Each test runs the approvals' clock in an hour of its own, a day ago (and puts it back): the
pushes of one test are long expired and outside every window for the next test and for the rest
of the suite, so nobody meets another test's limits.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.lab import Lab
from harness.paths import fixtures_dir
from harness.verify.approvals import PushRequest
from harness.verify.audit import Decision
from harness.verify.ciba import PushLimits
from harness.verify.tenant import VerifyTenant, load_push_limits
from iia.identity import WorkloadIdentity
from tests.agent_helpers import mcp_call, phone, user_id
from tests.conftest import SUITE_PER_MINUTE, FakeClock
from tests.helpers import bc_authorize, rar, sid_of, user_token

FLOODED = "rupert@example.com"
OTHER = "sybil@example.com"
_HOURS = itertools.count(1)


@pytest.fixture
def past(lab: Lab) -> Iterator[FakeClock]:
    """The approvals' clock in an hour of this test's own, a day ago, until the test ends."""
    clock = FakeClock()
    clock.advance(-86400 + 3600 * next(_HOURS))
    before = lab.verify.approvals.clock
    lab.verify.approvals.clock = clock
    yield clock
    lab.verify.approvals.clock = before


@pytest.fixture
def limits(lab: Lab) -> Iterator[None]:
    """Restore the tenant's push limits after a test changes them."""
    before = lab.verify.ciba.limits
    yield
    lab.verify.ciba.limits = before


def push(lab: Lab, identity: WorkloadIdentity, email: str, n: int = 0) -> httpx.Response:
    return bc_authorize(lab, identity, email,
                        rar(lab, "verify_deactivate_user", target=f"u-flood-{n}"),
                        binding=f"Deactivate u-flood-{n}?")


def pending_of(lab: Lab, email: str) -> list[PushRequest]:
    return lab.verify.approvals.pending(email)


def ciba_decisions(lab: Lab, marker: int, email: str) -> list[Decision]:
    return [d for d in lab.verify.audit.since(marker, "ciba") if d.user == email]


def shown_on_the_phone(lab: Lab, email: str) -> list[dict[str, Any]]:
    return httpx.get(f"{lab.verify.base_url}/lab/phone/requests", params={"user": email}).json()


def refused(response: httpx.Response) -> str:
    """The CIBA §13 refusal: access_denied, HTTP 403, not cached; returns the description."""
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "access_denied" and "auth_req_id" not in body
    assert response.headers["cache-control"] == "no-store"
    return str(body["error_description"])


def test_the_tenant_fixture_sets_the_limits(lab: Lab, tmp_path: Path) -> None:
    # the lab's tenant: 3 waiting, 10 a minute; the suite's session lab raises the minute's
    # count (tests/conftest.py: the suite is not a person)
    assert load_push_limits(fixtures_dir()) == PushLimits(max_pending=3, max_per_minute=10)
    assert lab.verify.ciba.limits == PushLimits(max_pending=3, max_per_minute=SUITE_PER_MINUTE)
    (tmp_path / "tenant").mkdir()
    assert load_push_limits(tmp_path) == PushLimits()  # no file: the defaults, 3 and 10
    (tmp_path / "tenant" / "push_limits.json").write_text(
        json.dumps({"max_pending": 1, "max_per_minute": 4}))
    assert load_push_limits(tmp_path) == PushLimits(max_pending=1, max_per_minute=4)
    for bad in ({"max_pending": 0}, {"max_per_minute": -1}, {"max_pending": "3"},
                {"max_pending": True}, {"max_per_minute": 2.5}):
        (tmp_path / "tenant" / "push_limits.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=r"push_limits\.json: max_"):
            load_push_limits(tmp_path)
    (tmp_path / "tenant" / "push_limits.json").write_text(json.dumps({"max_pendng": 3}))
    with pytest.raises(ValueError, match=r"unknown settings \['max_pendng'\]"):
        load_push_limits(tmp_path)
    # a tenant takes its limits from its own fixtures
    copy = tmp_path / "fixtures"
    shutil.copytree(fixtures_dir(), copy)
    (copy / "tenant" / "push_limits.json").write_text(
        json.dumps({"max_pending": 2, "max_per_minute": 5}))
    tenant = VerifyTenant("http://127.0.0.1:9", fixtures=copy,
                          mcp_client_secret=lab.client_secret, mcp_resource=lab.mcp_url,
                          spiffe_keys_url="http://127.0.0.1:9/keys")
    assert tenant.ciba.limits == PushLimits(max_pending=2, max_per_minute=5)


def test_a_flood_of_pushes_leaves_at_most_max_pending_on_the_phone(
        lab: Lab, identity: WorkloadIdentity, past: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """40 pushes for one user at once (the issue measured 40 accepted in a second): 3 reach the
    phone, 37 are refused. Creating a push is made slow, so requests that counted the pending
    pushes before any was created would all get through if counting and creating were apart."""
    assert pending_of(lab, FLOODED) == []
    real_create = lab.verify.approvals.create

    def slow_create(**kwargs: Any) -> PushRequest:
        time.sleep(0.05)
        return real_create(**kwargs)

    monkeypatch.setattr(lab.verify.approvals, "create", slow_create)
    reached: list[PushRequest] = []
    stop = lab.verify.approvals.on_change(
        lambda p: reached.append(p) if p.email == FLOODED else None)
    marker = len(lab.verify.audit)
    start = threading.Barrier(20)

    def one(n: int) -> httpx.Response:
        if n < 20:
            start.wait(timeout=30)
        return push(lab, identity, FLOODED, n)

    try:
        with ThreadPoolExecutor(max_workers=20) as pool:
            responses = list(pool.map(one, range(40)))
    finally:
        stop()

    accepted = [r for r in responses if r.status_code == 200]
    refusals = [r for r in responses if r.status_code != 200]
    assert len(accepted) == 3 and len(refusals) == 37
    for response in refusals:
        description = refused(response)
        assert description.startswith(f"{FLOODED} already has 3 pushes waiting for an answer")
        assert "at most 3 at a time" in description
    # the phone shows exactly the 3 accepted pushes; nothing else is pending or was shown
    pending = pending_of(lab, FLOODED)
    assert sorted(p.auth_req_id for p in pending) == sorted(r.json()["auth_req_id"]
                                                           for r in accepted)
    assert len(reached) == 3 and len(shown_on_the_phone(lab, FLOODED)) == 3
    # the decision record: 3 pushes sent, 37 refusals with the reason anomaly rules can count
    decisions = ciba_decisions(lab, marker, FLOODED)
    assert sorted(d.outcome for d in decisions) == ["pending"] * 3 + ["refused"] * 37
    for decision in (d for d in decisions if d.outcome == "refused"):
        assert decision.error == "access_denied" and decision.approval_id is None
        assert decision.details == {"limit": "max_pending", "count": 3, "max": 3}
        assert decision.reason.startswith(f"{FLOODED} already has 3 pushes waiting")
        assert decision.rar_type == "verify_deactivate_user" and decision.tier == 3
    # the limit is the user's: another user of the same client still gets a push
    other = push(lab, identity, OTHER)
    assert other.status_code == 200, other.text
    lab.verify.ciba.answer(lab.verify.approvals.by_auth_req_id(
        other.json()["auth_req_id"]).id, approve=False)
    # answering one of the flooded user's pushes frees one place, and only one
    lab.verify.ciba.answer(pending[0].id, approve=False)
    assert push(lab, identity, FLOODED, 100).status_code == 200
    refused(push(lab, identity, FLOODED, 101))
    assert len(pending_of(lab, FLOODED)) == 3


def test_at_most_max_per_minute_unapproved_pushes(
        lab: Lab, identity: WorkloadIdentity, past: FakeClock, limits: None) -> None:
    """With the default limits, the user denies each push at once, so none stays pending:
    the 11th in a minute is refused, and once the minute has passed the next one is sent."""
    lab.verify.ciba.limits = PushLimits()
    assert pending_of(lab, OTHER) == []
    for n in range(10):
        response = push(lab, identity, OTHER, n)
        assert response.status_code == 200, (n, response.text)
        lab.verify.ciba.answer(lab.verify.approvals.by_auth_req_id(
            response.json()["auth_req_id"]).id, approve=False)
    marker = len(lab.verify.audit)
    description = refused(push(lab, identity, OTHER, 10))
    assert description.startswith(
        f"{OTHER} was sent 10 pushes in the last minute that they did not approve")
    assert "at most 10 a minute" in description
    assert pending_of(lab, OTHER) == [] and shown_on_the_phone(lab, OTHER) == []
    [decision] = ciba_decisions(lab, marker, OTHER)
    assert (decision.outcome, decision.error) == ("refused", "access_denied")
    assert decision.details == {"limit": "max_per_minute", "count": 10, "max": 10}
    assert decision.reason == description

    past.advance(61)  # the ten denied pushes are now more than a minute old
    again = push(lab, identity, OTHER, 11)
    assert again.status_code == 200, again.text
    assert [p.auth_req_id for p in pending_of(lab, OTHER)] == [again.json()["auth_req_id"]]


def test_pushes_the_user_approves_do_not_count(
        lab: Lab, identity: WorkloadIdentity, past: FakeClock, limits: None) -> None:
    """An approval is the user's own decision, not a flood: with the default limits, twelve
    approved pushes in a minute are all sent."""
    lab.verify.ciba.limits = PushLimits()
    for n in range(12):
        response = push(lab, identity, OTHER, n)
        assert response.status_code == 200, (n, response.text)
        lab.verify.ciba.answer(lab.verify.approvals.by_auth_req_id(
            response.json()["auth_req_id"]).id, approve=True)


def test_the_limits_are_the_tenants_settings(
        lab: Lab, identity: WorkloadIdentity, past: FakeClock, limits: None) -> None:
    lab.verify.ciba.limits = PushLimits(max_pending=1, max_per_minute=10)
    assert push(lab, identity, FLOODED, 0).status_code == 200
    description = refused(push(lab, identity, FLOODED, 1))
    assert description.startswith(f"{FLOODED} already has 1 push waiting for an answer")
    assert "at most 1 at a time" in description
    assert len(pending_of(lab, FLOODED)) == 1


def test_the_agent_gets_a_tool_error_naming_the_refusal(
        lab: Lab, identity: WorkloadIdentity, past: FakeClock) -> None:
    """Through the product: the user already has 3 pushes waiting, so the MCP server's push for
    a tier-3 call is refused. The agent gets a tool error that names the IdP's refusal and its
    reason; nobody is asked, nothing is done, the session lives on."""
    for n in range(3):
        assert push(lab, identity, FLOODED, n).status_code == 200
    waiting = {p.id for p in pending_of(lab, FLOODED)}
    token = user_token(lab, FLOODED)["access_token"]
    laura = user_id(lab, "laura@example.com")
    marker, cursor = len(lab.verify.audit), lab.events.cursor()
    with phone(lab, plan=False) as p:  # would deny a push, if one reached the phone
        result = mcp_call(lab, token, "deactivate_user", {"user_id": laura})
    assert result.is_error
    assert result.text.startswith("[approval_refused] ")
    assert "the identity provider refused to push to rupert@example.com's phone " \
           "(access_denied)" in result.text
    assert f"{FLOODED} already has 3 pushes waiting for an answer" in result.text
    assert p.answered == [] and {p.id for p in pending_of(lab, FLOODED)} == waiting
    user = lab.verify.directory.user(laura)
    assert user is not None and user.active  # nothing was done
    decisions = lab.verify.audit.since(marker)
    assert [(d.kind, d.outcome, d.error) for d in decisions if d.user == FLOODED] == [
        ("ciba", "refused", "access_denied")]  # no token exchange, no admin API call
    sid = sid_of(token)
    session = lab.verify.sessions.get(sid)
    assert session is not None and session.alive
    events = [e for e in lab.events.since(cursor)[0]
              if e.session_id == sid and e.type.startswith("agent:")]
    assert [e.type for e in events] == ["agent:hitl_required", "agent:tool_error"]
    assert "already has 3 pushes waiting" in (events[-1].reason or "")
