"""Test-side clients of the simulated Verify: what the MCP server will do, spelled out with raw
HTTP so each test controls every parameter (and can get each one wrong)."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from harness.lab import Lab
from harness.verify.login import login
from iia.identity import WorkloadIdentity
from iia.protocol import CIBA_GRANT, TOKEN_EXCHANGE_GRANT, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT
from iia.rar import Registry, details_digest, fill
from iia.resource_server import Caller

CIBA = CIBA_GRANT  # tests that poll import it from here
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def named_body(registry: Registry, type_: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The body field a write's object names, filled from its registered type: a PATCH's
    `operations` the type's one value (its `target`, `group`), a create's `attributes` the
    smallest user (`schemas` and the type's `attributes_include`: `userName` = target). Empty
    for a type without a body, or when the body field is given."""
    spec = registry.type(type_)
    if spec.body_field is None or spec.body_field in fields:
        return {}
    values = {k: v for k, v in registry.values(fields).items() if v is not None}
    if spec.operations is not None:
        return {"operations": fill(spec.operations, values)}
    return {"attributes": {"schemas": [USER_SCHEMA],
                           **fill(dict(spec.attributes_include or {}), values)}}


def details(registry: Registry, type_: str, location: str, **fields: Any) -> dict[str, Any]:
    """A valid authorization_details object for the registered `type_` at the admin API
    `location` (fields: target, group, session, attributes, operations, summary...): the
    registry's tier and actions, a write's body field filled in unless given, the digest
    iia.rar's of its argument fields."""
    spec = registry.type(type_)
    summary = fields.pop("summary", None) or \
        f"{spec.description} {json.dumps(fields, sort_keys=True)}"
    fields.update(named_body(registry, type_, fields))
    obj: dict[str, Any] = {"type": type_, "actions": list(spec.actions), "locations": [location],
                           "tier": spec.tier, "summary": summary, **fields}
    obj["digest"] = details_digest(obj)
    return obj


def rar(lab: Lab, type_: str, **fields: Any) -> dict[str, Any]:
    """`details` for the lab's tenant: its registry, its admin API."""
    return details(lab.verify.registry, type_, lab.verify.admin_api_url, **fields)


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
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": subject_token, "subject_token_type": TOKEN_TYPE_ACCESS_TOKEN,
        "actor_token": (identity.svid(lab.verify.issuer).token if actor_token == "svid"
                        else actor_token),
        "actor_token_type": TOKEN_TYPE_JWT,
        "audience": lab.verify.admin_api_url,
        "authorization_details": details if isinstance(details, str) else json.dumps(details),
    }
    form.update(overrides)
    form = {k: v for k, v in form.items() if v is not None}
    return as_mcp_server(identity, f"{lab.verify.issuer}/token", form)


def bc_authorize(lab: Lab, identity: WorkloadIdentity, email: str, details: dict[str, Any],
                 binding: str = "Approve the agent's request", **overrides: Any) -> httpx.Response:
    form = {"scope": "openid", "login_hint": email, "binding_message": binding,
            "authorization_details": json.dumps([details]),
            # the MCP server's client is registered for CIBA ping mode (§7.1 requires it); the
            # tenant's callback for this push finds no request waiting at the MCP server
            "client_notification_token": secrets.token_urlsafe(32)}
    form.update(overrides)
    return as_mcp_server(identity, f"{lab.verify.issuer}/bc-authorize",
                         {k: v for k, v in form.items() if v is not None})


def poll(lab: Lab, identity: WorkloadIdentity, auth_req_id: str) -> httpx.Response:
    return as_mcp_server(identity, f"{lab.verify.issuer}/token",
                         {"grant_type": CIBA_GRANT, "auth_req_id": auth_req_id})


def approve_next(lab: Lab, identity: WorkloadIdentity, email: str, details: dict[str, Any],
                 approve: bool = True, session_token: str | None = None) -> httpx.Response:
    """Push, answer on the phone, and poll once: what a scripted phone does. With
    `session_token` (the user's access token) the push names its session as the MCP server's
    does (CIBA login_hint_token), which a tier-3 approval needs to serve that session."""
    hint: dict[str, Any] = ({"login_hint": None, "login_hint_token": session_token}
                            if session_token else {})
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


def wait_for(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    """`condition()`'s first truthy value, polled until `timeout` seconds pass (a bound on a
    busy machine, not an expectation: no test asserts a duration)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def idp_stream_paused(lab: Lab) -> Iterator[None]:
    """The MCP server's SSF stream at the IdP paused (SSF 1.0 §7.1.2: its SETs are held), so
    a session that ends at the IdP reaches the MCP server only at its next token exchange; the
    held SETs are delivered when the stream is enabled again."""
    stream = lab.mcp.idp_stream
    assert stream._management is not None
    status = f"{lab.verify.base_url}/v1.0/ssf/status"
    auth = {"Authorization": f"Bearer {stream._management[1]}"}
    assert httpx.post(status, json={"stream_id": stream.stream_id, "status": "paused"},
                      headers=auth).status_code == 200
    try:
        yield
    finally:
        assert httpx.post(status, json={"stream_id": stream.stream_id, "status": "enabled"},
                          headers=auth).status_code == 200
