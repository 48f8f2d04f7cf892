"""The tenant's audit trail: every decision it makes, issued or refused, with the reason and the
policy that decided. Notebooks and tests read it; `/lab/decisions` serves it over HTTP.

Bounded (issue #20): the newest `capacity` decisions are kept in memory (default 5000,
`IIA_VERIFY_KEEP_DECISIONS`); every decision also goes to the durable journal on disk
(audit_journal), which is the history. `len(trail)` counts every decision ever recorded, so
`since(len(trail))` still reads what came after a marker."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.bounded import BoundedLog, capacity_from_env

__all__ = ["KEEP_DECISIONS", "AuditTrail", "Decision"]

KEEP_DECISIONS = 5000


@dataclass(frozen=True)
class Decision:
    kind: str  # token_exchange | ciba | admin_api | login | ssf | token | revocation
    outcome: str  # issued | denied | approved | refused | allowed | accepted ...
    reason: str = ""
    error: str | None = None
    policy_id: str | None = None
    user: str | None = None  # email, never the sub
    sid: str | None = None
    client_id: str | None = None
    actor: str | None = None
    rar_type: str | None = None
    tier: int | None = None
    target: str | None = None
    jti: str | None = None
    approval_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, "")}


class AuditTrail:
    def __init__(self, capacity: int | None = None) -> None:
        self._items: BoundedLog[Decision] = BoundedLog(
            capacity or capacity_from_env("IIA_VERIFY_KEEP_DECISIONS", KEEP_DECISIONS))

    @property
    def capacity(self) -> int:
        return self._items.capacity

    def kept(self) -> int:
        """Decisions held in memory now (at most `capacity`)."""
        return self._items.kept()

    def record(self, decision: Decision) -> Decision:
        self._items.append(decision)
        return decision

    def decisions(self, kind: str | None = None) -> list[Decision]:
        return [d for d in self._items.items() if kind is None or d.kind == kind]

    def last(self, kind: str | None = None) -> Decision | None:
        items = self.decisions(kind)
        return items[-1] if items else None

    def since(self, marker: int, kind: str | None = None) -> list[Decision]:
        """Decisions recorded after `marker` (a value of `len(trail)`)."""
        return [d for d in self._items[marker:] if kind is None or d.kind == kind]

    def __len__(self) -> int:
        return len(self._items)
