"""One tool call through the whole chain, end to end over real servers: the MCP server (stateless
streamable HTTP, our resource server), the workload identity (SPIFFE + Vault), push approvals
(CIBA, answered by a scripted phone), token exchange (Cedar policy) and the admin API."""

from __future__ import annotations

import hashlib
import json

import jwt
import pytest

from harness.lab import Lab
from iia.events import EventBus, looks_like_secret
from iia.identity import WorkloadIdentity
from iia.mcp_server import McpServer
from iia.settings import McpSettings
from tests.agent_helpers import group_id, mcp_call, phone, user_id
from tests.conftest import FakeClock
from tests.helpers import caller_of, user_token


@pytest.fixture
def alice(lab: Lab) -> str:
    return user_token(lab)["access_token"]


def events_of(lab: Lab, token: str, start: int) -> list:
    """This session's events since `mark` (a cursor: the bus history is bounded)."""
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    return [e for e in lab.events.since(start)[0] if e.session_id == sid]


def mark(lab: Lab) -> int:
    return lab.events.cursor()


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
    """The identical call twice: two pushes, two approvals, never a cached one."""
    target = user_id(lab, "heidi@example.com")
    pushes = len(lab.verify.approvals.all())
    start = mark(lab)
    with phone(lab) as p:
        for _ in range(2):
            result = mcp_call(lab, alice, "revoke_user_sessions", {"user_id": target})
            assert not result.is_error, result.text
    assert [a.tier for a in p.answered] == [3, 3]
    assert "Revoke all sessions of user" in p.answered[0].summary
    assert p.answered[0].id != p.answered[1].id
    assert len(lab.verify.approvals.all()) == pushes + 2  # two pushes reached the IdP
    mine = events_of(lab, alice, start)
    types = [e.type for e in mine]
    assert types.count("agent:hitl_required") == 2 and types.count("agent:hitl_approved") == 2
    assert "agent:hitl_cached" not in types
    exchanged = [e for e in mine if e.type == "agent:token_exchange_success"]
    assert len(exchanged) == 2
    assert exchanged[0].correlation["approvalId"] != exchanged[1].correlation["approvalId"]


def test_a_push_nobody_answers_expires(lab: Lab, lab_env: dict[str, str],
                                       identity: WorkloadIdentity, events: EventBus,
                                       alice: str) -> None:
    """The MCP server's chain with a 2 s approval timeout (IIA_APPROVAL_TIMEOUT) and no phone:
    the call ends with `approval_timeout` and `agent:hitl_expired`; nothing else runs."""
    server = McpServer(McpSettings.from_env({**lab_env, "IIA_APPROVAL_TIMEOUT": "2"}),
                       identity, events)
    target = user_id(lab, "judy@example.com")
    exchanges = len(lab.verify.audit.decisions("token_exchange"))
    requests = len(lab.verify.admin_api.requests)
    try:
        outcome = server.chain.call("deactivate_user", {"user_id": target}, caller_of(alice))
    finally:
        server.close()
    assert not outcome.ok and outcome.code == "approval_timeout"
    assert "did not answer" in outcome.error
    types = [e.type for e in events.recent() if e.type.startswith(("agent:", "spiffe:",
                                                                   "vault:"))]
    assert "agent:hitl_expired" in types and "agent:hitl_denied" not in types
    assert not [t for t in types if t.startswith("agent:token_exchange")]
    expired = events.recent(type="agent:hitl_expired")[0]
    pending = events.recent(type="agent:push_pending")[0]
    assert expired.outcome == "expired" and "did not answer" in expired.reason
    assert isinstance(expired.duration_ms, int) and expired.duration_ms > 0  # the wait, recorded
    assert expired.correlation["approvalId"] == pending.correlation["approvalId"]
    assert expired.spiffe_id == "spiffe://iia.lab/agentic-workload"
    error = events.recent(type="agent:tool_error")[-1].to_dict()
    assert error["error"] == "approval_timeout"
    assert len(lab.verify.audit.decisions("token_exchange")) == exchanges  # no exchange
    assert len(lab.verify.admin_api.requests) == requests  # the admin API saw nothing
    assert lab.verify.directory.user(target).active is True


def _approval_handle(lab: Lab, push_id: str) -> str:
    """The approval id events carry for the IdP's push `push_id` (a digest of its
    auth_req_id, which never travels itself)."""
    push = lab.verify.approvals.get(push_id)
    assert push is not None
    return hashlib.sha256(push.auth_req_id.encode()).hexdigest()[:16]


def test_one_exchange_record_joins_user_agent_operation_approval_and_token(
        lab: Lab, alice: str) -> None:
    workload = "spiffe://iia.lab/agentic-workload"
    target = user_id(lab, "peggy@example.com")
    start = mark(lab)
    with phone(lab) as p:
        assert not mcp_call(lab, alice, "revoke_user_sessions", {"user_id": target}).is_error
    mine = events_of(lab, alice, start)
    approved = next(e for e in mine if e.type == "agent:hitl_approved")
    record = next(e for e in mine if e.type == "agent:token_exchange_success").to_dict()
    assert record["userEmail"] == "alice@example.com"  # user
    assert record["spiffeId"] == workload  # agent
    assert record["rarType"] == "verify_revoke_user_sessions"  # operation
    obo = next(o.obo_claims for _, o in reversed(lab.mcp.chain.history)
               if o.obo_claims and o.obo_claims["jti"] == record["correlation"]["oboJti"])
    assert obo["authorization_details"][0]["digest"] == record["correlation"]["rarDigest"]
    assert obo["authorization_details"][0]["target"] == target
    assert record["correlation"]["approvalId"] == approved.correlation["approvalId"]  # approval
    issued = lab.verify.audit.decisions("token_exchange")[-1]
    assert record["correlation"]["oboJti"] == issued.jti  # token, as the IdP minted it
    assert issued.approval_id == p.answered[0].id  # the IdP's own record of the approval...
    assert _approval_handle(lab, issued.approval_id) == record["correlation"]["approvalId"]
    for event in mine:  # the actor is named on every agent decision after step 3
        if event.type.startswith("agent:"):
            assert event.spiffe_id == workload, event.type


def test_tier2_writes_carry_the_session_consents_approval(lab: Lab, alice: str) -> None:
    start = mark(lab)
    with phone(lab):
        assert not mcp_call(lab, alice, "create_user", {
            "user_name": "rita@example.com", "given_name": "Rita", "family_name": "R"}
        ).is_error
        assert not mcp_call(lab, alice, "add_user_to_group", {
            "user_id": user_id(lab, "rita@example.com"),
            "group_id": group_id(lab, "Engineering")}).is_error
    mine = events_of(lab, alice, start)
    consent = next(e for e in mine if e.type == "agent:hitl_approved").correlation["approvalId"]
    cached = next(e for e in mine if e.type == "agent:hitl_cached")
    assert cached.correlation["approvalId"] == consent
    exchanged = [e for e in mine if e.type == "agent:token_exchange_success"]
    assert [e.correlation["approvalId"] for e in exchanged] == [consent, consent]
    assert len({e.correlation["oboJti"] for e in exchanged}) == 2


def test_refusals_name_the_actor(lab: Lab, alice: str) -> None:
    workload = "spiffe://iia.lab/agentic-workload"
    start = mark(lab)
    with phone(lab, plan=False):
        assert mcp_call(lab, alice, "deactivate_user", {
            "user_id": user_id(lab, "laura@example.com")}).is_error
    assert mcp_call(lab, alice, "delete_user", {"user_id": user_id(lab, "ivan@example.com")}
                    ).is_error
    mine = events_of(lab, alice, start)
    denied = next(e for e in mine if e.type == "agent:hitl_denied")
    pending = next(e for e in mine if e.type == "agent:push_pending")
    assert denied.spiffe_id == workload
    assert denied.correlation["approvalId"] == pending.correlation["approvalId"]
    refused = next(e for e in mine if e.type == "agent:token_exchange_denied")
    assert refused.spiffe_id == workload and "approvalId" not in refused.correlation
    errors = [e for e in mine if e.type == "agent:tool_error"]
    assert errors and all(e.spiffe_id == workload for e in errors)


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


def test_the_warm_path_reads_vault_once_per_call(lab: Lab, alice: str) -> None:
    """Step 3 reads the credential before any approval; the exchange uses that read, so a warm
    tier-1 call still costs one Vault read, and no login or SVID fetch."""
    assert not mcp_call(lab, alice, "list_groups", {}).is_error  # warm everything up
    logins, fetches = lab.mcp_identity.vault.logins, lab.mcp_identity.svids.fetches
    start = mark(lab)
    assert not mcp_call(lab, alice, "list_groups", {}).is_error
    mine = events_of(lab, alice, start)
    assert [e.type for e in mine if e.type.startswith("vault:")] == ["vault:secret_read"]
    assert (lab.mcp_identity.vault.logins, lab.mcp_identity.svids.fetches) == (logins, fetches)
    assert set(lab.mcp.chain.last.timings.steps) >= {"svid", "vault", "exchange", "admin_api"}


def test_a_tier3_call_uses_each_credential_read_once(lab: Lab, alice: str) -> None:
    """The credential read in step 3 serves the push itself; no use meets a stale secret."""
    start = mark(lab)
    with phone(lab):
        assert not mcp_call(lab, alice, "revoke_user_sessions", {
            "user_id": user_id(lab, "heidi@example.com")}).is_error
    types = [e.type for e in events_of(lab, alice, start)]
    assert "vault:rotation_retry" not in types
    first_read = types.index("vault:secret_read")
    assert first_read < types.index("agent:hitl_required")
