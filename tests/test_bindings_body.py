"""Issue #12 item 3, "the body is the approval" (DESIGN.md §7): a write's authorization_details
object names every attribute its request will carry, the admin API refuses a body that carries
anything else, and the IdP checks that an object's `digest` is the digest of its own argument
fields (`iia.rar.details_digest`, the one canonical form).

Everything runs against the session lab over real HTTP: on-behalf-of tokens come from the
tenant's token exchange (with the user's session consent, answered on the phone), objects are
built by the product (`iia.rar.authorization_details` from the catalog), and each refusal is
checked on the wire (SCIM 403 body, `WWW-Authenticate: insufficient_scope`, OAuth
`invalid_authorization_details`) and for what must not have happened: the directory and its
memberships unchanged, the token spent, no token minted, no push created, the tenant's decision
record showing the refusal.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from harness.lab import Lab
from iia.catalog import CatalogContext, tool
from iia.identity import WorkloadIdentity
from iia.rar import argument_digest, authorization_details, details_digest
from tests.agent_helpers import group_id, mcp_call, phone, user_id
from tests.helpers import approve_next, bc_authorize, exchange, rar, sid_of, user_token

ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
NEW_USER = {"user_name": "bea.body@example.com", "given_name": "Bea", "family_name": "Body"}


# -- the world ----------------------------------------------------------------------------------

@dataclass
class Writer:
    """Alice in a fresh session that has her write consent (tier 2), and the MCP server's
    workload identity: what the MCP server holds when it exchanges for a write."""

    lab: Lab
    identity: WorkloadIdentity
    token: str

    def details(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The object the MCP server builds for this call."""
        return authorization_details(tool(name), arguments, self.lab.verify.admin_api_url)

    def obo(self, details: dict[str, Any]) -> str:
        response = exchange(self.lab, self.identity, self.token, details)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def send(self, method: str, path: str, obo: str, body: Any) -> httpx.Response:
        return httpx.request(method, self.lab.verify.admin_api_url + path, content=json.dumps(body),
                             headers={"Authorization": f"Bearer {obo}",
                                      "Content-Type": "application/scim+json"}, timeout=10)


@pytest.fixture
def writer(lab: Lab, identity: WorkloadIdentity) -> Writer:
    token = user_token(lab)["access_token"]
    consent = rar(lab, "agent_write_consent", session=sid_of(token), duration=1800)
    assert approve_next(lab, identity, "alice@example.com", consent).status_code == 200
    return Writer(lab, identity, token)


def directory(lab: Lab) -> list[str]:
    """Everything the tenant's directory stores (users, groups, memberships)."""
    return sorted(r.model_dump_json() for r in lab.verify.directory.storage.resources)


@contextlib.contextmanager
def nothing_changes(lab: Lab) -> Iterator[None]:
    before = directory(lab)
    yield
    assert directory(lab) == before


def refused_by_the_admin_api(lab: Lab, response: httpx.Response, *fragments: str) -> str:
    """A SCIM 403 (RFC 7644 §3.12; no scimType, like every coverage refusal) with an RFC 6750
    `insufficient_scope` challenge, recorded and audited as refused; returns the detail."""
    assert response.status_code == 403, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == "403", body
    assert "scimType" not in body, body
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    record = lab.verify.admin_api.requests[-1]
    assert (record.outcome, record.status, record.reason) == ("refused", 403, body["detail"])
    decision = lab.verify.audit.last("admin_api")
    assert decision is not None and decision.outcome == "refused"
    assert decision.reason == body["detail"] and decision.user == "alice@example.com"
    return str(body["detail"])


def spent(writer: Writer, method: str, path: str, obo: str, body: Any) -> None:
    """The refused request burned its token: the approved body itself is now refused (401)."""
    replay = writer.send(method, path, obo, body)
    assert replay.status_code == 401, replay.text
    assert replay.json()["detail"] == "token already used"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# -- create: the body carries exactly the attributes the object names -------------------------

Mutation = Callable[[dict[str, Any]], dict[str, Any]]
CREATE_CASES: dict[str, tuple[Mutation, str]] = {
    # what issue #12 measured on main: a create_user token created all of this
    "the measured attack": (lambda b: {**b, "displayName": "The CEO", "title": "Chief Executive",
                                       "active": False,
                                       "emails": [{"value": "mallory@attacker.example"}]},
                            "carries title, which the token's authorization_details do not name"),
    "an extra attribute": (lambda b: {**b, "nickName": "boss"}, "carries nickName, which"),
    "an extra sub-attribute": (lambda b: {**b, "name": {**b["name"], "middleName": "X"}},
                               "carries name.middleName, which"),
    "another displayName": (lambda b: {**b, "displayName": "The CEO"},
                            "sets displayName to another value than"),
    "deactivated": (lambda b: {**b, "active": False}, "sets active to another value than"),
    "active as 1, not true": (lambda b: {**b, "active": 1}, "sets active to another value"),
    "another e-mail": (lambda b: {**b, "emails": [{**b["emails"][0],
                                                   "value": "mallory@attacker.example"}]},
                       "sets emails[0].value to another value than"),
    "a second e-mail": (lambda b: {**b, "emails": [*b["emails"],
                                                   {"value": "mallory@attacker.example"}]},
                        "has 2 entries in emails, where the token's authorization_details name 1"),
    "an attribute left out": (lambda b: {k: v for k, v in b.items() if k != "displayName"},
                              "lacks displayName, which"),
}


@pytest.mark.parametrize("case", list(CREATE_CASES))
def test_create_refuses_an_attribute_or_value_the_object_does_not_name(
        lab: Lab, writer: Writer, case: str) -> None:
    mutate, fragment = CREATE_CASES[case]
    arguments = {**NEW_USER, "user_name": f"bea.{_slug(case)}@example.com"}
    approved = tool("create_user").request(arguments, CatalogContext()).json
    details = writer.details("create_user", arguments)
    assert details["attributes"] == approved  # the object names the whole body
    obo = writer.obo(details)
    with nothing_changes(lab):
        response = writer.send("POST", "/Users", obo, mutate(approved))
        detail = refused_by_the_admin_api(lab, response, fragment)
        assert detail.endswith("(verify_create_user) name, so nothing was created")
        spent(writer, "POST", "/Users", obo, approved)
    assert lab.verify.directory.user_by_username(arguments["user_name"]) is None


# -- PATCH: exactly the operation, the group and the member the object names -----------------

def _ops(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


ADD_CASES: dict[str, tuple[Callable[[str, str], dict[str, Any]], str]] = {
    "an extra operation": (lambda me, other: _ops(
        {"op": "add", "path": "members", "value": [{"value": me}]},
        {"op": "replace", "path": "displayName", "value": "Pwned"}),
        "one 'add' operation; the request has: add, replace"),
    "the same operation twice": (lambda me, other: _ops(
        *[{"op": "add", "path": "members", "value": [{"value": me}]}] * 2),
        "one 'add' operation; the request has: add, add"),
    "an operation on another path": (lambda me, other: _ops(
        {"op": "add", "path": "displayName", "value": "Pwned"}), "and nothing else"),
    "another member": (lambda me, other: _ops(
        {"op": "add", "path": "members", "value": [{"value": other}]}), "and nothing else"),
    "a second member": (lambda me, other: _ops(
        {"op": "add", "path": "members", "value": [{"value": me}, {"value": other}]}),
        "and nothing else"),
    # the same effect, in words the object does not name: refused on the object's words
    "a schema-qualified path": (lambda me, other: _ops(
        {"op": "add", "path": "urn:ietf:params:scim:schemas:core:2.0:Group:members",
         "value": [{"value": me}]}),
        "sets Operations[0].path to another value than the token's authorization_details name"),
    "a display name for the member": (lambda me, other: _ops(
        {"op": "add", "path": "members", "value": [{"value": me, "display": "Boss"}]}),
        "carries Operations[0].value[0].display, which"),
}


@pytest.mark.parametrize("case", list(ADD_CASES))
def test_add_member_refuses_an_operation_path_or_member_the_object_does_not_name(
        lab: Lab, writer: Writer, case: str) -> None:
    body, fragment = ADD_CASES[case]
    trent, bob = user_id(lab, "trent@example.com"), user_id(lab, "bob@example.com")
    finance = group_id(lab, "Finance")
    arguments = {"user_id": trent, "group_id": finance}
    details = writer.details("add_user_to_group", arguments)
    assert details["operations"] == [{"op": "add", "path": "members",
                                      "value": [{"value": trent}]}]
    obo = writer.obo(details)
    with nothing_changes(lab):
        response = writer.send("PATCH", f"/Groups/{finance}", obo, body(trent, bob))
        refused_by_the_admin_api(lab, response, fragment)
        spent(writer, "PATCH", f"/Groups/{finance}", obo,
              tool("add_user_to_group").request(arguments, CatalogContext()).json)
    assert finance not in {g.id for g in lab.verify.directory.groups_of(trent)}


REMOVE_CASES: dict[str, tuple[Callable[[str, str], dict[str, Any]], str]] = {
    "another member": (lambda me, other: _ops(
        {"op": "remove", "path": f'members[value eq "{other}"]'}), "removing the member"),
    "every member": (lambda me, other: _ops({"op": "remove", "path": "members"}),
                     "removing the member"),
    "an extra operation": (lambda me, other: _ops(
        {"op": "remove", "path": f'members[value eq "{me}"]'},
        {"op": "add", "path": "members", "value": [{"value": other}]}),
        "one 'remove' operation; the request has: remove, add"),
    "the same effect by another filter": (lambda me, other: _ops(
        {"op": "remove", "path": f'members[value eq "{me}" and value pr]'}),
        "sets Operations[0].path to another value than"),
}


@pytest.mark.parametrize("case", list(REMOVE_CASES))
def test_remove_member_refuses_an_operation_path_or_member_the_object_does_not_name(
        lab: Lab, writer: Writer, case: str) -> None:
    body, fragment = REMOVE_CASES[case]
    kevin, judy = user_id(lab, "kevin@example.com"), user_id(lab, "judy@example.com")
    finance = group_id(lab, "Finance")
    arguments = {"user_id": kevin, "group_id": finance}
    obo = writer.obo(writer.details("remove_user_from_group", arguments))
    with nothing_changes(lab):
        response = writer.send("PATCH", f"/Groups/{finance}", obo, body(kevin, judy))
        refused_by_the_admin_api(lab, response, fragment)
        spent(writer, "PATCH", f"/Groups/{finance}", obo,
              tool("remove_user_from_group").request(arguments, CatalogContext()).json)
    assert finance in {g.id for g in lab.verify.directory.groups_of(kevin)}


# -- the IdP: an object's digest is the digest of its own argument fields -----------------------

def _issued(lab: Lab) -> int:
    return sum(1 for d in lab.verify.audit.decisions("token_exchange") if d.outcome == "issued")


@pytest.mark.parametrize("case", ["a value changed after digesting", "another object's digest",
                                  "the old digest of {tool, arguments}"])
def test_exchange_refuses_an_object_whose_digest_is_not_its_own(
        lab: Lab, writer: Writer, case: str) -> None:
    arguments = {**NEW_USER, "user_name": f"bea.digest.{_slug(case)}@example.com"}
    good = writer.details("create_user", arguments)
    if case == "a value changed after digesting":
        forged = {**good, "attributes": {**good["attributes"], "title": "Chief Executive"}}
    elif case == "another object's digest":
        other = writer.details("create_user", {**arguments, "given_name": "Other"})
        forged = {**good, "digest": other["digest"]}
    else:  # what iia.rar hashed before issue #12, which nobody could check
        forged = {**good, "digest": argument_digest({"tool": "create_user",
                                                     "arguments": arguments})}
    issued, decisions = _issued(lab), len(lab.verify.audit.decisions("token_exchange"))
    with nothing_changes(lab):
        response = exchange(lab, writer.identity, writer.token, forged)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_authorization_details" and "access_token" not in body
    description = body["error_description"]
    assert description == (
        f"verify_create_user: digest does not match the object: its argument fields "
        f"(attributes, target) digest to {details_digest(forged)}, but the object says "
        f"{forged['digest']}")
    assert _issued(lab) == issued  # no token
    refusal = lab.verify.audit.decisions("token_exchange")[decisions:]
    assert [(d.outcome, d.error, d.reason, d.user) for d in refusal] == [
        ("denied", "invalid_authorization_details", description, "alice@example.com")]
    # the consent is untouched: the object as built is still exchanged
    assert exchange(lab, writer.identity, writer.token, good).status_code == 200


def test_bc_authorize_refuses_an_object_whose_digest_is_not_its_own(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """CIBA §7: a tier-3 push whose object's digest is another's is refused; no push is
    created, so nobody is asked to approve it."""
    nina = user_id(lab, "nina@example.com")
    good = authorization_details(tool("deactivate_user"), {"user_id": nina},
                                 lab.verify.admin_api_url)
    forged = {**good, "digest": details_digest({**good, "target": "someone-else"})}
    pending = len(lab.verify.approvals.all())
    response = bc_authorize(lab, identity, "alice@example.com", forged)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_authorization_details"
    assert "digest does not match the object" in response.json()["error_description"]
    assert len(lab.verify.approvals.all()) == pending
    assert lab.verify.directory.user(nina).active is True  # type: ignore[union-attr]


@pytest.mark.parametrize(("case", "fragment"), [
    ("attributes create another user", "target mismatch: attributes.userName must be"),
    ("attributes name userName twice", "attributes name userName, username more than once"),
    ("operations add another member", "operations must be exactly"),
    ("operations add a second operation", "operations must be exactly"),
])
def test_exchange_refuses_an_object_whose_body_fields_contradict_it(
        lab: Lab, writer: Writer, case: str, fragment: str) -> None:
    """The object's words must be one operation: its `attributes` create its `target`, its
    `operations` are the type's, for its `target` (digest recomputed, so only this rule can
    refuse it)."""
    if case.startswith("attributes"):
        obj = writer.details("create_user", {**NEW_USER, "user_name": "bea.x@example.com"})
        spelling = "username" if "twice" in case else "userName"  # SCIM: case-insensitive
        obj["attributes"] = {**obj["attributes"], spelling: "mallory@example.com"}
    else:
        bob, finance = user_id(lab, "bob@example.com"), group_id(lab, "Finance")
        obj = writer.details("add_user_to_group", {"user_id": bob, "group_id": finance})
        other = {"op": "add", "path": "members", "value": [{"value": "someone-else"}]}
        obj["operations"] = [other] if "another" in case else [*obj["operations"], other]
    obj["digest"] = details_digest(obj)
    issued = _issued(lab)
    with nothing_changes(lab):
        response = exchange(lab, writer.identity, writer.token, obj)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_authorization_details"
    assert fragment in response.json()["error_description"]
    assert _issued(lab) == issued
    assert lab.verify.audit.last("token_exchange").outcome == "denied"  # type: ignore[union-attr]


# -- the happy paths, end to end through the MCP tools -------------------------------------------

def _obo_details(lab: Lab, token: str) -> dict[str, Any]:
    """The authorization_details of the OBO token of this session's last tool call."""
    sid = sid_of(token)
    outcome = [o for s, o in lab.mcp.chain.history if s == sid][-1]
    assert outcome.obo_claims is not None
    (details,) = outcome.obo_claims["authorization_details"]
    return dict(details)


def test_the_write_tools_still_work_end_to_end(lab: Lab) -> None:
    """create_user, add_user_to_group, remove_user_from_group through the MCP server: each
    token names its whole body and the admin API accepts exactly that body."""
    token = user_token(lab)["access_token"]
    arguments = {"user_name": "bea.happy@example.com", "given_name": "Bea",
                 "family_name": "Happy", "title": "Auditor"}
    contractors = group_id(lab, "Contractors")
    with phone(lab) as answered:
        created = mcp_call(lab, token, "create_user", arguments)
        assert not created.is_error, created.text
        named = _obo_details(lab, token)
        user = lab.verify.directory.user_by_username("bea.happy@example.com")
        assert user is not None and user.id
        assert named["attributes"] == {
            "schemas": [USER_SCHEMA], "userName": "bea.happy@example.com", "active": True,
            "name": {"givenName": "Bea", "familyName": "Happy"}, "displayName": "Bea Happy",
            "emails": [{"value": "bea.happy@example.com", "type": "work", "primary": True}],
            "title": "Auditor"}
        assert named["digest"] == details_digest(named)
        assert (user.display_name, user.title, user.active) == ("Bea Happy", "Auditor", True)
        assert [e.value for e in user.emails or []] == ["bea.happy@example.com"]

        member = {"user_id": user.id, "group_id": contractors}
        added = mcp_call(lab, token, "add_user_to_group", member)
        assert not added.is_error, added.text
        assert _obo_details(lab, token)["operations"] == [
            {"op": "add", "path": "members", "value": [{"value": user.id}]}]
        assert contractors in {g.id for g in lab.verify.directory.groups_of(user.id)}

        removed = mcp_call(lab, token, "remove_user_from_group", member)
        assert not removed.is_error, removed.text
        assert _obo_details(lab, token)["operations"] == [
            {"op": "remove", "path": f'members[value eq "{user.id}"]'}]
        assert contractors not in {g.id for g in lab.verify.directory.groups_of(user.id)}
    assert len(answered.answered) == 1  # one session consent for the three writes
    mine = lab.verify.admin_api.requests[-3:]
    assert [(r.method, r.status, r.outcome, r.rar_type) for r in mine] == [
        ("POST", 201, "allowed", "verify_create_user"),
        ("PATCH", 204, "allowed", "verify_add_group_member"),
        ("PATCH", 204, "allowed", "verify_remove_group_member")]
