"""Test-side clients of the simulated Verify: what the MCP server will do, spelled out with raw
HTTP so each test controls every parameter (and can get each one wrong)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx

from harness.lab import Lab
from harness.verify.login import login
from iia.catalog import CATALOG
from iia.identity import WorkloadIdentity
from iia.rar import argument_digest as digest  # noqa: F401 (the one definition, re-exported)
from iia.rar import body_fields, details_digest
from iia.resource_server import Caller

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
CIBA = "urn:openid:params:grant-type:ciba"

TIERS = {"verify_read_users": 1, "verify_read_user": 1, "verify_read_groups": 1,
         "verify_read_applications": 1, "verify_read_application": 1,
         "verify_read_access_policies": 1, "verify_read_access_policy": 1,
         "verify_create_user": 2,
         "verify_add_group_member": 2, "verify_remove_group_member": 2,
         "verify_deactivate_user": 3, "verify_revoke_user_sessions": 3,
         "verify_delete_user": 4, "verify_grant_admin_role": 4, "agent_write_consent": 2}
ACTIONS = {1: ["read"], "verify_create_user": ["create"], "verify_revoke_user_sessions": ["delete"],
           "verify_delete_user": ["delete"], "agent_write_consent": ["approve"]}


USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
_TOOLS = {t.rar_type: t for t in CATALOG}
_PATCHES = {"verify_add_group_member", "verify_remove_group_member", "verify_deactivate_user",
            "verify_grant_admin_role"}


def named_body(type_: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The body field a write's object names, as iia.rar builds it from the catalog: a PATCH's
    `operations` from `target`/`group`; `attributes` of a create default to the smallest user
    (`schemas`, `userName` = target). Empty for other types or when given."""
    if "attributes" in fields or "operations" in fields:
        return {}
    if type_ == "verify_create_user":
        return {"attributes": {"schemas": [USER_SCHEMA], "userName": fields.get("target")}}
    if type_ not in _PATCHES:
        return {}
    return body_fields(_TOOLS[type_], {"user_id": fields.get("target", ""),
                                       "group_id": fields.get("group", "")})


def rar(lab: Lab, type_: str, **fields: Any) -> dict[str, Any]:
    """A valid authorization_details object for `type_` (fields: target, group, session,
    attributes, operations...), its digest iia.rar's of its argument fields."""
    tier = TIERS[type_]
    actions = ACTIONS.get(type_) or ACTIONS.get(tier) or ["update"]
    summary = fields.pop("summary", None)
    fields.update(named_body(type_, fields))
    obj: dict[str, Any] = {"type": type_, "actions": actions,
                           "locations": [lab.verify.admin_api_url], "tier": tier,
                           "summary": summary or f"{type_} {fields}", **fields}
    obj["digest"] = details_digest(obj)
    return obj


def user_token(lab: Lab, email: str = "alice@example.com") -> dict[str, Any]:
    return login(lab.verify.issuer, email, resource=lab.mcp_url)


def as_mcp_server(identity: WorkloadIdentity, url: str, data: dict[str, Any]) -> httpx.Response:
    """POST with iia-mcp-server's client credential, read fresh from Vault (it rotates)."""
    cred = identity.credential()
    return httpx.post(url, data=data, auth=(cred.client_id, cred.client_secret), timeout=10)


def exchange(lab: Lab, identity: WorkloadIdentity, subject_token: str,
             details: list[dict[str, Any]] | dict[str, Any] | str, *,
             actor_token: str | None = "svid", **overrides: Any) -> httpx.Response:
    """`actor_token="svid"` (default) sends the workload's JWT-SVID; None sends none."""
    if isinstance(details, dict):
        details = [details]
    form: dict[str, Any] = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token": subject_token, "subject_token_type": ACCESS_TOKEN,
        "actor_token": (identity.svid(lab.verify.issuer).token if actor_token == "svid"
                        else actor_token),
        "actor_token_type": JWT,
        "audience": lab.verify.admin_api_url,
        "authorization_details": details if isinstance(details, str) else json.dumps(details),
    }
    form.update(overrides)
    form = {k: v for k, v in form.items() if v is not None}
    return as_mcp_server(identity, f"{lab.verify.issuer}/token", form)


def bc_authorize(lab: Lab, identity: WorkloadIdentity, email: str, details: dict[str, Any],
                 binding: str = "Approve the agent's request", **overrides: Any) -> httpx.Response:
    form = {"scope": "openid", "login_hint": email, "binding_message": binding,
            "authorization_details": json.dumps([details])}
    form.update(overrides)
    return as_mcp_server(identity, f"{lab.verify.issuer}/bc-authorize",
                         {k: v for k, v in form.items() if v is not None})


def poll(lab: Lab, identity: WorkloadIdentity, auth_req_id: str) -> httpx.Response:
    return as_mcp_server(identity, f"{lab.verify.issuer}/token",
                         {"grant_type": CIBA, "auth_req_id": auth_req_id})


def approve_next(lab: Lab, identity: WorkloadIdentity, email: str, details: dict[str, Any],
                 approve: bool = True, session_token: str | None = None) -> httpx.Response:
    """Push, answer on the phone, and poll once: what a scripted phone does. With
    `session_token` (the user's access token) the push names its session as the MCP server's
    does (CIBA login_hint_token), which a tier-3 approval needs to serve that session."""
    hint = ({"login_hint": None, "login_hint_token": session_token} if session_token
            else {})
    push = bc_authorize(lab, identity, email, details, **hint)
    assert push.status_code == 200, push.text
    pending = [p for p in lab.verify.approvals.pending(email)
               if p.authorization_details == [details]]
    assert pending, "the push did not reach the phone"
    lab.verify.ciba.answer(pending[-1].id, approve)
    return poll(lab, identity, push.json()["auth_req_id"])


def sid_of(token: str) -> str:
    import jwt

    return jwt.decode(token, options={"verify_signature": False})["sid"]


def caller_of(token: str) -> Caller:
    """The `Caller` the MCP server's resource server makes of a verified user token (for tests
    that drive `EnforcementChain.call` directly)."""
    import jwt

    claims = jwt.decode(token, options={"verify_signature": False})
    return Caller(token=token, sub=claims["sub"], email=claims["email"], sid=claims["sid"],
                  claims=claims)


@contextlib.contextmanager
def deactivated(lab: Lab, email: str) -> Iterator[None]:
    """The tenant deactivates `email` for the block (her tokens and sessions stay alive), then
    reactivates her, whatever happened."""
    directory = lab.verify.directory
    user = directory.user_by_username(email)
    assert user is not None and user.active
    user.active = False
    directory.storage.update(directory.user_type, user)
    try:
        yield
    finally:
        user = directory.user_by_username(email)
        assert user is not None
        user.active = True
        directory.storage.update(directory.user_type, user)
