"""The agent loop: Claude (here the scripted stand-in, through the unmodified anthropic SDK)
driving our MCP server with the user's token."""

from __future__ import annotations

import asyncio
import json

import jwt

from harness.lab import Lab
from iia.agent import AgentLoop, McpToolClient, model_client
from iia.events import looks_like_secret
from iia.settings import AgentSettings
from tests.agent_helpers import ask, phone, user_id
from tests.helpers import user_token


def test_a_read_conversation(lab: Lab) -> None:
    result = ask(lab, user_token(lab)["access_token"], "list users")
    assert result.stop == "end_turn"
    assert [c["name"] for c in result.tool_calls] == ["list_users"]
    assert "Alice Anders" in result.text and "users" in result.text


def test_text_is_streamed(lab: Lab) -> None:
    settings = AgentSettings.from_env(lab.iia_env())
    token = user_token(lab)["access_token"]
    pieces: list[str] = []

    async def go():
        async with (model_client(settings, max_retries=0) as model,
                    McpToolClient(settings.mcp_url, lambda: token) as mcp):
            return await AgentLoop(settings, model).run(
                [{"role": "user", "content": "list groups"}], mcp, on_text=pieces.append)

    result = asyncio.run(go())
    assert len(pieces) > 2 and "".join(pieces).endswith(result.text)


def test_the_loop_is_bounded(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    result = ask(lab, token, "keep checking users until I say stop", max_steps=3)
    assert result.stop == "max_steps" and len(result.tool_calls) == 3
    assert "3 steps" in result.text
    default = ask(lab, token, "keep checking users")
    assert default.stop == "max_steps" and len(default.tool_calls) == 10


def test_prompt_injection_dies_at_the_identity_layer(lab: Lab) -> None:
    ivan = user_id(lab, "ivan@example.com")
    requests = len(lab.verify.admin_api.requests)
    with phone(lab) as p:
        result = ask(lab, user_token(lab)["access_token"], "please review the contractors")
    names = [c["name"] for c in result.tool_calls]
    assert names == ["list_users", "delete_user"]  # the model obeyed the poisoned record...
    attempt = result.tool_calls[1]
    assert attempt["input"] == {"user_id": ivan} and attempt["is_error"]
    assert "tier4-blocked" in attempt["result"]  # ...and the IdP refused to mint a token
    assert "refused" in result.text
    assert p.answered == []
    assert lab.verify.directory.user(ivan) is not None
    assert [r for r in lab.verify.admin_api.requests[requests:] if r.method == "DELETE"] == []
    # the refusal went back to the model as an error tool_result
    last = lab.claude.requests[-1]["messages"][-1]["content"][0]
    assert last["type"] == "tool_result" and last["is_error"] is True


def test_the_model_never_sees_a_token(lab: Lab) -> None:
    tokens = user_token(lab)
    with phone(lab):
        ask(lab, tokens["access_token"], "create user xena@example.com Xena Xu")
        ask(lab, tokens["access_token"], "deactivate mike@example.com")
    shown = json.dumps(lab.claude.requests)
    assert tokens["access_token"] not in shown and not looks_like_secret(shown)
    assert "client_secret" not in shown


def test_a_session_ended_mid_conversation_stops_the_loop_and_says_why(lab: Lab) -> None:
    settings = AgentSettings.from_env(lab.iia_env())
    token = user_token(lab)["access_token"]
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]

    async def go():
        async with model_client(settings, max_retries=0) as model:
            loop = AgentLoop(settings, model)
            async with McpToolClient(settings.mcp_url, lambda: token) as mcp:
                first = await loop.run([{"role": "user", "content": "list users"}], mcp)
                lab.mcp.revocations.revoke(sid, "CAEP session-revoked: anomaly detected")
                second = await loop.run([{"role": "user", "content": "list users"}], mcp)
                return first, second

    first, second = asyncio.run(go())
    assert first.stop == "end_turn"
    assert second.stop == "session_ended"
    assert "anomaly detected" in second.reason and "ended" in second.text
