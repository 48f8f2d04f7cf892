"""The agent loop (Claude + MCP tools) that runs inside our trust zone."""

from __future__ import annotations

from iia.agent.loop import (
    AgentLoop,
    AgentResult,
    ModelClient,
    ModelUnavailableError,
    model_client,
)
from iia.agent.mcp_client import McpToolClient, McpUnavailableError, SessionEndedError, ToolResult

__all__ = ["AgentLoop", "AgentResult", "McpToolClient", "McpUnavailableError", "ModelClient",
           "ModelUnavailableError", "SessionEndedError", "ToolResult", "model_client"]
