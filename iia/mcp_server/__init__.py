"""The MCP server: the tool catalog over MCP streamable HTTP, an OAuth resource server, and the
enforcement chain behind every tool call."""

from __future__ import annotations

from iia.mcp_server.app import McpServer

__all__ = ["McpServer"]
