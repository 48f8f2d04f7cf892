"""The tenant's decisions, also appended to the durable audit trail (`iia.audit_trail`).

`JournaledAuditTrail` is the tenant's `AuditTrail` that, besides keeping its queryable recent
decisions, appends each one to `decisions.jsonl` in the lab's audit directory, with the
person's display name beside their e-mail (an auditor reads people, not ids) and the time in
ISO form. The IdP owns these records, so the IdP's process writes them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from harness.verify.audit import AuditTrail, Decision
from iia.audit_trail import AuditJournal

__all__ = ["JournaledAuditTrail", "decision_record"]


def decision_record(decision: Decision, display_name: Callable[[str], str | None]
                    ) -> dict[str, Any]:
    """The journal's line for one decision: its fields, `time`, and `userName` when known."""
    record: dict[str, Any] = {"record": "decision", **decision.to_dict(),
                              "time": datetime.fromtimestamp(decision.at, UTC).isoformat(
                                  timespec="milliseconds").replace("+00:00", "Z")}
    if decision.user:
        name = display_name(decision.user)
        if name:
            record["userName"] = name
    return record


class JournaledAuditTrail(AuditTrail):
    def __init__(self, journal: AuditJournal, display_name: Callable[[str], str | None],
                 *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal = journal
        self._display_name = display_name

    def record(self, decision: Decision) -> Decision:
        recorded = super().record(decision)
        self.journal.append(decision_record(decision, self._display_name))
        return recorded
