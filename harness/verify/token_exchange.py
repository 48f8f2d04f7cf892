"""OAuth 2.0 Token Exchange (RFC 8693) with Rich Authorization Requests (RFC 9396), judged by
the tenant's Cedar policy.

    subject_token   the user's access token (RFC 9068), issued by this tenant for the MCP server
    actor_token     the MCP server's JWT-SVID (aud = this issuer), checked against the SPIFFE bundle
    authorization_details   exactly one object: this one operation
    audience/resource       the admin API

Checks, in order, one method each (`TokenExchange._grant` is their list): the request's shape
(`_client_may_exchange`, `_subject_token_params`, `_actor_token_params`, `_requested_token_type`,
`_audience_is_admin_api`, `_no_scope`); the subject token (`_subject`: signature, issuer, typ,
expiry, not revoked; `_subject_session_alive`, `_subject_for_mcp_server`,
`_subject_not_delegated`, `_subject_user_active`); the actor token (`_actor_trust_domain`,
`_actor_trusted`: the tenant's allow-list; `_actor_svid`: a JWT-SVID by py-spiffe;
`_actor_for_this_idp_only`); delegation (`_may_act_names_actor`, and `_delegation_live`: the
tenant's record says, now, that this user still delegates to that actor, so a withdrawn
delegation stops the very next exchange, whatever the token says); the authorization_details
object (`_authorization_details`: registered type, fields, tier, locations); then the policy
(`_call_approval`, `_policy`, `_call_approval_single_use`: the approval state recorded by CIBA, a
tier-3 approval counting only in the session that asked for it). Only then is an on-behalf-of
token minted (`_issue`): `act` = the SPIFFE ID, the exact authorization_details, `sid`, `jti`.

Error codes: structural problems are `invalid_request`, an unacceptable subject or actor token
is `invalid_grant` (the tokens are the grant; a session that ended reads as a dead grant and
carries `iia.protocol.SESSION_ENDED`),
`invalid_target`, `invalid_authorization_details`, and a policy refusal is `access_denied` with
the refusing policy's id and reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from starlette.responses import JSONResponse

from harness.spire.validation import SvidValidationError, trust_domain_of, validate_jwt_svid
from harness.verify.approvals import Approvals, CallApproval
from harness.verify.audit import AuditTrail, Decision
from harness.verify.client_auth import Client
from harness.verify.directory import Directory, UserRecord
from harness.verify.errors import (
    NO_STORE,
    AccessDenied,
    InvalidAuthorizationDetails,
    InvalidGrant,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    SessionEndedGrant,
    UnauthorizedClient,
)
from harness.verify.policy import PolicyDecision, TokenExchangePolicy
from harness.verify.rar import RarRegistry, parse_authorization_details
from harness.verify.spiffe_bundle import SpiffeBundleSource
from harness.verify.tokens import TokenInvalid, TokenService
from iia.jwks import JwksUnavailableError
from iia.protocol import (
    ACCESS_TOKEN_TYP,
    TOKEN_EXCHANGE_GRANT,
    TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_JWT,
)
from iia.rar import RarType

__all__ = ["TOKEN_EXCHANGE_GRANT", "TokenExchange"]


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503


class TokenExchange:
    def __init__(self, *, issuer: str, mcp_resource: str, admin_api_url: str,
                 tokens: TokenService, directory: Directory, registry: RarRegistry,
                 policy: TokenExchangePolicy, approvals: Approvals, audit: AuditTrail,
                 spiffe: SpiffeBundleSource, trusted_domains: frozenset[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.issuer = issuer
        self.mcp_resource = mcp_resource
        self.admin_api_url = admin_api_url
        self.tokens = tokens
        self.directory = directory
        self.registry = registry
        self.policy = policy
        self.approvals = approvals
        self.audit = audit
        self.spiffe = spiffe
        self.trusted_domains = trusted_domains
        self._clock = clock

    def grant(self, client: Client, form: Mapping[str, str]) -> JSONResponse:
        context: dict[str, Any] = {"client_id": client.client_id}
        try:
            return self._grant(client, form, context)
        except OAuthError as exc:
            self.audit.record(Decision(
                kind="token_exchange", outcome="denied", error=exc.error,
                reason=exc.description, policy_id=exc.extra.get("policy_id"),
                **{k: v for k, v in context.items() if k in _DECISION_FIELDS}))
            raise

    def _grant(self, client: Client, form: Mapping[str, str],
               ctx: dict[str, Any]) -> JSONResponse:
        """The checks, in the order they run; each raises the OAuth error of its rule."""
        self._client_may_exchange(client)
        self._subject_token_params(form)
        self._actor_token_params(form)
        self._requested_token_type(form)
        self._audience_is_admin_api(form)
        self._no_scope(form)
        subject = self._subject(form["subject_token"], ctx)
        self._subject_session_alive(subject)
        self._subject_for_mcp_server(subject)
        self._subject_not_delegated(subject)
        user = self._subject_user_active(subject)
        self._actor_trusted(self._actor_trust_domain(form["actor_token"]))
        actor_claims = self._actor_svid(form["actor_token"])
        self._actor_for_this_idp_only(actor_claims)
        actor = ctx["actor"] = str(actor_claims["sub"])
        self._may_act_names_actor(subject, actor)
        self._delegation_live(user, actor)
        obj, spec = self._authorization_details(form, ctx)
        call_approval = self._call_approval(subject, spec, obj, ctx)
        decision = self._policy(subject, actor, obj, spec, call_approval)
        self._call_approval_single_use(call_approval)
        return self._issue(client, subject, actor, obj, decision, ctx)

    # -- the request (RFC 8693 §2.1) --------------------------------------------------------

    def _client_may_exchange(self, client: Client) -> None:
        """RFC 6749 §5.2 `unauthorized_client`: the client is registered for token exchange."""
        if TOKEN_EXCHANGE_GRANT not in client.grant_types:
            raise UnauthorizedClient(f"{client.client_id} may not use token exchange")

    def _subject_token_params(self, form: Mapping[str, str]) -> None:
        """RFC 8693 §2.1: subject_token and subject_token_type are required; the subject is the
        user's access token."""
        for name in ("subject_token", "subject_token_type"):
            if not form.get(name):
                raise InvalidRequest(f"{name} is required")
        if form["subject_token_type"] != TOKEN_TYPE_ACCESS_TOKEN:
            raise InvalidRequest(f"subject_token_type must be {TOKEN_TYPE_ACCESS_TOKEN}")

    def _actor_token_params(self, form: Mapping[str, str]) -> None:
        """RFC 8693 §1.1, §2.1: an actor token is required (delegation, never impersonation),
        and it is a JWT (a JWT-SVID)."""
        if not form.get("actor_token"):
            raise InvalidRequest("actor_token is required: this tenant allows delegation, "
                                 "never impersonation")
        if form.get("actor_token_type") != TOKEN_TYPE_JWT:
            raise InvalidRequest(f"actor_token_type must be {TOKEN_TYPE_JWT} (a JWT-SVID)")

    def _requested_token_type(self, form: Mapping[str, str]) -> None:
        """RFC 8693 §2.1 requested_token_type: only an access token is issued."""
        if form.get("requested_token_type") not in (None, "", TOKEN_TYPE_ACCESS_TOKEN):
            raise InvalidRequest("only access tokens can be requested")

    def _audience_is_admin_api(self, form: Mapping[str, str]) -> None:
        """RFC 8693 §2.1, §2.2.2 `invalid_target`: audience/resource name the admin API, only."""
        targets = [v for k in ("audience", "resource") for v in _values(form, k)]
        if not targets:
            raise InvalidTarget(f"name the admin API ({self.admin_api_url}) as audience")
        wrong = [t for t in targets if t.rstrip("/") != self.admin_api_url]
        if wrong:
            raise InvalidTarget(f"tokens are issued only for the admin API "
                                f"{self.admin_api_url}, not {wrong[0]}")

    def _no_scope(self, form: Mapping[str, str]) -> None:
        """RFC 9396 §2: what the token is for is said by authorization_details, not scope; a
        scope here is one this grant does not know (RFC 6749 §5.2 `invalid_scope`)."""
        if form.get("scope"):
            raise InvalidScope("use authorization_details, not scope, to say what the "
                                 "token is for")

    # -- the subject: the user's access token (RFC 9068) ------------------------------------

    def _subject(self, token: str, ctx: dict[str, Any]) -> dict[str, Any]:
        """RFC 9068 §4: a JWT access token of this tenant (signature, issuer, typ, expiry, not
        revoked); the session is checked next, on its own."""
        try:
            subject = self.tokens.decode(token, typ=ACCESS_TOKEN_TYP, check_session=False,
                                         remember=True)
        except TokenInvalid as exc:
            raise InvalidGrant(f"subject_token: {exc}") from exc
        ctx.update(user=subject.get("email"), sid=subject["sid"])
        return subject

    def _subject_session_alive(self, subject: Mapping[str, Any]) -> None:
        """The user's IdP session is alive (not ended, revoked or lapsed): a grant whose
        session is over is `invalid_grant`, marked `session_ended` (iia.protocol)."""
        if not self.tokens.sessions.alive(subject["sid"]):
            raise SessionEndedGrant.because("subject_token: the token's session",
                                            self.tokens.sessions.get(subject["sid"]))

    def _subject_for_mcp_server(self, subject: Mapping[str, Any]) -> None:
        """RFC 9068 §4 audience: the subject token was issued for the MCP server."""
        if subject.get("aud") != self.mcp_resource:
            raise InvalidGrant("subject_token was not issued for the MCP server")

    def _subject_not_delegated(self, subject: Mapping[str, Any]) -> None:
        """RFC 8693 §4.1: the subject token carries no `act`; delegation chains are refused."""
        if "act" in subject:
            raise InvalidGrant("subject_token is itself delegated; chains are not allowed")

    def _subject_user_active(self, subject: Mapping[str, Any]) -> UserRecord:
        """The subject's user exists and is active in the directory, now."""
        user = self.directory.user_record(subject["sub"])
        if user is None or not user.active:
            raise InvalidGrant("the user of subject_token is not an active user")
        return user

    # -- the actor: the MCP server's JWT-SVID (SPIFFE JWT-SVID §4) --------------------------

    def _actor_trust_domain(self, token: str) -> str:
        """The trust domain the actor token's `sub` names (read before validation, to pick the
        bundle and to refuse a domain this tenant does not trust without fetching anything)."""
        try:
            sub = jwt.decode(token, options={"verify_signature": False}).get("sub", "")
            return trust_domain_of(str(sub))
        except (jwt.PyJWTError, SvidValidationError) as exc:
            raise InvalidGrant(f"actor_token is not a JWT-SVID: {exc}") from exc

    def _actor_trusted(self, domain: str) -> None:
        """The tenant's allow-list of trust domains whose workloads may act for users."""
        if domain not in self.trusted_domains:
            raise InvalidGrant(f"actor_token is from trust domain {domain!r}, which this tenant "
                               "does not trust")

    def _actor_svid(self, token: str) -> dict[str, Any]:
        """SPIFFE JWT-SVID §4 by py-spiffe: signature by a key of the trust domain's bundle,
        `exp`, `aud` contains this issuer; the bundle refreshed when the `kid` is new."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidGrant(f"actor_token is not a JWT-SVID: {exc}") from exc
        try:
            bundles = self.spiffe.bundles(kid)
        except JwksUnavailableError as exc:
            raise TemporarilyUnavailable("the SPIFFE trust bundle is unreachable; cannot "
                                         "validate the actor") from exc
        try:
            claims = validate_jwt_svid(token, bundles, self.issuer)
        except SvidValidationError as exc:
            raise InvalidGrant(f"actor_token: {exc}") from exc
        return claims

    def _actor_for_this_idp_only(self, actor_claims: Mapping[str, Any]) -> None:
        """The actor JWT-SVID's audience is this issuer alone: one that is also good elsewhere
        (Vault: `aud: vault`) is replayable there by whoever holds it, so it is refused."""
        aud = actor_claims["aud"]
        audiences = [aud] if isinstance(aud, str) else list(aud)
        if set(audiences) != {self.issuer}:
            others = ", ".join(repr(a) for a in audiences if a != self.issuer)
            raise InvalidGrant(f"actor_token is also valid for {others}: the JWT-SVID sent "
                               f"here must name {self.issuer} as its only audience")

    # -- delegation: may_act, and the tenant's record now -----------------------------------

    def _may_act_names_actor(self, subject: Mapping[str, Any], actor: str) -> None:
        """RFC 8693 §4.4: the subject token's `may_act` names this actor."""
        may_act = subject.get("may_act")
        if not isinstance(may_act, dict) or "sub" not in may_act:
            raise InvalidGrant("the user has not delegated to any agent (no may_act)")
        if may_act["sub"] != actor:
            raise InvalidGrant(f"the user's may_act does not name the actor {actor}")

    def _delegation_live(self, user: UserRecord, actor: str) -> None:
        """The token's may_act was true when it was issued; the tenant's record is true now
        (RFC 8693 §2.2.2 / RFC 6749 §5.2: a grant whose authority was revoked is invalid_grant).
        """
        if not self.directory.delegated(user) or self.directory.agent_spiffe_id != actor:
            raise InvalidGrant(f"{user.user_name} has withdrawn the delegation to {actor} at "
                               "the tenant; the may_act in the subject_token is no longer "
                               "honoured")

    # -- what exactly the token is for (RFC 9396), and the policy ---------------------------

    def _authorization_details(self, form: Mapping[str, str],
                               ctx: dict[str, Any]) -> tuple[dict[str, Any], RarType]:
        """RFC 9396 §2, §5: exactly one object (one token per operation), of a registered type,
        its fields, tier and locations as the registry says."""
        details = parse_authorization_details(form.get("authorization_details"))
        if len(details) != 1:
            raise InvalidAuthorizationDetails("send exactly one authorization_details object: "
                                              "one token per operation")
        obj = details[0]
        spec = self.registry.validate(obj, location=self.admin_api_url)
        ctx.update(rar_type=spec.name, tier=spec.tier, target=obj.get("target"))
        return obj, spec

    def _call_approval(self, subject: Mapping[str, Any], spec: RarType,
                       obj: Mapping[str, Any], ctx: dict[str, Any]) -> CallApproval | None:
        """Tier 3: the user's unused approval of exactly this object, in this session (found,
        not spent: the policy decides whether it counts)."""
        if spec.tier != 3:
            return None
        call_approval = self.approvals.find_call_approval(subject["sub"], subject["sid"], obj)
        if call_approval is not None:
            ctx["approval_id"] = call_approval.id
        return call_approval

    def _policy(self, subject: Mapping[str, Any], actor: str, obj: Mapping[str, Any],
                spec: RarType, call_approval: CallApproval | None) -> PolicyDecision:
        """The tenant's Cedar policy, with the approval state: a refusal is `access_denied`
        with the refusing policy's id and reason."""
        consent_age = self.approvals.session_consent_age(subject["sub"], subject["sid"])
        groups = self.directory.group_names_of(subject["sub"])
        decision = self.policy.evaluate(
            user_id=subject["sub"], user_email=subject.get("email", ""), groups=groups,
            rar_type=spec.name, context={
                "actor": actor, "tier": spec.tier, "target": str(obj.get("target", "")),
                "group": str(obj.get("group", "")),
                "approval": {"session_consent_age_s": -1 if consent_age is None
                             else int(consent_age),
                             "call_approved": call_approval is not None}})
        if not decision.allowed:
            why = decision.reason
            if decision.policy_id == "tier3-needs-call-approval":
                elsewhere = self.approvals.why_not_this_session(subject["sub"], subject["sid"],
                                                                obj)
                why = f"{why}: {elsewhere}" if elsewhere else why
            raise AccessDenied(f"{why} (policy {decision.policy_id})",
                               policy_id=decision.policy_id)
        return decision

    def _call_approval_single_use(self, call_approval: CallApproval | None) -> None:
        """A tier-3 approval serves one token exchange, once (spent here, atomically)."""
        if call_approval is not None and not self.approvals.consume(call_approval):
            raise AccessDenied("the approval for this call was already used "
                               "(policy tier3-needs-call-approval)",
                               policy_id="tier3-needs-call-approval")

    # -- the token (RFC 8693 §2.2.1) --------------------------------------------------------

    def _issue(self, client: Client, subject: dict[str, Any], actor: str,
               obj: dict[str, Any], decision: PolicyDecision,
               ctx: dict[str, Any]) -> JSONResponse:
        """Mint the on-behalf-of token (`act` = the actor, the exact object), record it."""
        token, claims = self.tokens.obo_token(subject, client_id=client.client_id, actor=actor,
                                              audience=self.admin_api_url,
                                              authorization_details=[obj])
        self.audit.record(Decision(
            kind="token_exchange", outcome="issued", reason=decision.reason,
            policy_id=decision.policy_id, jti=claims["jti"],
            details={"expires_in": claims["exp"] - claims["iat"]},
            **{k: v for k, v in ctx.items() if k in _DECISION_FIELDS}))
        return JSONResponse({
            "access_token": token, "issued_token_type": TOKEN_TYPE_ACCESS_TOKEN,
            "token_type": "Bearer", "expires_in": claims["exp"] - claims["iat"],
            "authorization_details": [obj],
        }, headers=NO_STORE)


_DECISION_FIELDS = {"user", "sid", "client_id", "actor", "rar_type", "tier", "target",
                    "approval_id"}


def _values(form: Mapping[str, Any], key: str) -> list[str]:
    getlist = getattr(form, "getlist", None)
    if getlist is not None:
        return [str(v) for v in getlist(key) if v]
    value = form.get(key)
    return [str(value)] if value else []
