"""A scripted phone: answers push approvals automatically, as a person would, after a short
delay. The demo, the tests and CI use it; a person uses the lab phone page or `iia-lab approve`.

`plan` decides each answer: a bool for all, or a callable taking the push (user, tier,
binding message, authorization_details) and returning True (approve), False (deny) or None
(leave it to a person).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.verify.approvals import PushRequest
from harness.verify.ciba import Ciba

__all__ = ["ScriptedPhone"]

Plan = bool | Callable[[PushRequest], bool | None]


@dataclass
class Answered:
    id: str
    user: str
    tier: int
    approved: bool
    summary: str


@dataclass
class ScriptedPhone:
    ciba: Ciba
    plan: Plan = True
    delay: float = 0.2
    answered: list[Answered] = field(default_factory=list)
    _remove: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ScriptedPhone:
        if self._remove is None:
            self._remove = self.ciba.approvals.on_change(self._on_push)
        return self

    def stop(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None

    def _on_push(self, push: PushRequest) -> None:
        if push.status != "pending":
            return
        decision = self.plan(push) if callable(self.plan) else self.plan
        if decision is None:
            return
        timer = threading.Timer(self.delay, self._answer, args=(push, bool(decision)))
        timer.daemon = True
        timer.start()

    def _answer(self, push: PushRequest, approve: bool) -> None:
        try:
            self.ciba.answer(push.id, approve)
        except (KeyError, ValueError):
            return  # answered by someone else, or expired
        with self._lock:
            self.answered.append(Answered(push.id, push.email, push.tier, approve,
                                          str(push.authorization_details[0].get("summary"))))

    def __enter__(self) -> ScriptedPhone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
