"""What the chat page shows of one tool call: a card a person can read (the tool, its tier, the
target by name, the outcome and its reason, the time it took), the raw call kept for a toggle.

People are named by e-mail and display name, never ids: the chat remembers, per session, the
users and groups the agent has read in this conversation (`People.learn`) and names a target by
what it learned; an id it has not seen stays an id.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from iia.catalog import tool as catalog_tool

__all__ = ["TIER_NAMES", "People", "card"]

TIER_NAMES = {1: "read", 2: "write", 3: "sensitive", 4: "blocked"}
_REFUSAL = re.compile(r"^\[(?P<code>[a-z_]+)\] (?P<sentence>.*)$", re.S)
_TARGET_ARGS = ("user_id", "user_name", "group_id", "application_id", "policy_id")
RAW_LIMIT = 2000
UNKNOWN = "outcome_unknown"  # iia.enforcement: done or not, nobody could tell


@dataclass
class People:
    """Who is who, from what the agent read in this conversation: id -> readable name."""

    names: dict[str, str] = field(default_factory=dict)

    def learn(self, result: str) -> None:
        try:
            body = json.loads(result)
        except ValueError:
            return
        stack: list[Any] = [body]
        while stack and len(self.names) < 10_000:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
            elif isinstance(item, dict):
                ident = item.get("id")
                if isinstance(ident, str) and ident:
                    if isinstance(item.get("userName"), str):
                        shown = item.get("displayName")
                        self.names[ident] = (f"{shown} <{item['userName']}>"
                                             if isinstance(shown, str) and shown
                                             else str(item["userName"]))
                    elif isinstance(item.get("displayName"), str):
                        self.names[ident] = str(item["displayName"])
                stack.extend(v for v in item.values() if isinstance(v, dict | list))

    def name(self, value: str) -> str:
        return self.names.get(value, value)

    def readable(self, text: str) -> str:
        """`text` with every id this conversation has named replaced by the name."""
        for ident, shown in self.names.items():
            if ident in text:
                text = text.replace(ident, shown)
        return text


def card(phase: str, name: str, arguments: dict[str, Any], people: People, *,
         result: str | None = None, is_error: bool = False,
         ms: float | None = None) -> dict[str, Any]:
    """The card for a tool call's `phase` ("start" or "end")."""
    out: dict[str, Any] = {"phase": phase, "name": name, "input": arguments}
    try:
        tool = catalog_tool(name)
    except KeyError:
        tool = None
    if tool is not None:
        out["tier"] = tool.tier
        out["tierName"] = TIER_NAMES.get(tool.tier, str(tool.tier))
        try:
            out["summary"] = people.readable(tool.summary(arguments))
        except (KeyError, TypeError, ValueError):
            out["summary"] = name
    targets = [people.name(str(arguments[a])) for a in _TARGET_ARGS if arguments.get(a)]
    if targets:
        out["target"] = targets[0] if len(targets) == 1 else f"{targets[0]}, group {targets[1]}"
    if phase == "end":
        text = result or ""
        refusal = _REFUSAL.match(text) if is_error else None
        out["outcome"] = "refused" if is_error else "done"
        if refusal:
            out["code"] = refusal["code"]
            if refusal["code"] == UNKNOWN:  # a write whose answer was lost, not read back
                out["outcome"] = "unknown"
            out["reason"] = people.readable(refusal["sentence"])
        elif is_error:
            out["reason"] = people.readable(text[:500])
        out["is_error"] = is_error
        out["result"] = text[:RAW_LIMIT]
        if ms is not None:
            out["ms"] = round(ms)
    return out
