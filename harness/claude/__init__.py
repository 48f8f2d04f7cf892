"""A scripted stand-in for Claude: the Messages API, answered by deterministic rules."""

from __future__ import annotations

from harness.claude.script import ScriptedModel, Turn
from harness.claude.server import MessagesApi

__all__ = ["MessagesApi", "ScriptedModel", "Turn"]
