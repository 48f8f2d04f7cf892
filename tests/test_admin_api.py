"""The Verify admin API (`harness.verify.admin_api`) over real HTTP on loopback: each catalog
operation goes through with the OBO token that covers it, and anything else is refused with a SCIM
error, changes nothing, and is audited."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness.keyset import RotatingKeySet
from harness.verify.tokens import TokenService
from tests.admin_world import (
    AGENT,
    ISSUER,
    TIMEOUT,
    AdminWorld,
    add_member,
    bearer,
    patch,
    served_admin_api,
)

ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
NO_PASSTHROUGH = ("no passthrough: the admin API accepts only on-behalf-of tokens from token "
                  "exchange")


@pytest.fixture(scope="module")
def world() -> Iterator[AdminWorld]:
    with served_admin_api() as served:
        yield served


@pytest.fixture
def http(world: AdminWorld) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world.base_url, timeout=TIMEOUT) as client:
        yield client



def scim_error(response: httpx.Response, status: int, *fragments: str) -> str:
    """Assert an RFC 7644 §3.12 error body with this status; return its detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status)
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return str(body["detail"])


@contextlib.contextmanager
def nothing_changes(world: AdminWorld) -> Iterator[None]:
    before = world.snapshot()
    yield
    assert world.snapshot() == before


# -- each catalog operation, with the token that covers it ------------------------------------

def test_list_users_with_a_filter_and_pagination(world: AdminWorld, http: httpx.Client) -> None:
    page = http.get("/Users", params={"filter": 'emails.value ew "@example.com"',
                                      "startIndex": 3, "count": 5, "sortBy": "userName"},
                    headers=bearer(world.obo("verify_read_users")))
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["totalResults"] >= 20 and body["startIndex"] == 3 and body["itemsPerPage"] == 5
    assert [u["userName"] for u in body["Resources"]] == [
        "carol@example.com", "dave@example.com", "erin@example.com", "eve@example.com",
        "frank@example.com"]
    assert all(u["meta"]["location"] == f"{world.base_url}/Users/{u['id']}"
               for u in body["Resources"])
    one = http.get("/Users", params={"filter": 'userName eq "bob@example.com"'},
                   headers=bearer(world.obo("verify_read_users")))
    assert [u["id"] for u in one.json()["Resources"]] == [world.user_id("bob@example.com")]


def test_get_user_with_locations_under_the_mount(world: AdminWorld, http: httpx.Client) -> None:
    bob = world.user_id("bob@example.com")
    response = http.get(f"/Users/{bob}", headers=bearer(world.obo("verify_read_user",
                                                                  target=bob)))
    assert response.status_code == 200, response.text
    user = response.json()
    assert user["userName"] == "bob@example.com"
    assert user["meta"]["location"] == f"{world.base_url}/Users/{bob}"
    assert response.headers["content-location"] == f"{world.base_url}/Users/{bob}"


def test_list_groups(world: AdminWorld, http: httpx.Client) -> None:
    response = http.get("/Groups", headers=bearer(world.obo("verify_read_groups")))
    assert response.status_code == 200, response.text
    names = {g["displayName"] for g in response.json()["Resources"]}
    assert {"Tenant Administrators", "Engineering", "Sales", "Finance"} <= names


def test_create_user(world: AdminWorld, http: httpx.Client) -> None:
    admins = world.directory.admin_group_id
    body = {"schemas": [USER], "userName": "zoe@example.com",
            "name": {"givenName": "Zoe", "familyName": "Zhou"},
            "groups": [{"value": admins}]}  # read-only: ignored
    response = http.post("/Users", json=body,
                         headers=bearer(world.obo("verify_create_user", target="zoe@example.com",
                                                  attributes=body)))
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"{world.base_url}/Users/{created['id']}"
    stored = world.directory.user_by_username("zoe@example.com")
    assert stored is not None and stored.id == created["id"]
    assert world.directory.groups_of(created["id"]) == []


def test_add_then_remove_a_group_member(world: AdminWorld, http: httpx.Client) -> None:
    carol, kevin = world.user_id("carol@example.com"), world.user_id("kevin@example.com")
    finance = world.group_id("Finance")

    def members() -> list[str]:
        group = world.directory.group(finance)
        return sorted(str(m.value) for m in (group.members or []))  # type: ignore[union-attr]

    before = members()
    added = http.patch(f"/Groups/{finance}", json=patch(add_member(carol)),
                       headers=bearer(world.obo("verify_add_group_member", target=carol,
                                                group=finance)))
    assert added.status_code == 204, added.text
    assert members() == sorted([*before, carol])
    # RFC 7644 §3.5.2.1: adding a member the group already has changes nothing
    again = http.patch(f"/Groups/{finance}", json=patch(add_member(kevin)),
                       headers=bearer(world.obo("verify_add_group_member", target=kevin,
                                                group=finance)))
    assert again.status_code == 204 and members() == sorted([*before, carol])
    removed = http.patch(f"/Groups/{finance}",
                         json=patch({"op": "remove", "path": f'members[value eq "{carol}"]'}),
                         headers=bearer(world.obo("verify_remove_group_member", target=carol,
                                                  group=finance)))
    assert removed.status_code == 204, removed.text
    assert members() == before


@pytest.mark.parametrize(("email", "operation"), [
    ("quentin@example.com", {"op": "replace", "path": "active", "value": False}),
])
def test_deactivate_user_ends_their_sessions(world: AdminWorld, http: httpx.Client, email: str,
                                             operation: dict[str, Any]) -> None:
    target = world.user_id(email)
    theirs = [world.login(email), world.login(email)]
    response = http.patch(f"/Users/{target}", json=patch(operation),
                          headers=bearer(world.obo("verify_deactivate_user", target=target)))
    assert response.status_code == 204, response.text
    assert world.directory.user(target).active is False  # type: ignore[union-attr]
    for session in theirs:
        ended = world.sessions.get(session.sid)
        assert ended is not None and not ended.alive and "deactivated" in str(ended.end_reason)
    assert world.audit.last("admin_api").details["sessions_ended"] == 2  # type: ignore[union-attr]


def test_revoke_user_sessions(world: AdminWorld, http: httpx.Client) -> None:
    judy = world.user_id("judy@example.com")
    theirs = [world.login("judy@example.com"), world.login("judy@example.com", "iia-mcp-server")]
    their_token = world.obo("verify_read_users", session=theirs[0])
    response = http.delete(f"/Users/{judy}/sessions",
                           headers=bearer(world.obo("verify_revoke_user_sessions", target=judy)))
    assert response.status_code == 204 and response.content == b""
    assert not any(world.sessions.alive(s.sid) for s in theirs)
    later = http.get("/Users", headers=bearer(their_token))
    scim_error(later, 401, "the token's session has ended (sessions revoked through the admin")


def test_applications_list_and_get(world: AdminWorld, http: httpx.Client) -> None:
    listed = http.get("/applications", headers=bearer(world.obo("verify_read_applications")))
    assert listed.status_code == 200 and listed.headers["content-type"] == "application/json"
    apps = listed.json()
    assert apps["totalCount"] == 5 and "config" not in apps["applications"][0]
    one = http.get("/applications/app-github",
                   headers=bearer(world.obo("verify_read_application", target="app-github")))
    assert one.status_code == 200
    assert one.json()["config"]["clientId"] == "github-enterprise"
    missing = http.get("/applications/app-nope",
                       headers=bearer(world.obo("verify_read_application", target="app-nope")))
    scim_error(missing, 404, "app-nope")


def test_access_policies_list(world: AdminWorld, http: httpx.Client) -> None:
    listed = http.get("/accesspolicies",
                      headers=bearer(world.obo("verify_read_access_policies")))
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["totalCount"] == 3
    assert {p["id"] for p in body["accessPolicies"]} == {
        "policy-default", "policy-mfa", "policy-agent-exchange"}


def test_access_policy_get_covers_exactly_one_policy(world: AdminWorld,
                                                     http: httpx.Client) -> None:
    """`verify_read_access_policy` (tier 1) covers `GET /accesspolicies/{target}` for its one
    target; the list's token does not cover a get, nor one policy's token another policy."""
    before = world.snapshot()
    refused = http.get("/accesspolicies/policy-mfa",
                       headers=bearer(world.obo("verify_read_access_policies")))
    scim_error(refused, 403, "this token covers GET /accesspolicies; the request is GET "
                             "/accesspolicies/policy-mfa")
    other = http.get("/accesspolicies/policy-default", headers=bearer(
        world.obo("verify_read_access_policy", target="policy-mfa")))
    scim_error(other, 403, "this token covers GET /accesspolicies/policy-mfa; the request is "
                           "GET /accesspolicies/policy-default")
    assert world.snapshot() == before
    one = http.get("/accesspolicies/policy-mfa", headers=bearer(
        world.obo("verify_read_access_policy", target="policy-mfa")))
    assert one.status_code == 200, one.text
    assert one.json()["rules"][0]["action"] == "MFA_PER_SESSION"
    missing = http.get("/accesspolicies/policy-nope", headers=bearer(
        world.obo("verify_read_access_policy", target="policy-nope")))
    scim_error(missing, 404, "policy-nope")


def test_discovery(world: AdminWorld, http: httpx.Client) -> None:
    """RFC 7644 §4: /ServiceProviderConfig, /ResourceTypes and /Schemas are schema metadata, no
    tenant data, and need no token; they are read-only (405), and the exemption covers one
    resource under each, nothing deeper."""
    config = http.get("/ServiceProviderConfig")
    assert config.status_code == 200
    body = config.json()
    assert [s["type"] for s in body["authenticationSchemes"]] == ["oauthbearertoken"]
    assert body["bulk"]["supported"] is False and body["patch"]["supported"] is True
    types = http.get("/ResourceTypes")
    assert types.status_code == 200, types.text
    assert {r["id"] for r in types.json()["Resources"]} == {"User", "Group"}
    assert http.get("/ResourceTypes/User").json()["endpoint"] == "/Users"
    schemas = http.get("/Schemas")
    assert schemas.status_code == 200, schemas.text
    user_schema = "urn:ietf:params:scim:schemas:core:2.0:User"
    assert user_schema in {s["id"] for s in schemas.json()["Resources"]}
    assert http.get(f"/Schemas/{user_schema}").json()["name"] == "User"
    scim_error(http.get("/Schemas/urn:nope"), 404)
    assert all(r.outcome == "allowed" and r.reason.endswith("(RFC 7644 §4)")
               for r in world.api.requests[-6:])
    with nothing_changes(world):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            scim_error(http.request(method, "/Schemas", json={}), 405)
            scim_error(http.request(method, "/ResourceTypes/User", json={}), 405)
    # deeper paths are not discovery: they need a token like everything else
    scim_error(http.get("/Schemas/a/b"), 401)
    scim_error(http.get("/ResourceTypes/User/x"), 401)


# -- refused: the token does not cover the request --------------------------------------------

def test_a_read_token_cannot_patch(world: AdminWorld, http: httpx.Client) -> None:
    bob = world.user_id("bob@example.com")
    with nothing_changes(world):
        response = http.patch(f"/Users/{bob}", json=patch(
            {"op": "replace", "path": "active", "value": False}),
            headers=bearer(world.obo("verify_read_users")))
    scim_error(response, 403, f"this token covers GET /Users; the request is PATCH /Users/{bob}")
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_a_token_to_create_x_cannot_create_y(world: AdminWorld, http: httpx.Client) -> None:
    token = world.obo("verify_create_user", target="xavier@example.com")
    with nothing_changes(world):
        other = http.post("/Users", json={"schemas": [USER], "userName": "yara@example.com"},
                          headers=bearer(token))
        # SCIM attribute names are case-insensitive: the last spelling is the one stored
        sneaky = http.post("/Users", json={"schemas": [USER], "userName": "xavier@example.com",
                                           "username": "yara@example.com"},  # a refusal burns:
                           headers=bearer(world.obo("verify_create_user",  # a new token
                                                    target="xavier@example.com")))
    scim_error(other, 403, "creating the user 'xavier@example.com'", "'yara@example.com'")
    scim_error(sneaky, 403, "'yara@example.com'")


def test_a_token_for_group_a_cannot_patch_group_b(world: AdminWorld,
                                                  http: httpx.Client) -> None:
    nina, sales, support = (world.user_id("nina@example.com"), world.group_id("Sales"),
                            world.group_id("Support"))
    with nothing_changes(world):
        response = http.patch(f"/Groups/{support}", json=patch(add_member(nina)),
                              headers=bearer(world.obo("verify_add_group_member", target=nina,
                                                       group=sales)))
    scim_error(response, 403, f"covers PATCH /Groups/{sales}; the request is PATCH "
                              f"/Groups/{support}")


@pytest.mark.parametrize(("body", "detail"), [
    (patch(add_member("NINA"), {"op": "replace", "path": "displayName", "value": "Pwned"}),
     "one 'add' operation; the request has: add, replace"),
    (patch({"op": "add", "value": {"members": [{"value": "NINA"}], "displayName": "Pwned"}}),
     "and nothing else"),
    (patch({"op": "add", "path": "members", "value": [{"value": "NINA"}, {"value": "OSCAR"}]}),
     "and nothing else"),
    (patch({"op": "replace", "path": "members", "value": [{"value": "NINA"}]}),
     "one 'add' operation; the request has: replace"),
    (patch({"op": "add", "path": "members",
            "value": [{"value": "NINA", "$ref": "http://127.0.0.1/v2.0/Users/OSCAR"}]}),
     "and nothing else"),
], ids=["and-rename", "no-path-and-rename", "two-members", "replace-all-members", "other-ref"])
def test_an_add_member_token_adds_that_member_and_nothing_else(
        world: AdminWorld, http: httpx.Client, body: dict[str, Any], detail: str) -> None:
    nina, oscar = world.user_id("nina@example.com"), world.user_id("oscar@example.com")
    support = world.group_id("Support")
    raw = json.dumps(body).replace("NINA", nina).replace("OSCAR", oscar)
    with nothing_changes(world):
        response = http.patch(f"/Groups/{support}", content=raw, headers={
            **bearer(world.obo("verify_add_group_member", target=nina, group=support)),
            "Content-Type": "application/scim+json"})
    scim_error(response, 403, detail)


def test_an_add_member_token_cannot_edit_an_existing_membership(world: AdminWorld,
                                                               http: httpx.Client) -> None:
    grace, support = world.user_id("grace@example.com"), world.group_id("Support")
    with nothing_changes(world):
        response = http.patch(f"/Groups/{support}", json=patch(
            {"op": "add", "path": f'members[value eq "{grace}"].display', "value": "Boss"}),
            headers=bearer(world.obo("verify_add_group_member", target=grace, group=support)))
    scim_error(response, 403, "and nothing else")


def test_adding_to_the_admin_group_needs_grant_admin_role(world: AdminWorld,
                                                          http: httpx.Client) -> None:
    """verify_add_group_member never reaches Tenant Administrators. verify_grant_admin_role
    does: the admin API checks coverage; refusing tier 4 is the IdP policy's job."""
    mike, admins = world.user_id("mike@example.com"), world.directory.admin_group_id
    with nothing_changes(world):
        refused = http.patch(f"/Groups/{admins}", json=patch(add_member(mike)),
                             headers=bearer(world.obo("verify_add_group_member", target=mike,
                                                      group=admins)))
    scim_error(refused, 403, "only verify_grant_admin_role can")
    granted = http.patch(f"/Groups/{admins}", json=patch(add_member(mike)),
                         headers=bearer(world.obo("verify_grant_admin_role", target=mike)))
    assert granted.status_code == 204, granted.text
    assert admins in {g.id for g in world.directory.groups_of(mike)}


def test_tier_4_is_the_policy_s_to_refuse(world: AdminWorld, http: httpx.Client) -> None:
    """The admin API checks coverage only: a verify_delete_user token (which the token-exchange
    policy never mints) deletes exactly its user, whose sessions end."""
    victor = world.user_id("victor@example.com")
    theirs = world.login("victor@example.com")
    bob = world.user_id("bob@example.com")
    with nothing_changes(world):
        other = http.delete(f"/Users/{bob}",
                            headers=bearer(world.obo("verify_delete_user", target=victor)))
    scim_error(other, 403, f"covers DELETE /Users/{victor}; the request is DELETE /Users/{bob}")
    deleted = http.delete(f"/Users/{victor}",
                          headers=bearer(world.obo("verify_delete_user", target=victor)))
    assert deleted.status_code == 204, deleted.text
    assert world.directory.user(victor) is None and not world.sessions.alive(theirs.sid)


@pytest.mark.parametrize("path", ["members", 'members[value eq "ERIN"]'],
                         ids=["every-member", "another-member"])
def test_a_remove_member_token_removes_only_that_member(world: AdminWorld, http: httpx.Client,
                                                        path: str) -> None:
    frank, erin = world.user_id("frank@example.com"), world.user_id("erin@example.com")
    sales = world.group_id("Sales")
    with nothing_changes(world):
        response = http.patch(f"/Groups/{sales}", json=patch(
            {"op": "remove", "path": path.replace("ERIN", erin)}),
            headers=bearer(world.obo("verify_remove_group_member", target=frank, group=sales)))
    scim_error(response, 403, f"removing the member '{frank}'")


@pytest.mark.parametrize(("operations", "detail"), [
    ([{"op": "replace", "path": "active", "value": True}], "setting active to false"),
    ([{"op": "replace", "path": "active", "value": False},
      {"op": "replace", "path": "displayName", "value": "Gone"}],
     "the request has: replace, replace"),
    ([{"op": "replace", "value": {"active": False, "title": "Gone"}}], "and nothing else"),
    ([{"op": "add", "path": "active", "value": False}], "the request has: add"),
    ([{"op": "replace", "path": "userName", "value": "peggy2@example.com"}],
     "setting active to false"),
    # the same effect, in words the object does not name (issue #12: the body is the approval)
    ([{"op": "replace", "value": {"active": False}}], "lacks Operations[0].path"),
], ids=["activate", "and-rename", "no-path-and-title", "add-op", "username", "no-path"])
def test_a_deactivate_token_sets_active_false_and_nothing_else(
        world: AdminWorld, http: httpx.Client, operations: list[dict[str, Any]],
        detail: str) -> None:
    peggy = world.user_id("peggy@example.com")
    theirs = world.login("peggy@example.com")
    with nothing_changes(world):
        response = http.patch(f"/Users/{peggy}", json=patch(*operations),
                              headers=bearer(world.obo("verify_deactivate_user", target=peggy)))
    scim_error(response, 403, detail)
    assert world.sessions.alive(theirs.sid)


def test_a_token_must_carry_exactly_one_object(world: AdminWorld, http: httpx.Client) -> None:
    two = [world.rar("verify_read_users"), world.rar("verify_read_groups")]
    with nothing_changes(world):
        for details in (two, []):
            scim_error(http.get("/Users", headers=bearer(world.obo(details=details))), 403,
                       "exactly one authorization_details object")


def test_locations_must_name_this_api(world: AdminWorld, http: httpx.Client) -> None:
    elsewhere = {**world.rar("verify_read_users"), "locations": ["https://other.example/v2.0"]}
    with nothing_changes(world):
        response = http.get("/Users", headers=bearer(world.obo(details=[elsewhere])))
    scim_error(response, 403, "locations must be")
    assert world.api.requests[-1].outcome == "refused"


def test_a_target_is_one_path_segment(world: AdminWorld, http: httpx.Client) -> None:
    """A read token whose target smuggles a second segment (`<id>/sessions`) does not cover
    `DELETE /Users/<id>/sessions`: refused, and judy's sessions are still alive."""
    judy = world.user_id("judy@example.com")
    theirs = [world.login("judy@example.com"), world.login("judy@example.com", "iia-mcp-server")]
    token = world.obo("verify_read_user", target=f"{judy}/sessions")
    with nothing_changes(world):
        response = http.delete(f"/Users/{judy}/sessions", headers=bearer(token))
    scim_error(response, 403, "is not one path segment")
    assert world.api.requests[-1].outcome == "refused"
    assert all(world.sessions.alive(s.sid) for s in theirs)


# -- refused: the token itself ------------------------------------------------------------------

def test_no_passthrough_of_the_user_s_own_token(world: AdminWorld, http: httpx.Client) -> None:
    session = world.login("alice@example.com")
    for audience in (world.base_url, "http://127.0.0.1:1/mcp"):
        token, _ = world.tokens.access_token(session, client_id="iia-ui", audience=audience,
                                             scope="openid", may_act=AGENT)
        with nothing_changes(world):
            response = http.get("/Users", headers=bearer(token))
        assert scim_error(response, 403) == NO_PASSTHROUGH


@pytest.mark.parametrize(("authorization", "error", "detail"), [
    (None, None, "needs an on-behalf-of token"),
    ("Basic YWxpY2U6c2VjcmV0", None, "needs an on-behalf-of token"),
    ("Bearer not-a-jwt", "invalid_token", "the token is not a JWT"),
    ("Bearer two tokens", "invalid_token", "is not 'Bearer <token>'"),
], ids=["missing", "basic", "garbage", "malformed"])
def test_missing_or_malformed_token(world: AdminWorld, http: httpx.Client,
                                    authorization: str | None, error: str | None,
                                    detail: str) -> None:
    """RFC 6750 §3: a request with no bearer token gets a challenge without an error code."""
    headers = {"Authorization": authorization} if authorization else {}
    with nothing_changes(world):
        response = http.get("/Users", headers=headers)
    scim_error(response, 401, detail)
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="verify"')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)


def test_expired_wrong_audience_and_foreign_tokens(world: AdminWorld,
                                                   http: httpx.Client) -> None:
    past = TokenService(ISSUER, world.keys, world.sessions, clock=lambda: time.time() - 3600)
    foreign = TokenService(ISSUER, RotatingKeySet(rotation_period=3600, retain=3600),
                           world.sessions)
    cases = {
        "the token has expired": world.obo("verify_read_users", tokens=past),
        "the token's audience is not": world.obo("verify_read_users",
                                                 audience="http://127.0.0.1:1/v2.0"),
        "not signed by a key of this tenant": world.obo("verify_read_users", tokens=foreign),
    }
    for detail, token in cases.items():
        with nothing_changes(world):
            response = http.get("/Users", headers=bearer(token))
        scim_error(response, 401, detail)
        assert response.headers["www-authenticate"].startswith(
            'Bearer realm="verify", error="invalid_token", error_description="')


def test_a_token_of_an_ended_session(world: AdminWorld, http: httpx.Client) -> None:
    session = world.login("alice@example.com")
    bob = world.user_id("bob@example.com")
    token = world.obo("verify_deactivate_user", session=session, target=bob)
    world.sessions.end(session.sid, "CAEP session-revoked")
    with nothing_changes(world):
        response = http.patch(f"/Users/{bob}", headers=bearer(token), json=patch(
            {"op": "replace", "path": "active", "value": False}))
    scim_error(response, 401, "the token's session has ended (CAEP session-revoked)")


# -- single use -----------------------------------------------------------------------------------

def test_a_token_performs_one_request(world: AdminWorld, http: httpx.Client) -> None:
    token = world.obo("verify_create_user", target="walt@example.com")
    body = {"schemas": [USER], "userName": "walt@example.com"}
    assert http.post("/Users", json=body, headers=bearer(token)).status_code == 201
    with nothing_changes(world):
        replay = http.post("/Users", json=body, headers=bearer(token))
    scim_error(replay, 401, "token already used")  # not 409: it never reached the directory


def test_a_refused_request_spends_the_token(world: AdminWorld, http: httpx.Client) -> None:
    """A request the token does not cover burns it: its holder gets one try, not a probe."""
    token = world.obo("verify_read_groups")
    scim_error(http.get("/Users", headers=bearer(token)), 403)
    scim_error(http.get("/Groups", headers=bearer(token)), 401, "token already used")


def test_concurrent_uses_of_one_token_succeed_once(world: AdminWorld) -> None:
    token = world.obo("verify_read_users")
    statuses: list[int] = []

    def use() -> None:
        with httpx.Client(base_url=world.base_url, timeout=TIMEOUT) as client:
            statuses.append(client.get("/Users", headers=bearer(token)).status_code)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert sorted(statuses) == [200] + [401] * 7


# -- records ----------------------------------------------------------------------------------

def test_every_decision_is_audited_and_recorded(world: AdminWorld, http: httpx.Client) -> None:
    seen, audited = len(world.api.requests), len(world.audit)
    carol = world.user_id("carol@example.com")
    http.get(f"/Users/{carol}", headers=bearer(world.obo("verify_read_user", target=carol)))
    http.patch(f"/Users/{carol}", json=patch({"op": "replace", "path": "active", "value": False}),
               headers=bearer(world.obo("verify_read_user", target=carol)))
    allowed, refused = world.audit.since(audited, "admin_api")
    assert (allowed.outcome, refused.outcome) == ("allowed", "refused")
    for decision in (allowed, refused):
        assert decision.user == "alice@example.com"  # the email, never the sub
        assert decision.actor == AGENT and decision.sid and decision.jti
        assert (decision.rar_type, decision.tier, decision.target) == ("verify_read_user", 1,
                                                                       carol)
    assert allowed.details == {"method": "GET", "path": f"/Users/{carol}", "status": 200}
    assert refused.details["status"] == 403 and "PATCH" in refused.reason
    records = world.api.requests[seen:]
    assert [(r.method, r.status, r.outcome, r.rar_type) for r in records] == [
        ("GET", 200, "allowed", "verify_read_user"),
        ("PATCH", 403, "refused", "verify_read_user")]
    assert records[0].path == f"/Users/{carol}" and records[0].user == "alice@example.com"
