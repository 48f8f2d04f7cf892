"""The seven steps of one tool call (docs/architecture.md §2), as the chat page's chain view
shows them: each step passed, skipped (no approval needed), stopped the call, or was never
reached, with the milliseconds the enforcement chain measured for it.

Built from `iia.enforcement.ToolOutcome.public()` (outcome, wire code, per-step timings, decoded
on-behalf-of claims; never a token). The step that stopped a call comes from its wire code, and
otherwise from the first step the chain did not finish.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iia.catalog import tool as catalog_tool

__all__ = ["STEPS", "chain_view"]

STEPS = (
    (1, "Authenticate the caller", "bearer user token: signature, audience, live session"),
    (2, "Validate the arguments", "the tool's JSON schema"),
    (3, "Workload identity", "JWT-SVID from SPIFFE, Vault login, rotating credential"),
    (4, "Human in the loop", "push approval by CIBA (tier 2 once per session, tier 3 every call)"),
    (5, "Token exchange + RAR", "RFC 8693 with one RFC 9396 object; the IdP's policy decides"),
    (6, "Admin API", "with the on-behalf-of token, for exactly this request"),
    (7, "Emit events", "the security panel and CAEP SETs through Antenna"),
)


def _stopped_at(public: Mapping[str, Any], steps: Mapping[str, float], hitl: bool) -> int | None:
    if public.get("ok"):
        return None
    code = str(public.get("code") or "")
    if code in ("invalid_arguments", "unknown_tool"):
        return 2
    if code.startswith("approval_"):
        return 4
    if code.startswith("admin_api") or "admin_api" in steps:
        return 6
    if "exchange" in steps or "approval" in steps:
        return 5
    if "svid" in steps or "vault" in steps:
        return 4 if hitl else 5
    return 3


def chain_view(public: Mapping[str, Any]) -> dict[str, Any]:
    """The call's seven steps and the step that stopped it (None when it went through)."""
    name = str(public.get("tool", ""))
    try:
        tier: int | None = catalog_tool(name).tier
    except KeyError:
        tier = None
    hitl = tier in (2, 3)
    timed: Mapping[str, float] = public.get("steps") or {}
    stopped = _stopped_at(public, timed, hitl)
    ms: dict[int, float | None] = {
        1: None, 2: None,
        3: (round(timed.get("svid", 0) + timed.get("vault", 0), 2)
            if "svid" in timed or "vault" in timed else None),
        4: timed.get("approval"), 5: timed.get("exchange"), 6: timed.get("admin_api"), 7: None}
    out = []
    for number, title, what in STEPS:
        if number == 7:
            status = "ok"  # every decision, a refusal too, is an event
        elif stopped is not None and number == stopped:
            status = "stopped"
        elif stopped is not None and number > stopped:
            status = "not_reached"
        elif number == 4 and not hitl:
            status = "skipped"
        else:
            status = "ok"
        out.append({"step": number, "title": title, "what": what, "status": status,
                    "ms": ms[number]})
    return {"callId": public.get("callId"), "tool": name, "tier": tier, "ok": bool(
        public.get("ok")), "code": public.get("code"), "error": public.get("error"),
        "stoppedAt": stopped, "totalMs": timed.get("total"), "steps": out,
        "obo": public.get("obo"),
        # a write whose answer was lost: what reading it back showed, and how long it took
        **({"readBack": public["readBack"], "readBackMs": timed.get("read_back")}
           if public.get("readBack") else {})}
