"""Human in the loop: asking the user to approve, and remembering a session's consent.

`ApprovalChannel` is the protocol (docs/architecture.md §7, "Seams"); `CibaApprovalChannel`
implements it with OpenID CIBA poll mode at the identity provider, so the IdP itself records what
the human approved and checks it again at token exchange. `ConsentCache` remembers tier-2 consent
per session for 30 minutes (its clock is injectable).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from iia.errors import IIAError
from iia.identity import WorkloadIdentity
from iia.oauth.client import AuthorizationServerClient
from iia.oauth.errors import OAuthError
from iia.protocol import CIBA_GRANT
from iia.rar import RarDetails, wire

__all__ = ["Approval", "ApprovalChannel", "ApprovalDeniedError", "ApprovalError",
           "ApprovalRefusedError", "ApprovalTimeoutError", "CibaApprovalChannel", "CibaOutcome",
           "ConsentCache"]


class CibaOutcome(StrEnum):
    """What the token endpoint answers a CIBA poll that issues no token (OpenID CIBA Core
    §11), and what bc-authorize answers when it will not push (§13). Compared as values:
    `CibaOutcome.of(exc)` is None for any other error."""

    AUTHORIZATION_PENDING = "authorization_pending"  # the user has not answered yet
    SLOW_DOWN = "slow_down"  # poll less often: the interval grows by 5 s
    ACCESS_DENIED = "access_denied"  # the user denied (or, at bc-authorize, no push was sent)
    EXPIRED_TOKEN = "expired_token"  # noqa: S105 - the auth_req_id expired unanswered

    @classmethod
    def of(cls, exc: OAuthError) -> CibaOutcome | None:
        try:
            return cls(exc.code)
        except ValueError:
            return None


class ApprovalError(IIAError, status=403):
    """The human in the loop did not approve: the call does not run."""


class ApprovalDeniedError(ApprovalError, code="approval_denied"):
    """The user denied the request on their phone."""


class ApprovalTimeoutError(ApprovalError, code="approval_timeout"):
    """Nobody answered the push in time."""


class ApprovalRefusedError(ApprovalError, code="approval_refused"):
    """The identity provider refused to send the push at all (CIBA §13 `access_denied` at
    bc-authorize, e.g. the user already has too many pushes waiting): nobody was asked."""


@dataclass(frozen=True)
class Approval:
    approval_id: str  # the IdP's handle for the request (auth_req_id), for correlation only
    approved_at: float
    waited_ms: int


class ApprovalChannel(Protocol):
    def request(self, *, user: str, details: RarDetails, binding_message: str,
                on_pending: Callable[[str, float], None] | None = None,
                user_token: str | None = None) -> Approval:
        """Ask `user` to approve `details`; return once approved, raise when denied or when
        nobody answers in time. `user_token` is the access token of the user's session the
        call runs in: the identity provider binds the approval to that session."""
        ...


class CibaApprovalChannel:
    def __init__(self, server: AuthorizationServerClient, identity: WorkloadIdentity, *,
                 timeout: float = 120.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.identity = identity
        self.timeout = timeout
        self._sleep = sleep
        self._clock = clock

    def request(self, *, user: str, details: RarDetails, binding_message: str,
                on_pending: Callable[[str, float], None] | None = None,
                user_token: str | None = None) -> Approval:
        started = self._clock()
        # CIBA §7.1 allows exactly one hint. The user's access token as login_hint_token tells
        # the IdP which session asks, so it binds the approval to that session; an email
        # (login_hint) names only the user, and a tier-3 approval without a session serves none.
        hint = ({"login_hint_token": user_token} if user_token else {"login_hint": user})
        form = {"scope": "openid", **hint, "binding_message": binding_message,
                "authorization_details": wire(details),
                "requested_expiry": str(int(self.timeout))}
        try:
            started_body = self.identity.with_credential(
                lambda credential: self.server.backchannel_authorize(form, credential))
        except OAuthError as exc:
            if CibaOutcome.of(exc) is not CibaOutcome.ACCESS_DENIED:
                raise
            raise ApprovalRefusedError(
                f"the identity provider refused to push to {user}'s phone ({exc.code}): "
                f"{exc.description}", dependency="idp", upstream_code=exc.code) from exc
        auth_req_id = str(started_body["auth_req_id"])
        interval = float(started_body.get("interval", 5))
        deadline = started + min(self.timeout, float(started_body.get("expires_in",
                                                                      self.timeout)))
        if on_pending is not None:
            on_pending(auth_req_id, deadline - started)
        while True:
            self._sleep(interval)
            try:
                self.identity.with_credential(lambda credential: self.server.token(
                    {"grant_type": CIBA_GRANT, "auth_req_id": auth_req_id}, credential))
            except OAuthError as exc:
                outcome = CibaOutcome.of(exc)
                if outcome is CibaOutcome.AUTHORIZATION_PENDING:
                    if self._clock() >= deadline:
                        raise ApprovalTimeoutError(
                            f"{user} did not answer the push within {self.timeout:.0f} s") \
                            from exc
                    continue
                if outcome is CibaOutcome.SLOW_DOWN:
                    interval += 5  # CIBA §11
                    continue
                if outcome is CibaOutcome.ACCESS_DENIED:
                    raise ApprovalDeniedError(f"{user} denied the request on their phone") \
                        from exc
                if outcome is CibaOutcome.EXPIRED_TOKEN:
                    raise ApprovalTimeoutError(f"{user} did not answer the push in time") \
                        from exc
                raise
            now = self._clock()
            return Approval(approval_id=auth_req_id, approved_at=time.time(),
                            waited_ms=round((now - started) * 1000))


class ConsentCache:
    """Tier-2 consent per session: given at `approved_at`, valid for `ttl` seconds, remembered
    with the id of the approval that gave it (events of later writes correlate to it)."""

    def __init__(self, ttl: float = 1800.0, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.clock = clock
        self._lock = threading.Lock()
        self._consents: dict[str, tuple[float, str | None]] = {}

    def remember(self, session_id: str, approval_id: str | None = None) -> None:
        with self._lock:
            self._consents[session_id] = (self.clock(), approval_id)

    def consent(self, session_id: str) -> tuple[float, str | None] | None:
        """(seconds since consent, approval id) in this session, or None when none is valid."""
        with self._lock:
            entry = self._consents.get(session_id)
            if entry is None:
                return None
            at, approval_id = entry
            age = self.clock() - at
            if age > self.ttl:
                del self._consents[session_id]
                return None
            return age, approval_id

    def clear(self) -> None:
        with self._lock:
            self._consents.clear()

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._consents.pop(session_id, None)
