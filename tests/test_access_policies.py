"""`get_access_policy` end to end: the MCP tool, the token exchange for its tier-1 RAR type
(`verify_read_access_policy`, permitted by the Cedar rule `tier1-read` through the type's tier
parent) and `GET /accesspolicies/{id}` at the admin API with the single-use OBO token."""

from __future__ import annotations

import json

import pytest

from harness.lab import Lab
from tests.agent_helpers import mcp_call, phone
from tests.helpers import user_token


@pytest.fixture
def alice(lab: Lab) -> str:
    return user_token(lab)["access_token"]


def test_get_access_policy_reaches_the_endpoint_through_the_chain(lab: Lab, alice: str) -> None:
    exchanges = len(lab.verify.audit.decisions("token_exchange"))
    requests = len(lab.verify.admin_api.requests)
    with phone(lab) as p:
        result = mcp_call(lab, alice, "get_access_policy", {"policy_id": "policy-mfa"})
    assert not result.is_error, result.text
    body = json.loads(result.text)
    assert body["id"] == "policy-mfa" and body["rules"][0]["action"] == "MFA_PER_SESSION"
    assert p.answered == []  # tier 1: no push
    issued = lab.verify.audit.decisions("token_exchange")[exchanges:]
    assert [(d.outcome, d.rar_type, d.target) for d in issued] == [
        ("issued", "verify_read_access_policy", "policy-mfa")]
    assert issued[0].policy_id == "tier1-read"
    seen = lab.verify.admin_api.requests[requests:]
    assert [(r.method, r.path, r.status, r.outcome, r.rar_type) for r in seen] == [
        ("GET", "/accesspolicies/policy-mfa", 200, "allowed", "verify_read_access_policy")]


def test_an_unknown_policy_is_a_tool_error_that_names_it(lab: Lab, alice: str) -> None:
    policies = json.dumps(lab.verify.directory.access_policies, sort_keys=True)
    requests = len(lab.verify.admin_api.requests)
    result = mcp_call(lab, alice, "get_access_policy", {"policy_id": "policy-nope"})
    assert result.is_error and "policy-nope" in result.text
    seen = lab.verify.admin_api.requests[requests:]
    assert [(r.path, r.status) for r in seen] == [("/accesspolicies/policy-nope", 404)]
    assert json.dumps(lab.verify.directory.access_policies, sort_keys=True) == policies
