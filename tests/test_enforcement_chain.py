"""One tool call through the whole chain, end to end over real servers: the MCP server (stateless
streamable HTTP, our resource server), the workload identity (SPIFFE + Vault), push approvals
(CIBA, answered by a scripted phone), token exchange (Cedar policy) and the admin API."""

from __future__ import annotations

import json

import jwt
import pytest

from harness.lab import Lab
from iia.events import looks_like_secret
from tests.agent_helpers import group_id, mcp_call, phone, user_id
from tests.conftest import FakeClock
from tests.helpers import user_token


@pytest.fixture
def alice(lab: Lab) -> str:
    return user_token(lab)["access_token"]


def events_of(lab: Lab, token: str, start: int) -> list:
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    return [e for e in lab.events.recent()[start:] if e.session_id == sid]


def mark(lab: Lab) -> int:
    return len(lab.events.recent())


def test_tier1_read_emits_the_articles_event(lab: Lab, alice: str) -> None:
    start = mark(lab)
    result = mcp_call(lab, alice, "list_users", {"count": 50})
    assert not result.is_error
    body = json.loads(result.text)
    assert body["totalResults"] >= 20 and "alice@example.com" in result.text
    success = [e for e in events_of(lab, alice, start) if e.type ==
               "agent:token_exchange_success"]
    assert len(success) == 1
    wire = success[0].to_dict()
    assert wire["userEmail"] == "alice@example.com" and wire["toolName"] == "list_users"
    assert wire["tier"] == 1 and wire["rarType"] == "verify_read_users"
    assert wire["rarSummary"] == "Read SCIM users, limit=50"
    assert isinstance(wire["durationMs"], int) and wire["outcome"] == "success"
    assert wire["actorTokenType"] == "urn:ietf:params:oauth:token-type:jwt"
    assert wire["spiffeId"] == "spiffe://iia.lab/agentic-workload"
    assert wire["oboTokenExpiresIn"] == 900 and wire["correlation"]["oboJti"]
    dumped = json.dumps(wire)
    assert user_id(lab, "alice@example.com") not in dumped  # the email, never the raw sub
    assert alice not in dumped and not looks_like_secret(dumped)


def test_tier2_asks_once_per_session_then_uses_the_cached_consent(lab: Lab, alice: str) -> None:
    start = mark(lab)
    with phone(lab) as p:
        first = mcp_call(lab, alice, "create_user", {"user_name": "tess@example.com",
                                                      "given_name": "Tess", "family_name": "Tao"})
        assert not first.is_error, first.text
        second = mcp_call(lab, alice, "add_user_to_group", {
            "user_id": user_id(lab, "tess@example.com"),
            "group_id": group_id(lab, "Engineering")})
        assert not second.is_error, second.text
    assert len(p.answered) == 1 and p.answered[0].tier == 2
    types = [e.type for e in events_of(lab, alice, start)
             if e.type.startswith(("agent:hitl", "agent:push"))]
    assert types == ["agent:hitl_required", "agent:push_pending", "agent:hitl_approved",
                     "agent:hitl_cached"]
    cached = next(e for e in events_of(lab, alice, start) if e.type == "agent:hitl_cached")
    assert cached.duration_ms == 0


def test_session_b_never_rides_on_session_a_consent(lab: Lab) -> None:
    a, b = user_token(lab)["access_token"], user_token(lab)["access_token"]
    with phone(lab) as p:
        assert not mcp_call(lab, a, "create_user", {"user_name": "uma@example.com",
                                                     "given_name": "Uma", "family_name": "U"}
                            ).is_error
        assert not mcp_call(lab, b, "create_user", {"user_name": "vic@example.com",
                                                     "given_name": "Vic", "family_name": "V"}
                            ).is_error
    assert len(p.answered) == 2  # B was asked too


def test_consent_expires_after_30_minutes(lab: Lab, alice: str) -> None:
    clock = FakeClock()
    original = lab.mcp.consents.clock
    lab.mcp.consents.clock = clock
    try:
        with phone(lab) as p:
            for i, advance in enumerate((0, 29 * 60, 2 * 60)):
                clock.advance(advance)
                result = mcp_call(lab, alice, "create_user", {
                    "user_name": f"wes{i}@example.com", "given_name": "Wes",
                    "family_name": "W"})
                assert not result.is_error, result.text
        assert len(p.answered) == 2  # at 0 and again after 31 minutes, not at 29
    finally:
        lab.mcp.consents.clock = original


def test_tier3_asks_every_time(lab: Lab, alice: str) -> None:
    with phone(lab) as p:
        for email in ("heidi@example.com", "peggy@example.com"):
            result = mcp_call(lab, alice, "revoke_user_sessions", {"user_id": user_id(lab, email)})
            assert not result.is_error, result.text
    assert [a.tier for a in p.answered] == [3, 3]
    assert "Revoke all sessions of user" in p.answered[0].summary


def test_a_denied_tier3_push_changes_nothing(lab: Lab, alice: str) -> None:
    target = user_id(lab, "laura@example.com")
    decisions = len(lab.verify.audit.decisions("token_exchange"))
    requests = len(lab.verify.admin_api.requests)
    start = mark(lab)
    with phone(lab, plan=False):
        result = mcp_call(lab, alice, "deactivate_user", {"user_id": target})
    assert result.is_error and result.text.startswith("[approval_denied]")
    assert lab.verify.directory.user(target).active is True
    assert len(lab.verify.audit.decisions("token_exchange")) == decisions  # no exchange
    assert len(lab.verify.admin_api.requests) == requests  # the admin API saw nothing
    assert "agent:hitl_denied" in [e.type for e in events_of(lab, alice, start)]


def test_tier4_is_refused_at_the_token_endpoint_with_the_policy_reason(lab: Lab,
                                                                       alice: str) -> None:
    target = user_id(lab, "ivan@example.com")
    requests = len(lab.verify.admin_api.requests)
    start = mark(lab)
    with phone(lab) as p:
        result = mcp_call(lab, alice, "delete_user", {"user_id": target})
    assert result.is_error and result.text.startswith("[access_denied]")
    assert "tier4-blocked" in result.text and "blocked" in result.text
    assert p.answered == []  # nothing to approve
    assert len(lab.verify.admin_api.requests) == requests
    assert lab.verify.directory.user(target) is not None
    denied = [e for e in events_of(lab, alice, start) if e.type == "agent:token_exchange_denied"]
    assert len(denied) == 1 and denied[0].to_dict()["policyId"] == "tier4-blocked"
    assert denied[0].outcome == "denied" and "blocked" in denied[0].reason


@pytest.mark.parametrize("name,arguments,where", [
    ("list_users", {"count": 1000}, "count"),
    ("list_users", {"bogus": 1}, "arguments"),
    ("create_user", {"user_name": "not-an-email", "given_name": "A", "family_name": "B"},
     "user_name"),
    ("create_user", {"given_name": "A"}, "arguments"),
    ("deactivate_user", {"user_id": "../../Groups"}, "user_id"),
])
def test_bad_arguments_are_a_tool_error_and_nothing_runs(lab: Lab, alice: str, name: str,
                                                         arguments: dict, where: str) -> None:
    audit = len(lab.verify.audit)
    with phone(lab) as p:
        result = mcp_call(lab, alice, name, arguments)
    assert result.is_error and result.text.startswith("[invalid_arguments]")
    assert where in result.text
    assert len(lab.verify.audit) == audit and p.answered == []


def test_unknown_tool(lab: Lab, alice: str) -> None:
    result = mcp_call(lab, alice, "drop_tenant", {})
    assert result.is_error and "unknown_tool" in result.text


def test_the_user_token_goes_nowhere_but_the_token_endpoint(lab: Lab, alice: str) -> None:
    """The admin API only ever sees on-behalf-of tokens (with `act`)."""
    before = len(lab.verify.admin_api.requests)
    assert not mcp_call(lab, alice, "list_groups", {}).is_error
    seen = lab.verify.audit.decisions("admin_api")[-1]
    assert seen.actor == "spiffe://iia.lab/agentic-workload"
    assert len(lab.verify.admin_api.requests) == before + 1


def test_when_the_idp_drops_the_consent_first_the_next_write_asks_again(lab: Lab,
                                                                         alice: str) -> None:
    clock = FakeClock()
    original = lab.verify.approvals.clock
    try:
        with phone(lab) as p:
            assert not mcp_call(lab, alice, "create_user", {
                "user_name": "ada@example.com", "given_name": "Ada", "family_name": "A"}
            ).is_error
            lab.verify.approvals.clock = clock
            clock.advance(31 * 60)  # the IdP's record is older than 30 min; ours is not
            refused = mcp_call(lab, alice, "create_user", {
                "user_name": "bea@example.com", "given_name": "Bea", "family_name": "B"})
            assert refused.is_error and "tier2-needs-session-approval" in refused.text
            again = mcp_call(lab, alice, "create_user", {
                "user_name": "bea@example.com", "given_name": "Bea", "family_name": "B"})
            assert not again.is_error, again.text
        assert len(p.answered) == 2  # asked again after the refusal
    finally:
        lab.verify.approvals.clock = original


def test_a_token_shaped_argument_is_redacted_not_a_crash(lab: Lab, alice: str) -> None:
    """Arguments come from the model: a token-shaped one is redacted in every event, and the
    call still ends with a decision on record."""
    jwt_like = ".".join(("eyJhbGciOiJFUzI1NiJ9", "eyJzdWIiOiJ4In0", "c2lnbmF0dXJl"))
    before = lab.events.redactions
    start = mark(lab)
    result = mcp_call(lab, alice, "delete_user", {"user_id": jwt_like})
    assert result.is_error and "tier4-blocked" in result.text  # refused, not crashed
    mine = events_of(lab, alice, start)
    denied = [e for e in mine if e.type == "agent:token_exchange_denied"]
    assert denied and "[redacted]" in denied[0].rar_summary
    assert lab.events.redactions > before
    assert not any(jwt_like in json.dumps(e.to_dict()) for e in mine)


def test_the_chains_own_events_never_need_redaction(lab: Lab, alice: str) -> None:
    before = lab.events.redactions
    with phone(lab):
        for name, args in (("list_users", {}), ("get_user", {"user_id": user_id(
                lab, "bob@example.com")}), ("list_access_policies", {})):
            assert not mcp_call(lab, alice, name, args).is_error
    assert lab.events.redactions == before


def test_removing_a_member_can_be_the_first_write(lab: Lab, alice: str) -> None:
    """Long ids in the summary still fit the push's binding message."""
    with phone(lab) as p:
        result = mcp_call(lab, alice, "remove_user_from_group", {
            "user_id": user_id(lab, "frank@example.com"),
            "group_id": group_id(lab, "Sales")})
    assert not result.is_error, result.text
    assert len(p.answered) == 1
    members = lab.verify.directory.group(group_id(lab, "Sales")).members or []
    assert user_id(lab, "frank@example.com") not in {m.value for m in members}
