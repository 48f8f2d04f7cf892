"""A scripted phone: answers push approvals automatically, as a person would, after a short
delay. The tests use it in-process; a person uses the Verify app page (`/lab/phone`) or
`iia-lab approve`, the notebooks' phone card and `make demo` the same signed path over HTTP.

Each answer is what the user's phone does: the request options of that push and answer (their
challenge binds both), an assertion by the user's passkey in the lab's software authenticator
(harness/authenticator.py), and the tenant's Verify app verifying it before it records the
answer. There is no way to answer without a passkey.

`plan` decides each answer: a bool for all, or a callable taking the push (user, tier,
binding message, authorization_details) and returning True (approve), False (deny) or None
(leave it to a person).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.authenticator import AuthenticatorError, SoftwareAuthenticator, for_origin
from harness.verify.approvals import PushRequest
from harness.verify.passkeys import PasskeyError
from harness.verify.verify_app import Refused

if TYPE_CHECKING:
    from harness.verify.tenant import VerifyTenant

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
    verify: VerifyTenant
    plan: Plan = True
    delay: float = 0.2
    authenticator: SoftwareAuthenticator | None = None
    answered: list[Answered] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why an answer was not recorded
    _remove: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ScriptedPhone:
        if self.authenticator is None:
            self.authenticator = for_origin(self.verify.passkeys.origin)
        if self._remove is None:
            self._remove = self.verify.approvals.on_change(self._on_push)
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
        app = self.verify.verify_app
        assert self.authenticator is not None
        try:
            options = app.options(push.id, approve)
            assertion = self.authenticator.get(options["publicKey"], app.public_url)
            app.answer(push.id, approve, assertion)
        except (Refused, PasskeyError, AuthenticatorError) as exc:
            with self._lock:  # answered by someone else, expired, or refused
                self.refused.append(f"{push.id}: {exc}")
            return
        with self._lock:
            self.answered.append(Answered(push.id, push.email, push.tier, approve,
                                          str(push.authorization_details[0].get("summary"))))

    def __enter__(self) -> ScriptedPhone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
