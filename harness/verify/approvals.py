"""Push approvals: the pending CIBA requests shown on the user's "phone", and what an approval
leaves behind for the token-exchange policy.

* an approval takes effect when the requesting client **redeems** it (the CIBA token request
  that receives the tokens, `take_effect`), not when the user taps Approve: until then the
  client has not learned of it, and an approval the client never received is authority
  nobody holds. The IdP's record and the client's own (the MCP server's consent cache) then
  begin at the same moment, and an approved push whose client gave up, was cancelled or
  expired leaves nothing behind (docs/architecture.md §6);
* redeeming an approved `agent_write_consent` for a session records that session's **write
  consent** (tier 2); the policy accepts it for 30 minutes;
* redeeming an approved tier-3 operation records a **call approval** bound to the user, to
  the session the push named (the `sid` of the user's access token sent as CIBA
  `login_hint_token`), and to that exact authorization_details object (type, target,
  arguments digest...); one token exchange in that session consumes it, once, within
  `call_approval_ttl` seconds. A push that named no session (`login_hint` only) leaves an
  approval no session can redeem;
* withdrawing the user's delegation (`void_user`) drops their session consents, spends their
  unused call approvals and voids their approved pushes not yet redeemed: what was approved
  under a delegation does not outlive it;
* the requesting client withdrawing a push (`withdraw`: its call was cancelled) takes a pending
  push off the phone for good (status `withdrawn`: no answer is taken, no token issued), voids
  an approved one not yet redeemed (no token is issued for it), and spends the call approval
  a redeemed one left unused: it was for a call that will not run.

Each request has two identifiers: `id`, which the phone shows and answers, and `auth_req_id`,
which only the requesting client polls with (OpenID CIBA §7.3).

The user answers in the Verify app (harness/verify/verify_app.py) with a passkey assertion whose
challenge binds the push (harness/verify/passkeys.py); `answer` here is the recording step that
runs once the assertion verified, keeping which passkey signed it.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from harness.listeners import Listeners

__all__ = ["Approvals", "CallApproval", "PushRequest"]


@dataclass
class PushRequest:
    id: str
    auth_req_id: str = field(repr=False)
    client_id: str
    user_id: str
    email: str
    tier: int
    binding_message: str
    authorization_details: list[dict[str, Any]]
    created_at: float
    expires_at: float
    interval: float
    session: str | None = None
    status: str = "pending"  # pending | approved | denied | expired | withdrawn
    answered_at: float | None = None
    last_poll: float | None = None
    redeemed: bool = False
    answered_with: str | None = None  # the digest of the passkey's credential id
    user_verified: bool | None = None  # the assertion's UV flag
    withdrawn_at: float | None = None  # when the requesting client withdrew it
    voided: bool = False  # approved, then withdrawn or its delegation revoked before redeemed

    def public(self, now: float) -> dict[str, Any]:
        """What the phone, `iia-lab approvals --json` and the approval API show."""
        return {"id": self.id, "user": self.email, "tier": self.tier,
                "binding_message": self.binding_message,
                "authorization_details": self.authorization_details, "status": self.status,
                "client_id": self.client_id, "expires_in": max(0, int(self.expires_at - now))}


@dataclass
class CallApproval:
    id: str
    user_id: str
    session: str | None  # the sid the push named; None: no session can redeem it
    details: dict[str, Any]
    approved_at: float
    used: bool = False


KEEP_ENDED = 600.0  # seconds an ended push or an unredeemable approval is still shown
KEEP_ITEMS = 5000  # pushes, tier-3 approvals, session consents: at most this many each


class Approvals:
    def __init__(self, *, request_ttl: float = 120.0, interval: float = 1.0,
                 call_approval_ttl: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.request_ttl = request_ttl
        self.interval = interval
        self.call_approval_ttl = call_approval_ttl
        self.clock = clock  # injectable: tests move it to expire consents
        self._lock = threading.Lock()
        self._requests: dict[str, PushRequest] = {}
        self._by_auth_req: dict[str, str] = {}
        self._consents: dict[tuple[str, str], float] = {}
        self._calls: list[CallApproval] = []
        self._listeners: Listeners[[PushRequest]] = Listeners()

    # -- pushes -----------------------------------------------------------------------------

    def create(self, *, client_id: str, user_id: str, email: str, tier: int,
               binding_message: str, authorization_details: list[dict[str, Any]],
               session: str | None, expiry: float | None = None) -> PushRequest:
        now = self.clock()
        push = PushRequest(
            id="apv_" + secrets.token_urlsafe(8), auth_req_id=secrets.token_urlsafe(24),
            client_id=client_id, user_id=user_id, email=email, tier=tier,
            binding_message=binding_message, authorization_details=authorization_details,
            created_at=now, expires_at=now + (expiry or self.request_ttl),
            interval=self.interval, session=session)
        with self._lock:
            self._prune(now)
            self._requests[push.id] = push
            self._by_auth_req[push.auth_req_id] = push.id
        self._notify(push)
        return push

    def _prune(self, now: float) -> None:
        """Bounded (issue #20), under the lock: a push that ended more than `KEEP_ENDED`
        seconds ago goes (a pending one never), a tier-3 approval goes `KEEP_ENDED` seconds
        after it could no longer be redeemed, and at most `KEEP_ITEMS` of each are kept,
        the newest (session consents too: one per session)."""
        horizon = now - KEEP_ENDED
        for push in list(self._requests.values()):
            self._expire(push, now)
        ended = [p for p in self._requests.values() if p.status != "pending"]
        gone = {p.id for p in ended if p.expires_at < horizon}
        extra = len(self._requests) - len(gone) - KEEP_ITEMS + 1  # room for the new one
        gone.update([p.id for p in ended if p.id not in gone][:max(0, extra)])
        for approval_id in gone:
            push = self._requests.pop(approval_id)
            self._by_auth_req.pop(push.auth_req_id, None)
        self._calls = [a for a in self._calls
                       if a.approved_at + self.call_approval_ttl >= horizon][-KEEP_ITEMS:]
        while len(self._consents) >= KEEP_ITEMS:
            del self._consents[next(iter(self._consents))]

    def _expire(self, push: PushRequest, now: float) -> None:
        if push.status == "pending" and push.expires_at <= now:
            push.status = "expired"

    def get(self, approval_id: str) -> PushRequest | None:
        with self._lock:
            push = self._requests.get(approval_id)
            if push is not None:
                self._expire(push, self.clock())
            return push

    def by_auth_req_id(self, auth_req_id: str) -> PushRequest | None:
        with self._lock:
            approval_id = self._by_auth_req.get(auth_req_id)
            push = self._requests.get(approval_id) if approval_id else None
            if push is not None:
                self._expire(push, self.clock())
            return push

    def pending(self, email: str | None = None) -> list[PushRequest]:
        now = self.clock()
        with self._lock:
            for push in self._requests.values():
                self._expire(push, now)
            return [p for p in self._requests.values() if p.status == "pending"
                    and (email is None or p.email == email)]

    def all(self) -> list[PushRequest]:
        with self._lock:
            return list(self._requests.values())

    def answer(self, approval_id: str, approve: bool, *, answered_with: str | None = None,
               user_verified: bool | None = None) -> PushRequest:
        """The user taps Approve or Deny. Raises KeyError (unknown) or ValueError (answered).
        `answered_with` and `user_verified` are what the answer was signed with (the passkey
        assertion harness.verify.verify_app verified first): kept in the same step, so the
        ping callback and the token response that follow it attest them."""
        now = self.clock()
        with self._lock:
            push = self._requests[approval_id]
            self._expire(push, now)
            if push.status != "pending":
                raise ValueError(f"request {approval_id} is already {push.status}")
            push.status = "approved" if approve else "denied"
            push.answered_at = now
            push.answered_with, push.user_verified = answered_with, user_verified
        self._notify(push)
        return push

    def withdraw(self, push: PushRequest) -> tuple[str, bool]:
        """The requesting client no longer wants an answer (its call was cancelled). A
        pending push becomes `withdrawn`; an approved one keeps its status, but the call
        approval it recorded, if still unused, is spent. Returns (the push's status now,
        whether a call approval was spent)."""
        now = self.clock()
        spent = withdrew = False
        with self._lock:
            self._expire(push, now)
            if push.status == "pending":
                push.status, push.withdrawn_at, withdrew = "withdrawn", now, True
            elif push.status == "approved":
                # not yet taken effect: it never will (a redemption under way is refused too)
                spent = not push.redeemed and not push.voided
                push.voided = True
                for approval in self._calls:
                    if approval.id == push.id and not approval.used:
                        approval.used = spent = True
            status = push.status
        if withdrew:
            self._notify(push)
        return status, spent

    def withdrawn(self, user_id: str, since: float) -> list[PushRequest]:
        """The user's pushes withdrawn at or after `since` (the phone shows them so)."""
        with self._lock:
            return [p for p in self._requests.values() if p.user_id == user_id
                    and p.withdrawn_at is not None and p.withdrawn_at >= since]

    def _record(self, push: PushRequest, now: float) -> None:
        details = push.authorization_details[0]
        if details["type"] == "agent_write_consent" and push.session:
            self._consents.pop((push.user_id, push.session), None)  # the newest last
            self._consents[(push.user_id, push.session)] = now
        else:
            self._calls.append(CallApproval(id=push.id, user_id=push.user_id,
                                            session=push.session, details=dict(details),
                                            approved_at=now))

    def poll(self, push: PushRequest) -> float:
        """Register a poll; returns the seconds since the previous one (inf for the first)."""
        now = self.clock()
        with self._lock:
            since = float("inf") if push.last_poll is None else now - push.last_poll
            push.last_poll = now
            return since

    def take_effect(self, push: PushRequest) -> bool:
        """The client is receiving the tokens of this approved push: its approval takes
        effect now (the session's write consent, or the call approval). False, recording
        nothing, when the push is not approved or was voided."""
        now = self.clock()
        with self._lock:
            if push.status != "approved" or push.voided:
                return False
            self._record(push, now)
            return True

    def redeem(self, push: PushRequest) -> bool:
        """Mark the auth_req_id as exchanged for tokens; False if it already was."""
        with self._lock:
            if push.redeemed:
                return False
            push.redeemed = True
            return True

    # -- what the exchange policy reads -----------------------------------------------------

    def session_consent_age(self, user_id: str, sid: str) -> float | None:
        with self._lock:
            at = self._consents.get((user_id, sid))
        return None if at is None else self.clock() - at

    def _redeemable(self, approval: CallApproval, user_id: str, details: Mapping[str, Any],
                    now: float) -> bool:
        return (not approval.used and approval.user_id == user_id
                and approval.details == dict(details)
                and now - approval.approved_at <= self.call_approval_ttl)

    def find_call_approval(self, user_id: str, sid: str,
                           details: Mapping[str, Any]) -> CallApproval | None:
        """An unused, unexpired approval of exactly `details` by `user_id` in session `sid`."""
        now = self.clock()
        with self._lock:
            for approval in self._calls:
                if (approval.session is not None and approval.session == sid
                        and self._redeemable(approval, user_id, details, now)):
                    return approval
        return None

    def why_not_this_session(self, user_id: str, sid: str,
                             details: Mapping[str, Any]) -> str | None:
        """When this user approved exactly `details` but not in session `sid`: why that approval
        does not serve here (for the refusal's description); None when there is none."""
        now = self.clock()
        with self._lock:
            others = [a for a in self._calls if a.session != sid
                      and self._redeemable(a, user_id, details, now)]
        if not others:
            return None
        if all(a.session is None for a in others):
            return ("the user's approval of this call names no session (the push carried no "
                    "login_hint_token), so no session can redeem it")
        return "the user approved this call in another of their sessions, not in this one"

    def call_approvals(self, user_id: str | None = None) -> list[CallApproval]:
        """Copies of the recorded tier-3 approvals (every user's when `user_id` is None)."""
        with self._lock:
            return [replace(a) for a in self._calls if user_id is None or a.user_id == user_id]

    def void_user(self, user_id: str) -> tuple[int, int]:
        """Drop the user's session consents and spend their unused call approvals (their
        delegation was withdrawn); returns how many of each."""
        with self._lock:
            consents = [key for key in self._consents if key[0] == user_id]
            for key in consents:
                del self._consents[key]
            calls = [a for a in self._calls if a.user_id == user_id and not a.used]
            for approval in calls:
                approval.used = True
            for push in self._requests.values():  # approved, not yet redeemed: never will be
                if push.user_id == user_id and push.status == "approved" and not push.redeemed:
                    push.voided = True
        return len(consents), len(calls)

    def consume(self, approval: CallApproval) -> bool:
        with self._lock:
            if approval.used:
                return False
            approval.used = True
            return True

    def on_change(self, listener: Callable[[PushRequest], None]) -> Callable[[], None]:
        """Call `listener` on every new or answered push; returns the unsubscribe."""
        return self._listeners.add(listener)

    def _notify(self, push: PushRequest) -> None:
        self._listeners.notify(push)
