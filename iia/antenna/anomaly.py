"""Anomaly rules (fixtures/antenna/anomaly.json): when a session crosses one, Antenna revokes it.

* `tier4_refusals`: that many tier-4 token-exchange refusals within `window_seconds`;
* `denied_pushes_in_a_row`: that many push approvals the user denied in a row. An approval
  (`agent:hitl_approved`) resets the streak. A push nobody answered (`agent:hitl_expired`) is
  not the user's denial: it neither counts nor resets the streak, so an unattended phone does
  not end a session, and an expiry between two denials does not hide them;
* `tool_calls_per_minute`: more token exchanges than `max` in the last 60 s.

A session is revoked once. Bounded (issue #20): a session's state goes when it ends (a
session-revoked event from anyone, `ENDED`) and when it has been idle `idle_seconds` (default
3600, never less than the tier-4 window, so an idle pause does not hide refusals); a revoked
session is remembered as revoked `idle_seconds` after its last event, and the sweep runs every
`SWEEP_EVERY` events.
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


IDLE_SECONDS = 3600.0
SWEEP_EVERY = 256
ENDED = ("caep:session_revoked", "ssf:session_revoked", "agent:session_killed")

Revoke = Callable[[str, str | None, str], None]  # (session id, user email, reason)


class AnomalyDetector:
    def __init__(self, rules: AnomalyRules, revoke: Revoke,
                 clock: Callable[[], float] = time.time, *,
                 idle_seconds: float = IDLE_SECONDS) -> None:
        self.rules = rules
        self.idle_seconds = max(idle_seconds, rules.tier4_window, 60.0)
        self._revoke = revoke
        self.clock = clock
        self._lock = threading.Lock()
        self._tier4: dict[str, deque[float]] = defaultdict(deque)
        self._denied_in_a_row: dict[str, int] = defaultdict(int)
        self._calls: dict[str, deque[float]] = defaultdict(deque)
        self.revoked: dict[str, float] = {}  # sid -> when last seen (kept idle_seconds)
        self._last_seen: dict[str, float] = {}
        self._observed = 0

    def sessions(self) -> int:
        """How many sessions the detector holds state for (revoked ones included)."""
        with self._lock:
            return len(self._last_seen.keys() | self.revoked.keys())

    def _forget(self, sid: str) -> None:
        self._tier4.pop(sid, None)
        self._denied_in_a_row.pop(sid, None)
        self._calls.pop(sid, None)
        self._last_seen.pop(sid, None)

    def _sweep(self, now: float) -> None:
        horizon = now - self.idle_seconds
        for sid in [s for s, at in self._last_seen.items() if at < horizon]:
            self._forget(sid)
        for sid in [s for s, at in self.revoked.items() if at < horizon]:
            del self.revoked[sid]

    def observe(self, event: SecurityEvent) -> None:
        sid = event.session_id
        if not sid:
            return
        reason = None
        now = self.clock()
        with self._lock:
            self._observed += 1
            if self._observed % SWEEP_EVERY == 0:
                self._sweep(now)
            if sid in self.revoked:
                self.revoked[sid] = now
                return
            if event.type in ENDED:  # the session is over: nothing of it is needed
                self._forget(sid)
                return
            self._last_seen[sid] = now
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
                self._forget(sid)
                self.revoked[sid] = now
        if reason is not None:
            self._revoke(sid, event.user_email, "anomaly: " + reason)
