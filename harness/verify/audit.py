"""The tenant's audit trail: every decision it makes, issued or refused, with the reason and the
policy that decided. Notebooks and tests read it; `/lab/decisions` serves it over HTTP."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AuditTrail", "Decision"]


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
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Decision] = []

    def record(self, decision: Decision) -> Decision:
        with self._lock:
            self._items.append(decision)
        return decision

    def decisions(self, kind: str | None = None) -> list[Decision]:
        with self._lock:
            return [d for d in self._items if kind is None or d.kind == kind]

    def last(self, kind: str | None = None) -> Decision | None:
        items = self.decisions(kind)
        return items[-1] if items else None

    def since(self, marker: int, kind: str | None = None) -> list[Decision]:
        """Decisions recorded after `marker` (a value of `len(trail)`)."""
        with self._lock:
            items = self._items[marker:]
        return [d for d in items if kind is None or d.kind == kind]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
