"""Human in the loop: asking the user to approve, and remembering a session's consent.

`ApprovalChannel` is the protocol (docs/architecture.md §7, "Seams"); `CibaApprovalChannel`
implements it with OpenID CIBA at the identity provider, so the IdP itself records what the human
approved and checks it again at token exchange. `ConsentCache` remembers tier-2 consent per
session for 30 minutes (its clock is injectable).

Ping mode (CIBA §10.2) is the default: each push carries a fresh `client_notification_token`,
the IdP calls the MCP server's notification endpoint (iia.oauth.ciba_ping) when the user answers
or the push expires, and the channel then makes one token request, so a waiting push costs one
Vault read, not one per poll. Without a callback it still polls, every `ping_fallback` seconds
(at least the IdP's interval, §7.3): a lost callback delays the answer, it never loses it. Poll
mode (no `ping` receiver, or an IdP that does not offer ping) polls at the IdP's interval.

A token request that fails transiently (the IdP unreachable, a 5xx, `temporarily_unavailable`
or `server_error`, a busy IdP past its retry budget, our Vault unavailable) ends nothing: the
push still waits at the IdP, or holds the user's answer, so the channel asks again, backing off
(the IdP's interval, doubled per failure in a row up to `BACKOFF_MAX`, never sooner than a
busy IdP's Retry-After), until the push expires (plus `EXPIRY_GRACE`); only then does it give up,
saying the answer could not be learned, not that nobody answered. `slow_down` adds 5 s to the
interval (§11); `access_denied`, `expired_token` and every other error are final.

The answer's ID Token (CIBA §10.1.1; with a denial, the `id_token` member of `access_denied`) is
validated (iia.oauth.ciba_id_token): an approval whose ID Token does not validate is not one
(`approval_unverified`). What it attests of the passkey that signed the answer (the credential
id's digest, user verification) travels on as `Approval.passkey` / `ApprovalDeniedError.passkey`.

A call cancelled while its push waits (`CallCancel`, iia.cancellation: the MCP client sent
`notifications/cancelled` or went away) wakes the wait at once, withdraws the push at the IdP
(`backchannel_withdrawal_endpoint`, authenticated as the MCP server's client like
bc-authorize) and ends with `call_cancelled`: no token request follows, so a later approval
on the phone finds the push withdrawn and serves nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from iia.cancellation import Awaiting, CallCancel, CallCancelledError
from iia.errors import IIAError
from iia.identity import WorkloadIdentity
from iia.identity.errors import VaultSealedError, VaultUnavailableError
from iia.identity.vault import ClientCredential
from iia.oauth.ciba_id_token import CibaIdTokenVerifier, InvalidIdTokenError, PasskeyAnswer
from iia.oauth.ciba_ping import PingReceiver, PingWait
from iia.oauth.client import AuthorizationServerClient, IdpUnavailableError
from iia.oauth.errors import OAuthError
from iia.protocol import CIBA_GRANT
from iia.rar import RarDetails, wire

__all__ = ["PING_FALLBACK", "Approval", "ApprovalChannel", "ApprovalDeniedError",
           "ApprovalError", "ApprovalRefusedError", "ApprovalTimeoutError",
           "ApprovalUnverifiedError",
           "CibaApprovalChannel", "CibaOutcome", "ConsentCache"]

log = logging.getLogger(__name__)

PING_FALLBACK = 30.0  # seconds between fallback polls in ping mode (IdP interval if longer)
EXPIRY_GRACE = 5.0  # seconds past the deadline a ping-mode wait gives the IdP's expiry callback
BACKOFF_MAX = 10.0  # seconds: the longest wait between token requests after transient failures

# what the token endpoint answers when it could not decide now: ask again later
TRANSIENT_OAUTH = frozenset({"temporarily_unavailable", "server_error"})

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
    """The user denied the request on their phone; `passkey` is how, as the IdP attests it."""

    passkey: PasskeyAnswer | None = None


class ApprovalUnverifiedError(ApprovalError, code="approval_unverified", dependency="idp"):
    """The IdP said approved, but the ID Token of the answer does not validate: not an
    approval (OpenID Connect Core §3.1.3.7)."""


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
    passkey: PasskeyAnswer | None = None  # the passkey that signed it, as the IdP attests


class ApprovalChannel(Protocol):
    def request(self, *, user: str, details: RarDetails, binding_message: str,
                on_pending: Callable[[str, float], None] | None = None,
                user_token: str | None = None, cancel: CallCancel | None = None) -> Approval:
        """Ask `user` to approve `details`; return once approved, raise when denied or when
        nobody answers in time. `user_token` is the access token of the user's session the
        call runs in: the identity provider binds the approval to that session. A `cancel`led
        call withdraws its push and raises `CallCancelledError`."""
        ...

    def forfeit(self, approval: Approval, cancel: CallCancel) -> CallCancelledError:
        """The call `approval` was for was cancelled before it used it: give it up at the
        identity provider, so that no other call can redeem it; the error the call ends with."""
        ...


class CibaApprovalChannel:
    def __init__(self, server: AuthorizationServerClient, identity: WorkloadIdentity, *,
                 timeout: float = 120.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 ping: PingReceiver | None = None, ping_fallback: float = PING_FALLBACK,
                 id_tokens: CibaIdTokenVerifier | None = None) -> None:
        self.server = server
        self.id_tokens = id_tokens or CibaIdTokenVerifier(
            server.issuer, lambda: server.endpoint("jwks_uri"))
        self.identity = identity
        self.timeout = timeout
        self.ping = ping  # None: poll mode
        self.ping_fallback = ping_fallback
        self._sleep = sleep
        self._clock = clock

    def _ping_mode(self) -> bool:
        """Ping when this channel has a notification endpoint and the IdP offers ping (§4
        backchannel_token_delivery_modes_supported); the client's registration says ping."""
        if self.ping is None:
            return False
        modes = self.server.metadata.get("backchannel_token_delivery_modes_supported") or []
        return isinstance(modes, list) and "ping" in modes

    def request(self, *, user: str, details: RarDetails, binding_message: str,
                on_pending: Callable[[str, float], None] | None = None,
                user_token: str | None = None, cancel: CallCancel | None = None) -> Approval:
        started = self._clock()
        # CIBA §7.1 allows exactly one hint. The user's access token as login_hint_token tells
        # the IdP which session asks, so it binds the approval to that session; an email
        # (login_hint) names only the user, and a tier-3 approval without a session serves none.
        hint = ({"login_hint_token": user_token} if user_token else {"login_hint": user})
        form = {"scope": "openid", **hint, "binding_message": binding_message,
                "authorization_details": wire(details),
                "requested_expiry": str(int(self.timeout))}
        wait = self.ping.expect() if self.ping is not None and self._ping_mode() else None
        if wait is not None:
            form["client_notification_token"] = wait.token  # §7.1, fresh for this request
        try:
            return self._push_and_wait(user, form, started, on_pending, wait, cancel)
        finally:
            if wait is not None and self.ping is not None:
                self.ping.discard(wait)

    def _push_and_wait(self, user: str, form: dict[str, str], started: float,
                       on_pending: Callable[[str, float], None] | None,
                       wait: PingWait | None, cancel: CallCancel | None) -> Approval:
        if cancel is not None:
            cancel.check()  # nobody is asked to approve a call its client already cancelled
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
        interval = float(started_body.get("interval", 5))  # §7.3: 5 s when not given
        deadline = started + min(self.timeout, float(started_body.get("expires_in",
                                                                      self.timeout)))
        if wait is not None and self.ping is not None:
            self.ping.bind(wait, auth_req_id)
        if on_pending is not None:
            on_pending(auth_req_id, deadline - started)
        if cancel is None:
            return self._wait(user, auth_req_id, started, deadline, interval, wait, None)
        now = time.monotonic()
        cancel.wait_for_answer(Awaiting(user, now, now + (deadline - self._clock())))
        unsubscribe = cancel.on_cancel(wait.notified.set) if wait is not None else None
        try:
            return self._wait(user, auth_req_id, started, deadline, interval, wait, cancel)
        finally:
            cancel.wait_for_answer(None)
            if unsubscribe is not None:
                unsubscribe()

    def _wait(self, user: str, auth_req_id: str, started: float, deadline: float,
              interval: float, wait: PingWait | None, cancel: CallCancel | None) -> Approval:
        delay: float | None = None  # set: the backoff after a transient failure
        failures = 0
        while True:
            called_back = False
            if wait is None:
                pause = interval if delay is None else delay
                if cancel is None:
                    self._sleep(pause)
                else:
                    cancel.wait(pause)
            else:  # the callback, or a fallback poll; never past the IdP's own expiry call
                remaining = max(0.0, deadline - self._clock()) + EXPIRY_GRACE
                pause = max(interval, self.ping_fallback) if delay is None else delay
                called_back = wait.notified.wait(min(pause, remaining))
            if cancel is not None and cancel.cancelled:
                raise self._withdraw(user, auth_req_id, cancel)
            client: list[str] = []
            try:
                tokens = self._token_request(auth_req_id, client)
            except IIAError as exc:
                if not transient(exc):
                    self._final(exc, user, client, auth_req_id)
                    if wait is not None and called_back:
                        self._rearm(wait, cancel)  # called back too soon: back to the fallback
                    if isinstance(exc, OAuthError) \
                            and CibaOutcome.of(exc) is CibaOutcome.SLOW_DOWN:
                        interval += 5  # CIBA §11
                    elif self._clock() >= deadline:  # authorization_pending, and past it
                        raise ApprovalTimeoutError(
                            f"{user} did not answer the push within {self.timeout:.0f} s") \
                            from exc
                    delay, failures = None, 0
                    continue
                # a transient failure ends nothing: the push still waits (or holds its
                # answer) at the IdP; ask again, backing off, until the push expires
                if self._clock() >= deadline + EXPIRY_GRACE:
                    raise _unanswered(exc, user) from exc
                failures += 1
                delay = self._backoff(interval, failures, exc)
                log.warning("a token request for a pending push failed (%s); asking again "
                            "in %.1f s", exc.code, delay)
                if wait is not None:
                    self._rearm(wait, cancel)
                continue
            now = self._clock()
            return Approval(approval_id=auth_req_id, approved_at=time.time(),
                            waited_ms=round((now - started) * 1000),
                            passkey=self._attested(tokens, client[-1], auth_req_id))

    def _final(self, exc: IIAError, user: str, client: list[str], auth_req_id: str) -> None:
        """Raise what a final answer of the token request means; return for the two that say
        keep waiting (authorization_pending, slow_down)."""
        outcome = CibaOutcome.of(exc) if isinstance(exc, OAuthError) else None
        if outcome in (CibaOutcome.AUTHORIZATION_PENDING, CibaOutcome.SLOW_DOWN):
            return
        if outcome is CibaOutcome.ACCESS_DENIED:
            assert isinstance(exc, OAuthError)
            denied = ApprovalDeniedError(f"{user} denied the request on their phone")
            denied.passkey = self._denial(exc, client, auth_req_id)
            raise denied from exc
        if outcome is CibaOutcome.EXPIRED_TOKEN:
            raise ApprovalTimeoutError(f"{user} did not answer the push in time") from exc
        raise exc

    def _backoff(self, interval: float, failures: int, exc: IIAError) -> float:
        """Seconds before asking again after the `failures`-th transient failure in a row:
        the IdP's interval, doubled each time up to `BACKOFF_MAX`, and never sooner than a
        busy IdP's Retry-After."""
        delay = min(BACKOFF_MAX, max(1.0, interval) * float(2 ** (failures - 1)))
        asked = getattr(exc, "retry_after", None)
        return max(delay, float(asked)) if isinstance(asked, int | float) else delay

    def _token_request(self, auth_req_id: str, client: list[str]) -> dict[str, Any]:
        """The token request (§10.1), noting in `client` which client made it (the audience
        of the ID Token it gets back)."""
        def redeem(credential: ClientCredential) -> dict[str, Any]:
            client.append(credential.client_id)
            return self.server.token({"grant_type": CIBA_GRANT, "auth_req_id": auth_req_id},
                                     credential)
        return self.identity.with_credential(redeem)

    def _attested(self, tokens: Mapping[str, Any], client_id: str,
                  auth_req_id: str) -> PasskeyAnswer | None:
        """An approval's ID Token validated; the passkey answer it attests."""
        try:
            return self.id_tokens.verify(tokens.get("id_token"), client_id=client_id,
                                         auth_req_id=auth_req_id, answer="approve")
        except InvalidIdTokenError as exc:
            raise ApprovalUnverifiedError(
                f"the identity provider answered approved, but its ID Token of the answer "
                f"does not validate ({exc.description}): nothing was approved",
                upstream_code=exc.code) from exc

    def _denial(self, exc: OAuthError, client: list[str],
                auth_req_id: str) -> PasskeyAnswer | None:
        """A denial's ID Token (the `id_token` member of access_denied), when it carries one
        that validates: the passkey answer it attests. A denial stands either way."""
        if "id_token" not in exc.extra or not client:
            return None
        try:
            return self.id_tokens.verify(exc.extra["id_token"], client_id=client[-1],
                                         auth_req_id=auth_req_id, answer="deny")
        except InvalidIdTokenError as invalid:
            log.warning("a denial's ID Token does not validate (%s); the denial stands",
                        invalid.description)
            return None

    @staticmethod
    def _rearm(wait: PingWait, cancel: CallCancel | None) -> None:
        """Wait for the next callback; a cancellation that came meanwhile still wakes it."""
        wait.notified.clear()
        if cancel is not None and cancel.cancelled:
            wait.notified.set()

    def forfeit(self, approval: Approval, cancel: CallCancel) -> CallCancelledError:
        """A tier-3 approval is for exactly one call, once; the IdP keeps it redeemable until
        the token exchange spends it. Its call cancelled after the approval arrived but before
        the exchange: the push is withdrawn at the IdP all the same, which spends the approval
        it left unused, so that the next exchange of the same call in the same session finds
        none and asks the user again."""
        return self._withdraw_push(
            approval.approval_id, f"the call was cancelled ({cancel.reason}) after the user "
            "approved it, before the approval was used", after_approval=True)

    def _withdraw(self, user: str, auth_req_id: str, cancel: CallCancel) -> CallCancelledError:
        """Withdraw the cancelled call's push at the IdP; the error the call ends with says
        whether it was withdrawn (or already answered), or why it could not be."""
        return self._withdraw_push(
            auth_req_id, f"the call was cancelled ({cancel.reason}) while it waited for "
            f"{user}'s approval")

    def _withdraw_push(self, auth_req_id: str, what: str, *,
                       after_approval: bool = False) -> CallCancelledError:
        try:
            body = self.identity.with_credential(
                lambda credential: self.server.withdraw_backchannel(auth_req_id, credential))
        except IIAError as exc:
            left = ("the unused approval stays at the identity provider until it expires, "
                    "for exactly this call in this session" if after_approval else
                    "it stays on the phone until it expires, and an answer to it does nothing")
            return CallCancelledError(
                f"{what}; nothing was done, but the identity provider did not withdraw the "
                f"push ({exc.description}): {left}", dependency=exc.dependency or "idp",
                upstream_code=exc.code)
        status = str(body.get("status", ""))
        if status == "withdrawn":
            return CallCancelledError(f"{what}; the push was withdrawn from the phone and "
                                      "nothing was done", push_status=status)
        if after_approval and status == "approved":
            return CallCancelledError(f"{what}; the identity provider spent the approval, so "
                                      "no other call can use it, and nothing was done",
                                      push_status=status)
        return CallCancelledError(f"{what}; the push was already {status or 'closed'} at the "
                                  "identity provider, and nothing was done",
                                  push_status=status or None)


def transient(exc: IIAError) -> bool:
    """A token-request failure that says nothing about the push: the IdP (or the Vault
    holding our credential) could not be reached or could not answer now. Final answers
    (access_denied, expired_token, invalid_grant, invalid_client ...) are not transient;
    authorization_pending and slow_down are answers too, not failures."""
    if isinstance(exc, OAuthError):
        return exc.code in TRANSIENT_OAUTH
    return isinstance(exc, IdpUnavailableError | VaultUnavailableError | VaultSealedError)


def _unanswered(exc: IIAError, user: str) -> IIAError:
    """The push expired while the token endpoint kept failing: the same kind of error, saying
    that the answer could not be learned (not that nobody answered) and nothing was done."""
    sentence = (f"the answer to the push to {user}'s phone could not be learned before it "
                f"expired ({exc.description}); nothing was done")
    if isinstance(exc, OAuthError):
        return IdpUnavailableError(sentence, upstream_code=exc.code)
    return exc.__class__(sentence, dependency=exc.dependency, upstream_code=exc.upstream_code)


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
            now = self.clock()
            # bounded (issue #20): a lapsed consent of a session that never came back goes here
            for sid in [s for s, (at, _) in self._consents.items() if now - at > self.ttl]:
                del self._consents[sid]
            self._consents[session_id] = (now, approval_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._consents)

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
