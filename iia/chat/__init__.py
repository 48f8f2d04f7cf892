"""The chat route: sign-in, the agent loop behind a streamed answer, security events."""

from __future__ import annotations

from iia.chat.app import COOKIE, ChatApp

__all__ = ["COOKIE", "ChatApp"]
