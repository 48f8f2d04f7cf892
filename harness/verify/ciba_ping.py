"""OpenID CIBA Core 1.0 §10.2, the ping callback, as the OP sends it.

A client registered with `backchannel_token_delivery_mode` "ping" sends a fresh
`client_notification_token` with each backchannel authentication request (§7.1). When the user
answers that push (approve or deny) or it expires unanswered, the OP POSTs

    POST <backchannel_client_notification_endpoint>
    Authorization: Bearer <client_notification_token>
    Content-Type: application/json

    {"auth_req_id": "..."}

and the client then makes one token request (§10.1) instead of polling. The OP does not follow
redirects (§10.2); 200 and 204 are success, anything else a failed delivery.

One worker thread sends the callbacks, so a phone's answer never waits on the client's network.
Each push is called back at most once, and its token is forgotten once it is sent; a delivery
that fails is recorded (`deliveries`, outcome `failed`) and not retried: the client's poll at the
`interval` of §7.3 still finds the answer. A callback is not a decision of the tenant, so it is
kept in its own log, not the audit trail; the token is in neither.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import httpx

from harness.verify.approvals import Approvals, PushRequest

__all__ = ["Delivery", "PingCallbacks"]

EXPIRY_CHECK = 1.0  # seconds: the longest the worker sleeps while a push it watches is pending


@dataclass(frozen=True)
class Delivery:
    """One callback sent: to whom, about which push, and how it went."""

    push_id: str
    client_id: str
    user: str  # email
    status: str  # what the push had become: approved | denied | expired
    endpoint: str
    outcome: str  # delivered | failed
    reason: str
    http_status: int | None = None
    at: float = field(default_factory=time.time)


@dataclass
class _Callback:
    push: PushRequest
    endpoint: str
    token: str = field(repr=False)


class PingCallbacks:
    """The callbacks owed to ping-mode clients: registered at bc-authorize, sent when the push
    is answered or expires."""

    def __init__(self, approvals: Approvals, *, timeout: float = 5.0) -> None:
        self.approvals = approvals
        self.timeout = timeout
        self._log: list[Delivery] = []
        self._cond = threading.Condition()
        self._watched: dict[str, _Callback] = {}  # push id -> its callback, while pending
        self._due: deque[_Callback] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._remove = approvals.on_change(self._changed)

    def register(self, push: PushRequest, endpoint: str, token: str) -> None:
        """Owe `push`'s client a callback at `endpoint` with `token` (bc-authorize, §7.1)."""
        with self._cond:
            self._watched[push.id] = _Callback(push, endpoint, token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="verify-ciba-ping",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()
        # answered before it was registered (a fast phone): send it now
        current = self.approvals.get(push.id)
        if current is not None and current.status != "pending":
            self._changed(current)

    def deliveries(self, push_id: str | None = None) -> list[Delivery]:
        """The callbacks sent so far (for one push, with `push_id`)."""
        with self._cond:
            return [d for d in self._log if push_id is None or d.push_id == push_id]

    def owed(self, push_id: str) -> bool:
        """Whether a callback for this push is still to be sent."""
        with self._cond:
            return push_id in self._watched or any(c.push.id == push_id for c in self._due)

    def _changed(self, push: PushRequest) -> None:
        if push.status == "pending":
            return
        with self._cond:
            callback = self._watched.pop(push.id, None)
            # a push its client withdrew is owed no callback: the client ended it itself
            if callback is not None and push.status != "withdrawn":
                self._due.append(callback)
                self._cond.notify()

    def _expired(self) -> None:
        """Move the watched pushes that have expired to the due callbacks (the caller holds
        the condition). `Approvals.get` is what marks an unanswered push expired."""
        for push_id in list(self._watched):
            push = self.approvals.get(push_id)
            if push is None or push.status != "pending":
                callback = self._watched.pop(push_id)
                if push is None or push.status != "withdrawn":
                    self._due.append(callback)

    def _next_wait(self) -> float | None:
        if not self._watched:
            return None
        now = self.approvals.clock()
        soonest = min(c.push.expires_at for c in self._watched.values()) - now
        return max(0.01, min(EXPIRY_CHECK, soonest))

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, follow_redirects=False) as http:
            while True:
                with self._cond:
                    while not self._due and not self._closed:
                        self._cond.wait(self._next_wait())
                        self._expired()
                    if self._closed:
                        return
                    callback = self._due.popleft()
                self._send(http, callback)

    def _send(self, http: httpx.Client, callback: _Callback) -> None:
        push = callback.push
        try:
            response = http.post(callback.endpoint, json={"auth_req_id": push.auth_req_id},
                                 headers={"Authorization": f"Bearer {callback.token}"})
        except httpx.HTTPError as exc:
            self._record(callback, "failed", f"the client notification endpoint is "
                         f"unreachable ({exc.__class__.__name__}); the client's poll will find "
                         "the answer")
            return
        if response.status_code in (200, 204):
            self._record(callback, "delivered", f"the client was told the push is "
                         f"{push.status}", response.status_code)
        else:
            self._record(callback, "failed", f"the client notification endpoint answered HTTP "
                         f"{response.status_code}; the client's poll will find the answer",
                         response.status_code)

    def _record(self, callback: _Callback, outcome: str, reason: str,
                http_status: int | None = None) -> None:
        push = callback.push
        with self._cond:
            self._log.append(Delivery(push_id=push.id, client_id=push.client_id,
                                      user=push.email, status=push.status,
                                      endpoint=callback.endpoint, outcome=outcome,
                                      reason=reason, http_status=http_status))
            if len(self._log) > 1000:  # a log for tests and notebooks, not a history
                del self._log[0]

    def close(self) -> None:
        self._remove()
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
