"""The enforcement chain: what happens to one tool call, in order (docs/architecture.md §2).

    1. the caller was authenticated by the resource server (a `Caller`)
    2. the arguments are validated against the tool's schema           -> nothing runs if not
    3. workload identity: JWT-SVID (actor) and the Vault-held credential, both before step 4
    4. human in the loop: tier 2 once per session (30 min), tier 3 every call, by CIBA push
    5. RFC 8693 token exchange with one RFC 9396 object for exactly this call
    6. the admin API, with the on-behalf-of token
    7. an event for every decision

Every failure fails closed and says which dependency or decision stopped the call; the model
receives that sentence as an error result, never a token.

A call can be cancelled by its client (`CallCancel`, iia.cancellation): a pending push is
withdrawn (`agent:push_withdrawn`), no token is exchanged for it, and nothing reaches the admin
API after the cancellation; `commit()` right before the admin API is the point of no return. A
tier-3 approval that arrived before the cancellation is given up at the IdP (withdrawn there
too, `agent:push_withdrawn` with pushStatus `approved`), so no other call can redeem it.

A write whose request may have reached the admin API but got no answer (a 5xx, a dropped
connection, a read timeout) is never reported as "nothing was done": the chain emits
`agent:outcome_unknown`, reads the target back through the chain (the tool's `ReadBack` in the
catalog: a tier-1 exchange of its own, no approval asked), emits `agent:outcome_reconciled`
and tells the model one sentence ending `done (confirmed)`, `not done` or `still unknown`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from iia.admin_api import AdminApiClient, AdminApiError, AdminApiUnavailableError
from iia.cancellation import CallCancel, CallCancelledError
from iia.catalog import CATALOG, CatalogContext, Tool
from iia.errors import IIAError
from iia.events import EventBus, bound_fields
from iia.hitl import (
    Approval,
    ApprovalChannel,
    ApprovalDeniedError,
    ApprovalTimeoutError,
    ConsentCache,
)
from iia.identity import WorkloadIdentity
from iia.oauth.ciba_id_token import PasskeyAnswer
from iia.oauth.client import AuthorizationServerClient, IdpBusyError
from iia.oauth.errors import OAuthError
from iia.oauth.token_exchange import JWT, OboToken, exchange
from iia.people import SessionNames
from iia.rar import RarDetails, authorization_details, session_consent_details
from iia.resource_server import Caller
from iia.sessions import SessionRevocations
from iia.tool_schema import Draft202012Validator, best_match

__all__ = ["EnforcementChain", "StepTimings", "ToolOutcome"]

log = logging.getLogger(__name__)

CONSENT_SECONDS = 1800


@dataclass
class StepTimings:
    """Milliseconds per step of the last call (for the sequence view and the benchmark)."""

    steps: dict[str, float] = field(default_factory=dict)

    def add(self, step: str, started: float) -> None:
        self.steps[step] = round((time.perf_counter() - started) * 1000, 2)


@dataclass
class ToolOutcome:
    tool: str
    ok: bool
    result: Any = None  # compact result for the model
    error: str | None = None  # the sentence the model reads
    code: str | None = None  # wire code of what stopped the call
    timings: StepTimings = field(default_factory=StepTimings)
    obo_claims: Mapping[str, Any] | None = None  # decoded, for the token inspector
    call_id: str = ""
    # a write whose answer was lost: what the read-back showed (done (confirmed) | not done |
    # still unknown), and the sentence the model reads instead of the result
    read_back: str | None = None
    sentence: str | None = None

    def public(self) -> dict[str, Any]:
        """What a console may show: outcome, timings, decoded OBO claims (no token)."""
        return {"callId": self.call_id, "tool": self.tool, "ok": self.ok, "code": self.code,
                "error": self.error, "steps": dict(self.timings.steps),
                "obo": dict(self.obo_claims) if self.obo_claims else None,
                **({"readBack": self.read_back} if self.read_back else {})}

    def text(self) -> str:
        if self.ok and self.sentence:
            return self.sentence
        if self.ok:
            return json.dumps(self.result, ensure_ascii=False, default=str)
        return f"[{self.code}] {self.error}"


BINDING_MAX = 200  # OpenID CIBA: a binding message is short; the IdP refuses longer ones


def _binding(prefix: str, summary: str) -> str:
    """What the phone shows: the full request travels in authorization_details."""
    room = BINDING_MAX - len(prefix)
    return prefix + (summary if len(summary) <= room else summary[:room - 1] + "…")


def _correlation(handle: str) -> str:
    """The approval id events carry: a digest of the CIBA auth_req_id, which only the
    requesting client may present (OpenID CIBA §7.3), so the handle itself never travels."""
    return hashlib.sha256(handle.encode()).hexdigest()[:16]


def _signed_with(passkey: PasskeyAnswer | None) -> dict[str, Any]:
    """What an answer's event says of the passkey that signed it: only what the IdP attested
    in the ID Token the approval channel validated (`credentialIdDigest`, `userVerified`);
    nothing when it attested none."""
    return passkey.event_details() if passkey is not None else {}


@dataclass
class _Trail:
    """What one call has established so far, for the events that join it up: the actor
    (after step 3), the approval that authorizes the call (after step 4) and the on-behalf-of
    token's jti (after step 5)."""

    spiffe_id: str | None = None
    approval_id: str | None = None
    obo_jti: str | None = None
    cancel: CallCancel | None = None  # the client's cancellation of this call

    def correlation(self) -> dict[str, str]:
        ids = {"approvalId": self.approval_id, "oboJti": self.obo_jti}
        return {k: v for k, v in ids.items() if v}


class EnforcementChain:
    def __init__(self, *, identity: WorkloadIdentity, server: AuthorizationServerClient,
                 admin: AdminApiClient, approvals: ApprovalChannel, consents: ConsentCache,
                 events: EventBus, revocations: SessionRevocations, admin_api_url: str,
                 context: CatalogContext | None = None,
                 tools: tuple[Tool, ...] = CATALOG) -> None:
        self.identity = identity
        self.server = server
        self.admin = admin
        self.approvals = approvals
        self.consents = consents
        self.events = events
        self.revocations = revocations
        self.admin_api_url = admin_api_url
        self.context = context or CatalogContext()
        self.tools = {t.name: t for t in tools}
        self._validators = {t.name: Draft202012Validator(dict(t.input_schema)) for t in tools}
        # who is who per session, from what the admin API answered that session's calls: the
        # summaries, pushes and events name people by it, never by the model's ids
        self.names = SessionNames()
        self.last: ToolOutcome | None = None
        # (call id, milliseconds per step) of recent calls: the sequence view and the benchmark
        self.timings: deque[tuple[str, dict[str, float]]] = deque(maxlen=1000)  # bounded
        # recent outcomes with their session (decoded claims only, never a token)
        self.history: deque[tuple[str, ToolOutcome]] = deque(maxlen=200)
        # -- instrumentation (iia.ops counters): tool calls taken, since start --
        self._count_lock = threading.Lock()
        self.calls = 0

    # -- the call ---------------------------------------------------------------------------

    def call(self, name: str, arguments: Mapping[str, Any] | None, caller: Caller, *,
             cancel: CallCancel | None = None) -> ToolOutcome:
        with self._count_lock:
            self.calls += 1
        tool = self.tools.get(name)
        if tool is None:
            outcome = ToolOutcome(name, False, error=f"there is no tool named {name!r}",
                                  code="unknown_tool")
            self.events.emit("agent:tool_error", outcome="error", reason=outcome.error,
                             tool_name=name, user_email=caller.email, session_id=caller.sid,
                             duration_ms=0)
            return outcome
        args = dict(arguments or {})
        call_id = uuid.uuid4().hex[:12]
        with bound_fields(session_id=caller.sid, user_email=caller.email, tool_name=tool.name,
                          tier=tool.tier, rar_type=tool.rar_type, call_id=call_id):
            outcome = self._call(tool, args, caller, cancel)
        outcome.call_id = call_id
        self.last = outcome
        self.timings.append((call_id, dict(outcome.timings.steps)))
        self.history.append((caller.sid, outcome))
        return outcome

    def _call(self, tool: Tool, args: dict[str, Any], caller: Caller,
              cancel: CallCancel | None = None) -> ToolOutcome:
        timings = StepTimings()
        began = time.perf_counter()
        error = best_match(self._validators[tool.name].iter_errors(args))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "arguments"
            return self._fail(tool, timings, began, "invalid_arguments",
                              f"invalid arguments for {tool.name}: {where}: {error.message}")
        details = authorization_details(tool, args, self.admin_api_url,
                                        summary=self.names.of(caller.sid).summary(tool, args))
        trail = _Trail(cancel=cancel)
        with bound_fields(rar_summary=details["summary"],
                          correlation={"rarDigest": details["digest"]}):
            try:
                return self._enforce(tool, args, details, caller, timings, began, trail)
            except IdpBusyError as exc:  # past the client's retry budget: busy, not down
                return self._fail(tool, timings, began, exc.code,
                                  f"{exc.description}: the call was not made; it may be "
                                  "asked again in a few seconds", dependency=exc.dependency,
                                  trail=trail)
            except IIAError as exc:
                return self._fail(tool, timings, began, exc.code, exc.description,
                                  dependency=exc.dependency, trail=trail)
            except Exception as exc:  # a bug must still fail closed, with an audit record
                log.exception("tool call %s failed unexpectedly", tool.name)
                return self._fail(tool, timings, began, "internal_error",
                                  f"the MCP server failed ({exc.__class__.__name__}); "
                                  "nothing was done", trail=trail)

    def _enforce(self, tool: Tool, args: dict[str, Any], details: RarDetails,
                 caller: Caller, timings: StepTimings, began: float,
                 trail: _Trail) -> ToolOutcome:
        # 3. workload identity, whole: the JWT-SVID and the Vault-held credential (so a
        #    dependency that is down fails the call before anyone is asked anything)
        with self.identity.established(self.server.issuer) as workload:
            timings.steps.update(svid=workload.svid_ms, vault=workload.vault_ms)
            trail.spiffe_id = workload.spiffe_id
            with bound_fields(spiffe_id=workload.spiffe_id):
                return self._authorize_and_send(tool, args, details, caller, timings, began,
                                                trail)

    def _authorize_and_send(self, tool: Tool, args: dict[str, Any], details: RarDetails,
                            caller: Caller, timings: StepTimings, began: float,
                            trail: _Trail) -> ToolOutcome:
        # 4. human in the loop
        approval: Approval | None = None  # a tier-3 approval of this call
        if tool.hitl == "session":
            t = time.perf_counter()
            self._session_consent(details, caller, trail)
            timings.add("approval", t)
        elif tool.hitl == "call":
            t = time.perf_counter()
            approval = self._approve(
                caller, details, _binding("Approve this one action by the IIA agent: ",
                                          details["summary"]), cancel=trail.cancel)
            trail.approval_id = _correlation(approval.approval_id)
            timings.add("approval", t)

        # 5. token exchange (none for a call its client cancelled). A tier-3 approval is for
        #    this call only and stays redeemable at the IdP until an exchange spends it: a
        #    call cancelled after it arrived gives it up there, so no other call can use it.
        if trail.cancel is not None and trail.cancel.cancelled:
            if approval is not None:
                forfeited = self.approvals.forfeit(approval, trail.cancel)
                self.events.emit("agent:push_withdrawn", outcome="cancelled",
                                 reason=forfeited.description, duration_ms=0,
                                 details={"pushStatus": forfeited.push_status},
                                 correlation=trail.correlation())
                raise forfeited
            trail.cancel.check()
        t = time.perf_counter()
        try:
            obo = exchange(self.server, self.identity, subject_token=caller.token,
                           details=details, audience=self.admin_api_url)
        except OAuthError as exc:
            timings.add("exchange", t)
            return self._denied(tool, exc, caller, timings, began, t, trail)
        timings.add("exchange", t)
        trail.obo_jti = obo.jti
        self.events.emit(
            "agent:token_exchange_success", outcome="success",
            duration_ms=round((time.perf_counter() - t) * 1000),
            actor_token_type=JWT, obo_token_expires_in=obo.expires_in,
            correlation=trail.correlation())

        # 6. the admin API: past this point a cancellation comes too late
        if trail.cancel is not None:
            trail.cancel.commit()
        t = time.perf_counter()
        try:
            body = self.admin.send(tool.request(args, self.context), obo.token)
        except AdminApiUnavailableError as exc:
            timings.add("admin_api", t)
            if not exc.maybe_executed or tool.tier < 2:
                raise  # it cannot have been done (or it was a read): fails closed as it is
            return self._reconcile(tool, args, exc, caller, timings, began, obo, trail)
        except AdminApiError as exc:
            timings.add("admin_api", t)
            if exc.http_status == 404 and tool.name == "get_user":
                self.names.of(caller.sid).absent("user", str(args["user_id"]))
            return self._fail(tool, timings, began, "admin_api_refused",
                              f"the admin API answered {exc.http_status}: {exc.description}",
                              obo=obo, trail=trail)
        timings.add("admin_api", t)
        self.names.of(caller.sid).learn(body)  # the directory's own answer to this session
        timings.steps["total"] = round((time.perf_counter() - began) * 1000, 2)
        return ToolOutcome(tool.name, True, result=tool.compact(body), timings=timings,
                           obo_claims=dict(obo.claims))

    # -- a lost answer ------------------------------------------------------------------------

    def _reconcile(self, tool: Tool, args: dict[str, Any], lost: AdminApiUnavailableError,
                   caller: Caller, timings: StepTimings, began: float, obo: OboToken,
                   trail: _Trail) -> ToolOutcome:
        """The write may have been executed and its answer was lost: say that it is unknown,
        read the target back, and report what the read showed (never "nothing was done"
        without a read that shows it)."""
        cause = lost.description
        self.events.emit("agent:outcome_unknown", outcome="unknown", duration_ms=0,
                         reason=f"the admin API's answer to {tool.name} was lost ({cause}); "
                                "reading the target back",
                         details={"error": lost.code, "dependency": "admin_api",
                                  **({"upstream": lost.upstream_code}
                                     if lost.upstream_code else {})},
                         correlation=trail.correlation())
        t = time.perf_counter()
        done, seen, read_jti = self._read_back(tool, args, caller)
        timings.add("read_back", t)
        verdict = {True: "done (confirmed)", False: "not done", None: "still unknown"}[done]
        advice = {True: "", False: "; nothing was changed, the call can be made again",
                  None: "; check before making the call again"}[done]
        sentence = (f"{tool.name}: the admin API's answer was lost ({cause}); read back: "
                    f"{verdict} — {seen}{advice}")
        self.events.emit("agent:outcome_reconciled",
                         outcome={True: "success", False: "error", None: "unknown"}[done],
                         reason=sentence, duration_ms=round((time.perf_counter() - t) * 1000),
                         details={"readBack": verdict},
                         correlation={**trail.correlation(),
                                      **({"readBackJti": read_jti} if read_jti else {})})
        if done is True:
            timings.steps["total"] = round((time.perf_counter() - began) * 1000, 2)
            return ToolOutcome(tool.name, True, result={"status": verdict}, timings=timings,
                               obo_claims=dict(obo.claims), read_back=verdict,
                               sentence=sentence)
        code = "admin_api_unavailable" if done is False else "outcome_unknown"
        outcome = self._fail(tool, timings, began, code, sentence, dependency="admin_api",
                             obo=obo, trail=trail)
        outcome.read_back = verdict
        return outcome

    def _read_back(self, tool: Tool, args: dict[str, Any],
                   caller: Caller) -> tuple[bool | None, str, str | None]:
        """(done?, what the read showed, the read's OBO jti): the catalog's `ReadBack` of
        `tool`, made as a tier-1 call of its own (its own RFC 9396 object and token exchange,
        then the admin API), never with the write's token."""
        spec = tool.read_back
        reader = self.tools.get(spec.tool) if spec is not None else None
        if spec is None or reader is None or reader.tier != 1:
            return None, f"nothing can read back whether {tool.name} happened", None
        read_args = spec.arguments(args, self.context)
        details = authorization_details(reader, read_args, self.admin_api_url,
                                        summary=reader.summary(read_args))
        fields: dict[str, Any] = {"tool_name": reader.name, "tier": reader.tier,
                                  "rar_type": reader.rar_type,
                                  "rar_summary": details["summary"]}
        t = time.perf_counter()
        try:
            read = exchange(self.server, self.identity, subject_token=caller.token,
                            details=details, audience=self.admin_api_url)
        except IIAError as exc:
            self.events.emit("agent:token_exchange_denied", outcome="denied",
                             reason=exc.description, actor_token_type=JWT,
                             duration_ms=round((time.perf_counter() - t) * 1000),
                             details={"error": exc.code, "readBackOf": tool.name},
                             correlation={"rarDigest": details["digest"]}, **fields)
            return None, f"the read-back got no token ({exc.description})", None
        self.events.emit("agent:token_exchange_success", outcome="success",
                         duration_ms=round((time.perf_counter() - t) * 1000),
                         actor_token_type=JWT, obo_token_expires_in=read.expires_in,
                         details={"readBackOf": tool.name},
                         correlation={"rarDigest": details["digest"],
                                      "readBackJti": read.jti},
                         **fields)
        body: Any
        try:
            body = self.admin.send(reader.request(read_args, self.context), read.token)
        except AdminApiError as exc:
            if exc.http_status != 404:
                return None, f"the read-back was refused ({exc.http_status}: " \
                             f"{exc.description})", read.jti
            body = None
        except IIAError as exc:
            return None, f"the read-back failed too ({exc.description})", read.jti
        done, seen = spec.judge(args, body)
        return done, seen, read.jti

    # -- human in the loop ------------------------------------------------------------------

    def _session_consent(self, details: RarDetails, caller: Caller,
                         trail: _Trail) -> None:
        cached = self.consents.consent(caller.sid)
        if cached is not None:
            age, trail.approval_id = cached
            self.events.emit("agent:hitl_cached", outcome="success", duration_ms=0,
                             details={"consentAgeS": round(age),
                                      "consentRemainingS": round(self.consents.ttl - age)},
                             correlation=trail.correlation())
            return
        consent = session_consent_details(
            caller.sid, CONSENT_SECONDS, self.admin_api_url,
            summary=f"Let the agent make changes for you for 30 minutes (first: "
                    f"{details['summary']})")
        trail.approval_id = _correlation(self._approve(
            caller, consent, _binding("Allow the IIA agent to make changes for you for 30 "
                                      "minutes? First: ", details["summary"]),
            cancel=trail.cancel).approval_id)
        self.consents.remember(caller.sid, trail.approval_id)

    def _approve(self, caller: Caller, details: RarDetails, message: str, *,
                 cancel: CallCancel | None = None) -> Approval:
        """Push to the user and wait; returns the approval (`_correlation` of its
        approval_id is what events name). A denial emits
        `agent:hitl_denied`, a push nobody answered in time `agent:hitl_expired`, a push
        withdrawn because the client cancelled the call `agent:push_withdrawn`; all raise."""
        self.events.emit("agent:hitl_required", outcome="pending", duration_ms=0,
                         reason=message)
        started = time.perf_counter()
        pushed: dict[str, str] = {}

        def pending(handle: str, expires_in: float) -> None:
            pushed["approvalId"] = _correlation(handle)
            self.events.emit("agent:push_pending", outcome="pending", duration_ms=0,
                             details={"expiresInS": round(expires_in)},
                             correlation=dict(pushed))

        def waited() -> int:
            return round((time.perf_counter() - started) * 1000)

        try:
            approval = self.approvals.request(user=caller.email, details=details,
                                              binding_message=message, on_pending=pending,
                                              user_token=caller.token, cancel=cancel)
        except ApprovalTimeoutError as exc:
            self.events.emit("agent:hitl_expired", outcome="expired", reason=exc.description,
                             duration_ms=waited(), correlation=dict(pushed))
            raise
        except ApprovalDeniedError as exc:
            self.events.emit("agent:hitl_denied", outcome="denied", reason=exc.description,
                             duration_ms=waited(), details=_signed_with(exc.passkey),
                             correlation=dict(pushed))
            raise
        except CallCancelledError as exc:
            self.events.emit("agent:push_withdrawn", outcome="cancelled",
                             reason=exc.description, duration_ms=waited(),
                             details={"pushStatus": exc.push_status},
                             correlation=dict(pushed))
            raise
        approval_id = _correlation(approval.approval_id)
        self.events.emit("agent:hitl_approved", outcome="success",
                         duration_ms=approval.waited_ms, details=_signed_with(approval.passkey),
                         correlation={"approvalId": approval_id})
        return approval

    # -- failures ---------------------------------------------------------------------------

    def _denied(self, tool: Tool, exc: OAuthError, caller: Caller, timings: StepTimings,
                began: float, started: float, trail: _Trail) -> ToolOutcome:
        policy = exc.policy_id
        self.events.emit("agent:token_exchange_denied", outcome="denied",
                         reason=exc.description, actor_token_type=JWT,
                         duration_ms=round((time.perf_counter() - started) * 1000),
                         details={"error": exc.code, **({"policyId": policy} if policy else {})},
                         correlation=trail.correlation())
        if policy == "tier2-needs-session-approval":
            # the IdP no longer honours this session's consent (it expired there first): forget
            # ours too, so the next write asks the user again instead of failing until we expire
            self.consents.forget(caller.sid)
        if exc.session_ended:  # the IdP said so (iia.protocol.SESSION_ENDED), not its words
            self.revocations.revoke(caller.sid, exc.description)
            return self._fail(tool, timings, began, "session_revoked",
                              f"the user's session has ended ({exc.description}); sign in "
                              "again", emit=False)
        sentence = f"the identity provider refused to issue a token: {exc.description}"
        return self._fail(tool, timings, began, exc.code, sentence, emit=False)

    def _fail(self, tool: Tool, timings: StepTimings, began: float, code: str, message: str, *,
              dependency: str | None = None, obo: OboToken | None = None,
              trail: _Trail | None = None, emit: bool = True) -> ToolOutcome:
        timings.steps["total"] = round((time.perf_counter() - began) * 1000, 2)
        if emit:
            self.events.emit("agent:tool_error", outcome="error", reason=message,
                             duration_ms=round(timings.steps["total"]),
                             spiffe_id=trail.spiffe_id if trail else None,
                             details={"error": code,
                                      **({"dependency": dependency} if dependency else {})},
                             correlation=trail.correlation() if trail else {})
        return ToolOutcome(tool.name, False, error=message, code=code, timings=timings,
                           obo_claims=dict(obo.claims) if obo else None)


