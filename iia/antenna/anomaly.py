"""Anomaly rules (fixtures/antenna/anomaly.json): when a session crosses one, Antenna revokes it.

* `tier4_refusals`: that many tier-4 token-exchange refusals within `window_seconds`;
* `denied_pushes_in_a_row`: that many push approvals the user denied in a row. An approval
  (`agent:hitl_approved`) resets the streak. A push nobody answered (`agent:hitl_expired`) is
  not the user's denial: it neither counts nor resets the streak, so an unattended phone does
  not end a session, and an expiry between two denials does not hide them;
* `tool_calls_per_minute`: more token exchanges than `max` in the last 60 s.

A session is revoked once; the detector forgets nothing else (the lab runs for hours, not years).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from iia.events import SecurityEvent

__all__ = ["AnomalyDetector", "AnomalyRules"]


@dataclass(frozen=True)
class AnomalyRules:
    tier4_refusals: int = 2
    tier4_window: float = 600.0
    denied_pushes_in_a_row: int = 3
    calls_per_minute: int = 120

    @classmethod
    def load(cls, path: Path) -> AnomalyRules:
        doc = json.loads(path.read_text())
        return cls(tier4_refusals=int(doc["tier4_refusals"]["count"]),
                   tier4_window=float(doc["tier4_refusals"]["window_seconds"]),
                   denied_pushes_in_a_row=int(doc["denied_pushes_in_a_row"]["count"]),
                   calls_per_minute=int(doc["tool_calls_per_minute"]["max"]))


Revoke = Callable[[str, str | None, str], None]  # (session id, user email, reason)


class AnomalyDetector:
    def __init__(self, rules: AnomalyRules, revoke: Revoke,
                 clock: Callable[[], float] = time.time) -> None:
        self.rules = rules
        self._revoke = revoke
        self.clock = clock
        self._lock = threading.Lock()
        self._tier4: dict[str, deque[float]] = defaultdict(deque)
        self._denied_in_a_row: dict[str, int] = defaultdict(int)
        self._calls: dict[str, deque[float]] = defaultdict(deque)
        self.revoked: set[str] = set()

    def observe(self, event: SecurityEvent) -> None:
        sid = event.session_id
        if not sid:
            return
        reason = None
        now = self.clock()
        with self._lock:
            if sid in self.revoked:
                return
            if event.type in ("agent:token_exchange_success", "agent:token_exchange_denied"):
                calls = self._calls[sid]
                calls.append(now)
                while calls and calls[0] < now - 60:
                    calls.popleft()
                if len(calls) > self.rules.calls_per_minute:
                    reason = (f"more than {self.rules.calls_per_minute} tool calls in a minute "
                              f"({len(calls)})")
            if event.type == "agent:token_exchange_denied" and event.tier == 4:
                refusals = self._tier4[sid]
                refusals.append(now)
                while refusals and refusals[0] < now - self.rules.tier4_window:
                    refusals.popleft()
                if len(refusals) >= self.rules.tier4_refusals:
                    reason = (f"{len(refusals)} blocked (tier 4) actions attempted within "
                              f"{self.rules.tier4_window / 60:.0f} minutes")
            if event.type == "agent:hitl_denied":
                self._denied_in_a_row[sid] += 1
                if self._denied_in_a_row[sid] >= self.rules.denied_pushes_in_a_row:
                    reason = f"{self._denied_in_a_row[sid]} push approvals denied in a row"
            elif event.type == "agent:hitl_approved":
                self._denied_in_a_row[sid] = 0
            # "agent:hitl_expired" is deliberately neither: see the module docstring
            if reason is not None:
                self.revoked.add(sid)
        if reason is not None:
            self._revoke(sid, event.user_email, "anomaly: " + reason)
