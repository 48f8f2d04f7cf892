"""OAuth 2.0 Token Exchange (RFC 8693) with Rich Authorization Requests (RFC 9396), judged by
the tenant's Cedar policy.

    subject_token   the user's access token (RFC 9068), issued by this tenant for the MCP server
    actor_token     the MCP server's JWT-SVID (aud = this issuer), checked against the SPIFFE bundle
    authorization_details   exactly one object: this one operation
    audience/resource       the admin API

Checks, in order: the request's shape; the subject token (signature, issuer, expiry, audience,
session alive, not itself delegated); the actor token (JWT-SVID of a trusted trust domain); the
subject's `may_act` names the actor, and the tenant's delegation record says, now, that this user
still delegates to that actor (a withdrawn delegation stops the very next exchange, whatever the
token says); the authorization_details object (registered type, fields, tier, locations); then
the policy, with the approval state recorded by CIBA (a tier-3 approval counts only in the session
that asked for it). Only then is an on-behalf-of token minted: `act` = the SPIFFE ID, the exact
authorization_details, `sid`, `jti`.

Error codes: structural problems are `invalid_request`, an unacceptable subject or actor token
is `invalid_grant` (the tokens are the grant; a session that ended must read as a dead grant),
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
from harness.verify.approvals import Approvals
from harness.verify.audit import AuditTrail, Decision
from harness.verify.client_auth import Client
from harness.verify.directory import Directory
from harness.verify.errors import (
    NO_STORE,
    AccessDenied,
    InvalidAuthorizationDetails,
    InvalidGrant,
    InvalidRequest,
    InvalidTarget,
    OAuthError,
    UnauthorizedClient,
)
from harness.verify.policy import TokenExchangePolicy
from harness.verify.rar import RarRegistry, parse_authorization_details
from harness.verify.spiffe_bundle import SpiffeBundleSource
from harness.verify.tokens import TokenInvalid, TokenService
from iia.jwks import JwksUnavailableError

__all__ = ["ACCESS_TOKEN_TYPE", "JWT_TOKEN_TYPE", "TOKEN_EXCHANGE_GRANT", "TokenExchange"]

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105


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
        if TOKEN_EXCHANGE_GRANT not in client.grant_types:
            raise UnauthorizedClient(f"{client.client_id} may not use token exchange")
        # -- the request's shape (RFC 8693 §2.1)
        for name in ("subject_token", "subject_token_type"):
            if not form.get(name):
                raise InvalidRequest(f"{name} is required")
        if form["subject_token_type"] != ACCESS_TOKEN_TYPE:
            raise InvalidRequest("subject_token_type must be "
                                 "urn:ietf:params:oauth:token-type:access_token")
        if not form.get("actor_token"):
            raise InvalidRequest("actor_token is required: this tenant allows delegation, "
                                 "never impersonation")
        if form.get("actor_token_type") != JWT_TOKEN_TYPE:
            raise InvalidRequest("actor_token_type must be urn:ietf:params:oauth:token-type:jwt "
                                 "(a JWT-SVID)")
        requested = form.get("requested_token_type")
        if requested not in (None, "", ACCESS_TOKEN_TYPE):
            raise InvalidRequest("only access tokens can be requested")
        targets = [v for k in ("audience", "resource") for v in _values(form, k)]
        if not targets:
            raise InvalidTarget(f"name the admin API ({self.admin_api_url}) as audience")
        wrong = [t for t in targets if t.rstrip("/") != self.admin_api_url]
        if wrong:
            raise InvalidTarget(f"tokens are issued only for the admin API "
                                f"{self.admin_api_url}, not {wrong[0]}")
        if form.get("scope"):
            raise InvalidRequest("use authorization_details, not scope, to say what the "
                                 "token is for")

        # -- the subject: the user's access token
        try:
            subject = self.tokens.decode(form["subject_token"], typ="at+jwt")
        except TokenInvalid as exc:
            raise InvalidGrant(f"subject_token: {exc}") from exc
        ctx.update(user=subject.get("email"), sid=subject["sid"])
        if subject.get("aud") != self.mcp_resource:
            raise InvalidGrant("subject_token was not issued for the MCP server")
        if "act" in subject:
            raise InvalidGrant("subject_token is itself delegated; chains are not allowed")
        user = self.directory.user(subject["sub"])
        if user is None or not user.active:
            raise InvalidGrant("the user of subject_token is not an active user")

        # -- the actor: a JWT-SVID for this issuer from a trusted trust domain
        actor = self._actor(form["actor_token"])
        ctx["actor"] = actor
        may_act = subject.get("may_act")
        if not isinstance(may_act, dict) or "sub" not in may_act:
            raise InvalidGrant("the user has not delegated to any agent (no may_act)")
        if may_act["sub"] != actor:
            raise InvalidGrant(f"the user's may_act does not name the actor {actor}")
        # the token's may_act was true when it was issued; the tenant's record is true now
        # (RFC 8693 §2.2.2 / RFC 6749 §5.2: a grant whose authority was revoked is invalid_grant)
        if not self.directory.delegated(user) or self.directory.agent_spiffe_id != actor:
            raise InvalidGrant(f"{user.user_name} has withdrawn the delegation to {actor} at "
                               "the tenant; the may_act in the subject_token is no longer "
                               "honoured")

        # -- what exactly the token is for (RFC 9396)
        details = parse_authorization_details(form.get("authorization_details"))
        if len(details) != 1:
            raise InvalidAuthorizationDetails("send exactly one authorization_details object: "
                                              "one token per operation")
        obj = details[0]
        spec = self.registry.validate(obj, location=self.admin_api_url)
        ctx.update(rar_type=spec.name, tier=spec.tier, target=obj.get("target"))

        # -- the policy, with what the user approved
        consent_age = self.approvals.session_consent_age(subject["sub"], subject["sid"])
        call_approval = (self.approvals.find_call_approval(subject["sub"], subject["sid"], obj)
                         if spec.tier == 3 else None)
        if call_approval is not None:
            ctx["approval_id"] = call_approval.id
        groups = [g.display_name or "" for g in self.directory.groups_of(subject["sub"])]
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
        if call_approval is not None and not self.approvals.consume(call_approval):
            raise AccessDenied("the approval for this call was already used "
                               "(policy tier3-needs-call-approval)",
                               policy_id="tier3-needs-call-approval")

        token, claims = self.tokens.obo_token(subject, client_id=client.client_id, actor=actor,
                                              audience=self.admin_api_url,
                                              authorization_details=[obj])
        self.audit.record(Decision(
            kind="token_exchange", outcome="issued", reason=decision.reason,
            policy_id=decision.policy_id, jti=claims["jti"],
            details={"expires_in": claims["exp"] - claims["iat"]},
            **{k: v for k, v in ctx.items() if k in _DECISION_FIELDS}))
        return JSONResponse({
            "access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer", "expires_in": claims["exp"] - claims["iat"],
            "authorization_details": [obj],
        }, headers=NO_STORE)

    def _actor(self, token: str) -> str:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            sub = jwt.decode(token, options={"verify_signature": False}).get("sub", "")
            domain = trust_domain_of(str(sub))
        except (jwt.PyJWTError, SvidValidationError) as exc:
            raise InvalidGrant(f"actor_token is not a JWT-SVID: {exc}") from exc
        if domain not in self.trusted_domains:
            raise InvalidGrant(f"actor_token is from trust domain {domain!r}, which this tenant "
                               "does not trust")
        try:
            bundles = self.spiffe.bundles(kid)
        except JwksUnavailableError as exc:
            raise TemporarilyUnavailable("the SPIFFE trust bundle is unreachable; cannot "
                                         "validate the actor") from exc
        try:
            claims = validate_jwt_svid(token, bundles, self.issuer)
        except SvidValidationError as exc:
            raise InvalidGrant(f"actor_token: {exc}") from exc
        return str(claims["sub"])


_DECISION_FIELDS = {"user", "sid", "client_id", "actor", "rar_type", "tier", "target",
                    "approval_id"}


def _values(form: Mapping[str, Any], key: str) -> list[str]:
    getlist = getattr(form, "getlist", None)
    if getlist is not None:
        return [str(v) for v in getlist(key) if v]
    value = form.get(key)
    return [str(value)] if value else []
