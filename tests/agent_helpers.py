"""Helpers for tests that drive the product end to end: an MCP client per call, the agent loop,
and the scripted phone."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness.lab import Lab
from harness.phone import Plan, ScriptedPhone
from iia.agent import AgentLoop, AgentResult, McpToolClient, ToolResult, model_client
from iia.settings import AgentSettings


def mcp_call(lab: Lab, token: str, name: str, arguments: dict[str, Any]) -> ToolResult:
    async def go() -> ToolResult:
        async with McpToolClient(lab.mcp_url, lambda: token) as mcp:
            return await mcp.call_tool(name, arguments)

    return asyncio.run(go())


def mcp_tools(lab: Lab, token: str) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with McpToolClient(lab.mcp_url, lambda: token) as mcp:
            return await mcp.list_tools()

    return asyncio.run(go())


def ask(lab: Lab, token: str, prompt: str, *, max_retries: int = 0,
        **settings: Any) -> AgentResult:
    agent_settings = AgentSettings.from_env(lab.iia_env(), **settings)

    async def go() -> AgentResult:
        async with model_client(agent_settings, max_retries=max_retries) as model:
            loop = AgentLoop(agent_settings, model)
            async with McpToolClient(agent_settings.mcp_url, lambda: token) as mcp:
                return await loop.run([{"role": "user", "content": prompt}], mcp)

    return asyncio.run(go())


@contextmanager
def phone(lab: Lab, plan: Plan = True, delay: float = 0.05) -> Iterator[ScriptedPhone]:
    with ScriptedPhone(lab.verify, plan=plan, delay=delay) as p:
        yield p


def user_id(lab: Lab, email: str) -> str:
    user = lab.verify.directory.user_by_username(email)
    assert user is not None and user.id
    return user.id


def group_id(lab: Lab, name: str) -> str:
    group = lab.verify.directory.group_by_name(name)
    assert group is not None and group.id
    return group.id
