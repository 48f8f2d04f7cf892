"""Continuous evaluation end to end: an anomaly in the agent's behaviour becomes a CAEP
session-revoked SET from Antenna; the IdP ends the session, the MCP server drops it, and the
agent's next call gets 401 (with the reason). Every decision also became a SET."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import jwt
import pytest

from harness.lab import Lab
from iia.agent import AgentLoop, McpToolClient, SessionEndedError, model_client
from iia.antenna import AGENT, CAEP
from iia.settings import AgentSettings
from tests.agent_helpers import mcp_call, phone, user_id
from tests.helpers import exchange, rar, user_token


def eventually(check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def sid_of(token: str) -> str:
    return jwt.decode(token, options={"verify_signature": False})["sid"]


def revoked_sets(lab: Lab, sid: str) -> list:
    return [e for e in lab.caep.events(CAEP["session-revoked"])
            if e.claims["sub_id"].get("session", {}).get("id") == sid]


def test_repeated_tier4_attempts_kill_the_session_everywhere(lab: Lab, identity) -> None:
    token = user_token(lab)["access_token"]
    sid = sid_of(token)
    settings = AgentSettings.from_env(lab.iia_env())
    # an on-behalf-of token minted *before* the revocation, for a read
    early = exchange(lab, identity, token, rar(lab, "verify_read_groups"))
    assert early.status_code == 200

    async def go():
        async with model_client(settings, max_retries=0) as model, \
                McpToolClient(settings.mcp_url, lambda: token) as mcp:
            loop = AgentLoop(settings, model)
            first = await loop.run([{"role": "user", "content": "delete ivan@example.com"}], mcp)
            second = await loop.run([{"role": "user", "content": "make bob@example.com an admin"}],
                                    mcp)
            eventually(lambda: lab.mcp.revocations.reason(sid) is not None)
            emitted = lab.antenna.revocations[sid]["emitted_at"]
            third = await loop.run([{"role": "user", "content": "list users"}], mcp)
            return first, second, third, emitted

    first, second, third, emitted = asyncio.run(go())
    assert "tier4-blocked" in first.text and "tier4-blocked" in second.text
    assert third.stop == "session_ended" and "2 blocked (tier 4) actions" in third.reason
    assert third.tool_calls == []  # nothing ran after the revocation
    # the SET went to every subscriber
    eventually(lambda: bool(revoked_sets(lab, sid)))  # every subscriber got it...
    eventually(lambda: not lab.verify.sessions.alive(sid))  # ...and the IdP ended the session
    # the first refusal came after the SET was emitted (how soon: `make bench`)
    assert lab.mcp.revocations.first_refusal(sid) > emitted
    # the token minted before the revocation is dead at the admin API
    api = httpx.get(f"{lab.verify.admin_api_url}/Groups",
                    headers={"Authorization": f"Bearer {early.json()['access_token']}"})
    assert api.status_code == 401
    # and the user's token is refused everywhere: MCP (401) and the token endpoint
    with pytest.raises(SessionEndedError, match="anomaly"):
        mcp_call(lab, token, "list_users", {})
    assert exchange(lab, identity, token, rar(lab, "verify_read_users")).json()["error"] == \
        "invalid_grant"


def test_three_denied_pushes_in_a_row_kill_the_session(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    sid = sid_of(token)
    target = user_id(lab, "nina@example.com")
    with phone(lab, plan=False):
        for _ in range(3):
            result = mcp_call(lab, token, "deactivate_user", {"user_id": target})
            assert result.text.startswith("[approval_denied]")
    eventually(lambda: lab.mcp.revocations.reason(sid) is not None)
    assert "3 push approvals denied in a row" in lab.mcp.revocations.reason(sid)
    assert lab.verify.directory.user(target).active
    with pytest.raises(SessionEndedError):
        mcp_call(lab, token, "list_users", {})


def test_too_many_calls_per_minute_kill_the_session(lab: Lab) -> None:
    rules = lab.antenna.detector.rules
    lab.antenna.detector.rules = dataclasses.replace(rules, calls_per_minute=4)
    try:
        token = user_token(lab)["access_token"]
        sid = sid_of(token)
        made = 0
        with pytest.raises(SessionEndedError, match="tool calls in a minute"):
            for _ in range(10):  # the agent keeps going until the session is killed
                mcp_call(lab, token, "list_groups", {"count": 1})
                made += 1
        assert 4 <= made <= 6  # the fifth call crossed the line
        assert "tool calls in a minute" in lab.mcp.revocations.reason(sid)
    finally:
        lab.antenna.detector.rules = rules


def test_every_decision_becomes_a_set(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    sid = sid_of(token)
    with phone(lab, plan=lambda push: push.tier == 2):
        assert not mcp_call(lab, token, "list_groups", {}).is_error
        assert not mcp_call(lab, token, "create_user", {
            "user_name": "yuki@example.com", "given_name": "Yuki", "family_name": "Y"}).is_error
        assert not mcp_call(lab, token, "add_user_to_group", {
            "user_id": user_id(lab, "yuki@example.com"),
            "group_id": lab.verify.directory.group_by_name("Sales").id}).is_error
    with phone(lab, plan=False):
        assert mcp_call(lab, token, "revoke_user_sessions",
                        {"user_id": user_id(lab, "oscar@example.com")}).is_error
    assert mcp_call(lab, token, "delete_user", {"user_id": user_id(lab, "ivan@example.com")}
                    ).is_error
    # a push nobody answered: published straight on the bus, as the chain reports a timeout
    expired = lab.events.emit("agent:hitl_expired", outcome="expired", session_id=sid,
                              user_email="alice@example.com", tool_name="deactivate_user",
                              tier=3, reason="the push expired unanswered", duration_ms=0,
                              correlation={"approvalId": "req-expired"})

    def mine() -> list:
        return [e for e in lab.caep.events()
                if e.claims["sub_id"].get("session", {}).get("id") == sid]

    wanted = {AGENT["token-exchange-issued"], AGENT["token-exchange-denied"],
              AGENT["approval-given"], AGENT["approval-denied"], AGENT["approval-reused"],
              AGENT["approval-expired"]}
    eventually(lambda: wanted <= {e.event_type for e in mine()})
    # the expiry became exactly one SET on the CAEP receiver's stream, the one sets_for names
    [got] = [e for e in mine() if e.event_type == AGENT["approval-expired"]]
    assert lab.antenna.sets_for(expired.event_id) == [(lab.streams["caep_receiver"], got.jti)]
    assert got.claims["events"][AGENT["approval-expired"]]["outcome"] == "expired"


def test_the_chat_route_tells_the_user_why(lab: Lab) -> None:
    from tests.test_chat_route import sign_in, sse

    browser, _ = sign_in(lab)
    try:
        for prompt in ("delete ivan@example.com", "delete mike@example.com"):
            with browser.stream("POST", "/chat", json={"message": prompt}) as response:
                list(sse(response))
        time.sleep(0.3)
        with browser.stream("POST", "/chat", json={"message": "list users"}) as response:
            done = next(d for k, d in sse(response) if k == "done")
        assert done["stop"] == "session_ended" and "anomaly" in done["reason"]
        assert "ended" in done["text"]
    finally:
        browser.close()
