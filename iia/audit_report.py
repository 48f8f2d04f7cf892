"""The auditor's view of the durable audit trail: one record per tool call.

A call's record joins, by its `callId`, every security event the MCP server emitted for it (and
the SET jtis Antenna issued for them), the IdP's decisions about it and the on-behalf-of
token's jti. The IdP does not know the MCP server's call ids, so its decisions are joined by
what both sides record: the OBO jti where a token was issued (the token exchange, the admin
API's acceptance); for a refusal or a push, which carry none, the session, the RAR type and
the call's time window. Read-only: it never writes the trail.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from iia.audit_trail import DECISIONS, EVENTS, read_records

__all__ = ["AuditQueryError", "CallFilter", "calls", "parse_since", "render"]

# slack around a call's first and last event when joining refusals and pushes (the events'
# times are cut to the millisecond; the IdP decides before the MCP server emits what it heard)
_WINDOW_S = 0.05
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class AuditQueryError(Exception):
    """A question the trail cannot answer as asked; the message is a sentence for a person."""


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`10m`, `1h`, `30s`, `2d` (ago), or an ISO 8601 time (UTC unless it names an offset)."""
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AuditQueryError(
            f"--since takes a duration such as 10m, 1h or 2d, or an ISO time such as "
            f"2026-12-02T20:00:00Z; {text!r} is neither") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _time(value: Any) -> datetime | None:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None


@dataclass(frozen=True)
class CallFilter:
    user: str | None = None
    session: str | None = None
    call: str | None = None
    since: datetime | None = None

    def admits(self, record: Mapping[str, Any]) -> bool:
        if self.user and (record.get("user") or "").lower() != self.user.lower():
            return False
        if self.session and record.get("session") != self.session:
            return False
        if self.call and record.get("callId") != self.call:
            return False
        started = _time(record.get("time"))
        return not (self.since and (started is None or started < self.since))


def _outcome(events: list[dict[str, Any]]) -> tuple[str, str | None, dict[str, Any] | None]:
    """(what became of the call, why, the event that says so)."""
    for event in events:
        if event.get("type") == "agent:token_exchange_denied":
            return "refused by the IdP", event.get("reason"), event
    for event in events:
        if event.get("type") == "agent:hitl_denied":
            return "denied by the user", event.get("reason"), event
    for event in reversed(events):  # a write whose answer was lost: what the read showed
        if event.get("type") == "agent:outcome_reconciled":
            verdict = event.get("readBack") or event.get("outcome")
            return f"answer lost; read back: {verdict}", event.get("reason"), event
    last = events[-1]
    if last.get("type") == "agent:tool_error":
        return "failed", last.get("reason"), last
    for event in events:
        if event.get("outcome") in ("expired", "cancelled", "unknown"):
            return str(event["outcome"]), event.get("reason"), event
    if any(e.get("type") == "agent:token_exchange_success" for e in events):
        return "done", None, None
    return str(last.get("outcome", "unknown")), last.get("reason"), last


def _decision_view(d: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("kind", "outcome", "reason", "error", "policy_id", "at", "jti", "approval_id",
            "rar_type", "tier", "target", "details")
    return {k: d[k] for k in keys if d.get(k) not in (None, "", {})}


def _join(call_id: str, events: list[dict[str, Any]], decisions: list[dict[str, Any]],
          names: Mapping[str, str]) -> dict[str, Any]:
    first = events[0]
    ids: dict[str, str] = {}
    for event in events:
        ids.update({k: v for k, v in (event.get("correlation") or {}).items() if v})
    obo_jti = ids.get("oboJti")
    session, rar_type = first.get("sessionId"), first.get("rarType")
    began, ended = _time(first.get("timestamp")), _time(events[-1].get("timestamp"))
    pushed = any(e.get("type") == "agent:hitl_required" for e in events)
    joined = []
    read_jti = ids.get("readBackJti")  # a lost answer's read-back: a token of its own
    for d in decisions:
        if d.get("jti") and d.get("jti") in (obo_jti, read_jti):
            joined.append(d)
            continue
        at = _time(d.get("at"))
        if d.get("jti") or at is None or began is None or ended is None:
            continue
        if d.get("sid") != session or d.get("kind") not in ("token_exchange", "ciba"):
            continue
        if d.get("kind") == "token_exchange" and d.get("rar_type") != rar_type:
            continue
        if d.get("kind") == "ciba" and not pushed:
            continue
        if began - timedelta(seconds=_WINDOW_S) <= at <= ended + timedelta(seconds=_WINDOW_S):
            joined.append(d)
    outcome, reason, deciding = _outcome(events)
    policy = (deciding or {}).get("policyId") or next(
        (d.get("policy_id") for d in joined
         if d.get("kind") == "token_exchange" and d.get("policy_id")), None)
    user = first.get("userEmail")
    set_jtis = [jti for e in events for jti in e.get("setJtis", ())]
    record: dict[str, Any] = {
        "callId": call_id, "time": first.get("timestamp"), "user": user,
        "userName": names.get(str(user).lower()) if user else None, "session": session,
        "tool": first.get("toolName"), "tier": first.get("tier"), "rarType": rar_type,
        "summary": next((e["rarSummary"] for e in events if e.get("rarSummary")), None),
        "outcome": outcome, "reason": reason, "policyId": policy,
        "oboJti": obo_jti, "readBackJti": read_jti, "approvalId": ids.get("approvalId"),
        "setJtis": set_jtis,
        "events": [{k: e[k] for k in ("timestamp", "type", "outcome", "reason", "durationMs",
                                      "eventId", "setJtis") if k in e} for e in events],
        "decisions": [_decision_view(d) for d in joined],
    }
    out = {k: v for k, v in record.items() if v is not None and v != []}
    out.update(oboJti=obo_jti, decisions=record["decisions"])  # present even when empty
    return out


def calls(directory: Path, where: CallFilter | None = None) -> list[dict[str, Any]]:
    """Every call in the trail at `directory` that `where` admits, oldest first."""
    if not (directory / EVENTS).exists() and not any(directory.glob(EVENTS + ".*")):
        raise AuditQueryError(f"there is no audit trail in {directory} yet: it is written "
                              "while a lab runs (`iia-lab up`)")
    where = where or CallFilter()
    by_call: dict[str, list[dict[str, Any]]] = {}
    for record in read_records(directory, EVENTS):
        if record.get("record") == "event" and record.get("callId"):
            by_call.setdefault(str(record["callId"]), []).append(record)
    if where.call and where.call not in by_call:
        raise AuditQueryError(f"no call {where.call!r} in the audit trail in {directory} "
                              f"({len(by_call)} calls recorded); `iia-lab audit` lists them")
    decisions = [d for d in read_records(directory, DECISIONS) if d.get("record") == "decision"]
    names = {str(d["user"]).lower(): str(d["userName"]) for d in decisions
             if d.get("user") and d.get("userName")}
    out = []
    for call_id, events in by_call.items():
        if where.call and call_id != where.call:
            continue
        record = _join(call_id, events, decisions, names)
        if where.admits(record):
            out.append(record)
    return out


def _who(record: Mapping[str, Any]) -> str:
    email, name = record.get("user"), record.get("userName")
    if email and name:
        return f"{name} <{email}>"
    return str(email or "(no user)")


def render(records: Iterable[Mapping[str, Any]]) -> str:
    """The records for a person: one block per call."""
    blocks = []
    for r in records:
        lines = [f"{r.get('time', '?')}  call {r['callId']}  {_who(r)}  session "
                 f"{r.get('session', '?')}",
                 f"  {r.get('tool', '?')} (tier {r.get('tier', '?')}, {r.get('rarType', '?')})"
                 + (f": {r['summary']}" if r.get("summary") else ""),
                 f"  outcome: {r['outcome']}" + (f": {r['reason']}" if r.get("reason") else "")
                 + (f" [policy {r['policyId']}]" if r.get("policyId") and
                    f"policy {r['policyId']}" not in str(r.get("reason")) else "")]
        for d in r["decisions"]:
            why = d.get("reason") or ""
            extra = ", ".join(x for x in (d.get("error"), d.get("policy_id") and
                                          f"policy {d['policy_id']}") if x)
            lines.append(f"  IdP {d['kind']}: {d['outcome']}" + (f" ({extra})" if extra else "")
                         + (f": {why}" if why else ""))
        if not r["decisions"]:
            lines.append("  IdP: no decision recorded for this call")
        lines.append(f"  OBO token: jti {r['oboJti']}" if r.get("oboJti") else
                     "  OBO token: none issued")
        if r.get("setJtis"):
            lines.append(f"  SETs: {', '.join(r['setJtis'])}")
        for e in r["events"]:
            lines.append(f"    {e.get('timestamp', '')}  {e.get('type')}  {e.get('outcome', '')}"
                         + (f"  {e['durationMs']} ms" if "durationMs" in e else ""))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
