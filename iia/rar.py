"""Building the RFC 9396 `authorization_details` object for one tool call.

One object describes exactly one operation: its registered `type` and `actions`, the admin API
in `locations` (§2.2), the tier, a one-line `summary` a person can read on their phone, the
type's own fields (`target`, `group`) and a `digest` of the exact arguments, so an approval or a
token for one call can never serve another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from iia.catalog import Tool

__all__ = ["argument_digest", "authorization_details", "session_consent_details", "wire"]


def wire(details: Mapping[str, Any]) -> str:
    """The `authorization_details` form parameter for one object (a JSON array, RFC 9396 §2)."""
    return json.dumps([dict(details)])


def argument_digest(arguments: Mapping[str, Any]) -> str:
    """sha256 over the canonical JSON of the arguments (sorted keys, no spaces)."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def authorization_details(tool: Tool, arguments: Mapping[str, Any],
                          admin_api_url: str) -> dict[str, Any]:
    return {
        "type": tool.rar_type,
        "actions": list(tool.actions),
        "locations": [admin_api_url],
        "tier": tool.tier,
        "summary": tool.summary(arguments),
        "digest": argument_digest({"tool": tool.name, "arguments": dict(arguments)}),
        **tool.rar_fields(arguments),
    }


def session_consent_details(session_id: str, duration: int, admin_api_url: str,
                            summary: str) -> dict[str, Any]:
    """The tier-2 approval: the user lets the agent write in this session for `duration` s."""
    return {
        "type": "agent_write_consent",
        "actions": ["approve"],
        "locations": [admin_api_url],
        "tier": 2,
        "summary": summary,
        "digest": argument_digest({"session": session_id, "duration": duration}),
        "session": session_id,
        "duration": duration,
    }
