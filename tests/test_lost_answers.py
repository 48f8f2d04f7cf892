"""A write whose answer was lost is reported as unknown, then resolved by a read-back.

The fault is the simulated admin API's (`AdminApi.lose_answers`): the request is executed as
usual and its answer is replaced by a gateway's 502 on the way back (or, `executed=False`, the
gateway drops the request before it is forwarded). The chain must not tell the model "nothing
was done": it emits `agent:outcome_unknown`, reads the target back with a tier-1 token exchange
of its own and a SCIM GET, emits `agent:outcome_reconciled`, and the model reads one sentence
ending `done (confirmed)`, `not done` or `still unknown`. A tier-3 call is approved once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.lab import Lab
from iia.antenna.event_types import FOR_BUS_EVENT
from iia.audit_report import CallFilter, calls
from iia.audit_trail import EVENTS, AuditJournal, record_events
from iia.chat.cards import People, card
from iia.chat.chain_view import chain_view
from iia.enforcement import ToolOutcome
from iia.events import SecurityEvent
from tests.agent_helpers import group_id, mcp_call, phone, user_id
from tests.helpers import user_token
from tests.test_fail_closed import Quiet, members

LOST = "the admin API's answer was lost (the admin API answered HTTP 502)"


@pytest.fixture(autouse=True)
def no_fault_left(lab: Lab) -> Iterator[None]:
    yield
    left = lab.verify.admin_api.answers_to_lose()
    lab.verify.admin_api.lose_answers(0, 0)
    assert left == {"writes": 0, "reads": 0}  # every answer the test meant to lose was lost


def create(lab: Lab, token: str, email: str) -> str:
    """A user created while everything is up (the session's write consent, if not yet given)."""
    with phone(lab):
        created = mcp_call(lab, token, "create_user", {
            "user_name": email, "given_name": email.split("@")[0].title(), "family_name": "L"})
    assert not created.is_error, created.text
    return user_id(lab, email)


def of_type(events: list[SecurityEvent], kind: str) -> list[SecurityEvent]:
    return [e for e in events if e.type == kind]


def assert_read_back(lab: Lab, quiet: Quiet, events: list[SecurityEvent], *, write: str,
                     read: str, read_rar: str, executed: bool = True) -> None:
    """The admin API executed the write (or never saw it), then served one GET with a token of
    its own, minted by a tier-1 exchange of its own; the events say unknown, then resolved."""
    types = [e.type for e in events]
    assert types.count("agent:outcome_unknown") == 1
    assert types.count("agent:outcome_reconciled") == 1
    assert types.index("agent:outcome_unknown") < types.index("agent:outcome_reconciled")
    reconciled = of_type(events, "agent:outcome_reconciled")[0]
    read_jti = reconciled.correlation["readBackJti"]
    write_jti = reconciled.correlation["oboJti"]
    assert read_jti != write_jti
    seen = lab.verify.admin_api.requests[quiet.admin:]
    assert [(r.method, r.path.split("/")[1], r.outcome) for r in seen] == (
        [(write, seen[0].path.split("/")[1], "allowed")] if executed else []
    ) + [("GET", read, "allowed")]
    if executed:
        assert seen[0].status < 300 and seen[0].jti == write_jti  # it was done
    assert seen[-1].jti == read_jti and seen[-1].status == 200
    exchanges = lab.verify.audit.decisions("token_exchange")[quiet.exchanges:]
    read_exchange = [d for d in exchanges if d.jti == read_jti]
    assert len(read_exchange) == 1 and read_exchange[0].tier == 1
    assert read_exchange[0].rar_type == read_rar
    issued = [e for e in of_type(events, "agent:token_exchange_success")
              if e.correlation.get("readBackJti") == read_jti]
    assert len(issued) == 1 and issued[0].tier == 1 and issued[0].rar_type == read_rar


def test_tier2_create_executed_answer_lost_is_done_confirmed(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    quiet = Quiet(lab)
    lab.verify.admin_api.lose_answers(writes=1)
    with phone(lab) as p:
        result = mcp_call(lab, token, "create_user", {
            "user_name": "yara@example.com", "given_name": "Yara", "family_name": "Y"})
    assert not result.is_error, result.text
    assert result.text == (f"create_user: {LOST}; read back: done (confirmed) — "
                           "yara@example.com exists")
    assert len(p.answered) == 1  # the session's consent, once
    assert lab.verify.directory.user_by_username("yara@example.com") is not None
    mine = quiet.events_of(token)
    assert not of_type(mine, "agent:tool_error")
    unknown = of_type(mine, "agent:outcome_unknown")[0].to_dict()
    assert unknown["outcome"] == "unknown" and unknown["dependency"] == "admin_api"
    assert of_type(mine, "agent:outcome_reconciled")[0].details["readBack"] == "done (confirmed)"
    assert_read_back(lab, quiet, mine, write="POST", read="Users",
                     read_rar=lab.mcp.chain.tools["list_users"].rar_type)


def test_tier2_group_add_executed_answer_lost_is_done_confirmed(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    zed = create(lab, token, "lost-zed@example.com")
    quiet = Quiet(lab)
    lab.verify.admin_api.lose_answers(writes=1)
    with phone(lab) as p:
        result = mcp_call(lab, token, "add_user_to_group", {
            "user_id": zed, "group_id": group_id(lab, "Engineering")})
    assert not result.is_error, result.text
    assert result.text.startswith(f"add_user_to_group: {LOST}; read back: done (confirmed) — ")
    assert f"user {zed} is a member of group Engineering" in result.text
    assert p.answered == []  # the session's consent covered it
    assert zed in members(lab, "Engineering")
    assert_read_back(lab, quiet, quiet.events_of(token), write="PATCH", read="Groups",
                     read_rar=lab.mcp.chain.tools["list_groups"].rar_type)


def test_tier3_deactivate_executed_answer_lost_is_done_confirmed_approved_once(
        lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    una = create(lab, token, "lost-una@example.com")
    quiet = Quiet(lab)
    lab.verify.admin_api.lose_answers(writes=1)
    with phone(lab) as p:
        result = mcp_call(lab, token, "deactivate_user", {"user_id": una})
    assert not result.is_error, result.text
    assert result.text == (f"deactivate_user: {LOST}; read back: done (confirmed) — "
                           f"user {una} is deactivated")
    assert len(p.answered) == 1  # the call's approval, asked once: never again for the same call
    assert len(lab.verify.approvals.all()) == quiet.pushes + 1
    assert not lab.verify.directory.user(una).active
    assert_read_back(lab, quiet, quiet.events_of(token), write="PATCH", read="Users",
                     read_rar=lab.mcp.chain.tools["get_user"].rar_type)


def test_tier3_read_back_lost_too_is_still_unknown_never_not_done(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    vic = create(lab, token, "lost-vic@example.com")
    quiet = Quiet(lab)
    lab.verify.admin_api.lose_answers(writes=1, reads=1)
    with phone(lab) as p:
        result = mcp_call(lab, token, "deactivate_user", {"user_id": vic})
    assert result.is_error
    assert result.text.startswith(f"[outcome_unknown] deactivate_user: {LOST}; read back: "
                                  "still unknown — the read-back failed too "), result.text
    assert "nothing was done" not in result.text
    assert len(p.answered) == 1
    assert not lab.verify.directory.user(vic).active  # it was done: the agent is not told not
    mine = quiet.events_of(token)
    reconciled = of_type(mine, "agent:outcome_reconciled")[0]
    assert reconciled.outcome == "unknown" and reconciled.details["readBack"] == "still unknown"
    errors = [e.to_dict() for e in of_type(mine, "agent:tool_error")]
    assert len(errors) == 1 and errors[0]["error"] == "outcome_unknown"
    assert errors[0]["dependency"] == "admin_api"


def test_tier2_create_never_forwarded_is_not_done_after_a_read_back(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    create(lab, token, "lost-wes@example.com")  # the session's consent, given while all is up
    quiet = Quiet(lab)
    lab.verify.admin_api.lose_answers(writes=1, executed=False)
    with phone(lab) as p:
        result = mcp_call(lab, token, "create_user", {
            "user_name": "lost-xia@example.com", "given_name": "Xia", "family_name": "X"})
    assert result.is_error
    assert result.text == (f"[admin_api_unavailable] create_user: {LOST}; read back: not done "
                           "— there is no user lost-xia@example.com; nothing was changed, the "
                           "call can be made again")
    assert p.answered == []
    assert lab.verify.directory.user_by_username("lost-xia@example.com") is None
    mine = quiet.events_of(token)
    assert of_type(mine, "agent:outcome_reconciled")[0].details["readBack"] == "not done"
    assert_read_back(lab, quiet, mine, write="POST", read="Users", executed=False,
                     read_rar=lab.mcp.chain.tools["list_users"].rar_type)


def test_no_read_back_declared_is_still_unknown(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    tom = create(lab, token, "lost-tom@example.com")
    quiet = Quiet(lab)
    lab.verify.admin_api.lose_answers(writes=1)
    with phone(lab) as p:
        result = mcp_call(lab, token, "revoke_user_sessions", {"user_id": tom})
    assert result.text == (f"[outcome_unknown] revoke_user_sessions: {LOST}; read back: still "
                           "unknown — nothing can read back whether revoke_user_sessions "
                           "happened; check before making the call again")
    assert len(p.answered) == 1
    # no read was made: the admin API saw the write only, the IdP one exchange
    assert [r.method for r in lab.verify.admin_api.requests[quiet.admin:]] == ["DELETE"]
    assert len(lab.verify.audit.decisions("token_exchange")) == quiet.exchanges + 1


def test_the_audit_trail_tells_unknown_then_resolved(lab: Lab, tmp_path: Path) -> None:
    journal = AuditJournal(tmp_path / EVENTS)
    stop = record_events(lab.events, journal, lab.antenna.sets_for, set_types=FOR_BUS_EVENT)
    try:
        token = user_token(lab)["access_token"]
        sam = create(lab, token, "lost-sam@example.com")
        quiet = Quiet(lab)
        lab.verify.admin_api.lose_answers(writes=1)
        with phone(lab):
            result = mcp_call(lab, token, "deactivate_user", {"user_id": sam})
        assert not result.is_error, result.text
        assert journal.flush()
    finally:
        stop()
        journal.close()
    call_id = of_type(quiet.events_of(token), "agent:outcome_unknown")[0].call_id
    assert call_id
    [record] = calls(tmp_path, CallFilter(call=call_id))
    assert record["outcome"] == "answer lost; read back: done (confirmed)"
    assert record["reason"] == result.text
    types = [e["type"] for e in record["events"]]
    assert types.index("agent:outcome_unknown") < types.index("agent:outcome_reconciled")
    assert record["readBackJti"] and record["oboJti"] and record["readBackJti"] != \
        record["oboJti"]


def test_the_card_and_the_chain_view_say_unknown_and_what_the_read_showed(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    kim = create(lab, token, "lost-kim@example.com")
    lab.verify.admin_api.lose_answers(writes=1, reads=1)
    with phone(lab):
        result = mcp_call(lab, token, "deactivate_user", {"user_id": kim})
    shown = card("end", "deactivate_user", {"user_id": kim}, People({kim: "Kim L"}),
                 result=result.text, is_error=result.is_error)
    assert (shown["outcome"], shown["code"]) == ("unknown", "outcome_unknown")
    assert shown["reason"].startswith("deactivate_user: the admin API's answer was lost")
    assert "still unknown" in shown["reason"]
    last: ToolOutcome | None = lab.mcp.chain.last
    assert last is not None and last.text() == result.text
    view = chain_view(last.public())
    assert view["stoppedAt"] == 6 and view["readBack"] == "still unknown"
    assert view["readBackMs"] is not None
