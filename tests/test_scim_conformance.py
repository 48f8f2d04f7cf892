"""scim2-tester against the admin API's SCIM endpoints, through the real enforcement, twice.

Every request scim2-tester sends gets, from `OboPerRequest`, the one OBO token token exchange
would mint for it: a registered RAR type of tier 1-3 whose method and path template match the
request (tier 4 is always denied by policy), its fields taken from the path and the body. A request
no such type covers gets a valid read token (`verify_read_users`), so the admin API's coverage
check, not a missing token, is what refuses it. Discovery (`/ServiceProviderConfig`,
`/ResourceTypes`, `/Schemas`: schema metadata, no tenant data, RFC 7644 §4) needs no token and
gets none; scim2-tester discovers the server from it. The enforcement is never relaxed.

**The catalog run** uses the lab's registry (`fixtures/policy/rar_types.json`). Checks that pass:
discovery, and for User: create, read by id, list, `attributes` / `excludedAttributes` on read and
list, and PATCH `replace active false` (deactivation). Refused by design, each asserted to fail
because the admin API answered 403:

* `random_url`: a path no RAR type covers is refused (403) before routing (404).
* User `search_with_attributes`: `POST /.search` is not in the catalog.
* User `object_replacement`: PUT is not in the catalog.
* User `object_deletion`: `verify_delete_user` is tier 4 (policy never mints it).
* User PATCH add / remove / replace of any attribute other than `active` to false: the only user
  PATCH the catalog has is deactivation (tier 3).
* every Group check: each starts by creating a group, and no RAR type creates groups (the
  catalog reads groups and adds or removes one member; `test_admin_api.py` covers those).

**The conformance run** serves the same admin API with a test-only registry: the lab's types plus
`CONFORMANCE_TYPES`, one per SCIM operation scim2-tester makes (create, read, list, replace,
patch, delete of Users and Groups, and `POST /.search` at the root), so scim2-server's own SCIM
conformance is checked for Groups, PUT, DELETE, PATCH and search too. Each request still carries
a fresh single-use OBO token covering exactly its method and resource. Every check must pass but
those in `NOT_APPLICABLE`, each with the reason it cannot apply.
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import CheckResult, Status, check_server

from harness.paths import fixtures_dir
from harness.verify.admin_api import PUBLIC_PATHS
from tests.admin_world import TIMEOUT, AdminWorld, served_admin_api

_MEMBER_FILTER = re.compile(r'^members\[value eq "([^"]+)"\]$')

DISCOVERY = {
    (None, "service_provider_config_endpoint"), (None, "service_provider_config_endpoint_methods"),
    (None, "query_all_resource_types"), (None, "query_resource_type_by_id"),
    (None, "access_invalid_resource_type"), (None, "resource_types_endpoint_methods"),
    (None, "resource_types_schema_validation"), (None, "query_all_schemas"),
    (None, "access_schema_by_id"), (None, "access_invalid_schema"),
    (None, "schemas_endpoint_methods"),
}
PASSING = {
    *DISCOVERY,
    ("User", "object_creation"),
    ("User", "object_query"),
    ("User", "object_query_without_id"),
    ("User", "object_query_with_attributes"),
    ("User", "object_list_with_attributes"),
}
GROUP_CHECKS = {("Group", title) for title in (
    "object_creation", "object_query", "object_query_without_id", "object_query_with_attributes",
    "object_list_with_attributes", "search_with_attributes", "object_replacement",
    "object_deletion", "check_add_attribute", "check_remove_attribute",
    "check_replace_attribute")}
REFUSED = {
    (None, "random_url"),
    ("User", "search_with_attributes"), ("User", "object_replacement"),
    ("User", "object_deletion"), ("User", "check_add_attribute"),
    ("User", "check_remove_attribute"),
    *GROUP_CHECKS,
}

# The conformance run's extra RAR types (test only): name -> (tier, method, path template). A
# write names its body like the lab's types: `attributes` (POST, PUT), `operations` (PATCH).
CONFORMANCE_TYPES: dict[str, tuple[int, str, str]] = {
    **{f"scim_{verb}_{endpoint.lower()}": (tier, method, f"/{endpoint}{suffix}")
       for endpoint in ("Users", "Groups")
       for verb, tier, method, suffix in (
           ("list", 1, "GET", ""), ("create", 2, "POST", ""), ("read", 1, "GET", "/{target}"),
           ("replace", 2, "PUT", "/{target}"), ("patch", 2, "PATCH", "/{target}"),
           ("delete", 3, "DELETE", "/{target}"))},
    "scim_search_root": (1, "POST", "/.search"),
}
NOT_APPLICABLE = {
    (None, "random_url"): "GET /<random uuid> expects 404, but no RAR type can cover a path that "
                          "names no endpoint, and the admin API refuses a request its token does "
                          "not cover (403) before routing it: it says nothing about a path to a "
                          "caller not entitled to it (RFC 7644 §3.12 allows 403)",
}


class OboPerRequest(httpx2.Auth):
    """Mint, for each request, an OBO token whose authorization_details cover that request,
    from the registered types named in `types` (default: every type of tier 1-3), in order."""

    requires_request_body = True

    def __init__(self, world: AdminWorld, types: Sequence[str] | None = None) -> None:
        self.world = world
        self.types = list(types) if types is not None else [
            name for name, spec in world.registry.types.items() if spec.tier <= 3]
        self.minted: list[str] = []

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        path = request.url.path.removeprefix("/v2.0")
        if "/" + path.strip("/").split("/")[0] not in PUBLIC_PATHS:
            details = self.details_for(request.method, path, request.content)
            self.minted.append(details["type"])
            request.headers["Authorization"] = "Bearer " + self.world.obo(details=[details])
        yield request

    def details_for(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        for name in self.types:
            spec = self.world.registry.types[name]
            if spec.method != method or spec.path is None or spec.tier > 3:
                continue
            fields = _match(spec.path, path)
            if fields is None or not self._fill(name, fields, body):
                continue
            return self.world.rar(name, **fields)
        return self.world.rar("verify_read_users")

    def _fill(self, name: str, fields: dict[str, Any], body: bytes) -> bool:
        """Take the fields the path does not give from the body, as the MCP tool would know
        them: a write names its whole body (`attributes`, `operations`); False when this type
        is not the one the body asks for."""
        payload = json.loads(body) if body else {}
        body_field = self.world.registry.types[name].body_field
        if body_field == "attributes":
            fields["attributes"] = payload
        elif body_field == "operations":
            fields["operations"] = payload.get("Operations") if isinstance(payload, dict) else None
        if name == "verify_create_user":
            fields["target"] = str(payload.get("userName"))
        elif name in ("verify_add_group_member", "verify_remove_group_member"):
            op = (payload.get("Operations") or [{}])[0]
            if (op.get("op") == "add") != (name == "verify_add_group_member"):
                return False
            member = _MEMBER_FILTER.match(str(op.get("path")))
            value = op.get("value")
            fields["target"] = member.group(1) if member else str(
                value[0].get("value") if isinstance(value, list) and value else None)
        return True


def _match(template: str, path: str) -> dict[str, str] | None:
    """The placeholder values that make `template` equal to `path`, or None."""
    parts, segments = template.strip("/").split("/"), path.strip("/").split("/")
    if len(parts) != len(segments):
        return None
    fields = {}
    for part, segment in zip(parts, segments, strict=True):
        if part.startswith("{"):
            fields[part.strip("{}")] = segment
        elif part != segment:
            return None
    return fields


@dataclass
class Run:
    world: AdminWorld
    auth: OboPerRequest
    results: list[CheckResult]


def _check(world: AdminWorld, auth: OboPerRequest) -> Run:
    """scim2-tester discovers the server (public discovery) and runs every check."""
    with httpx2.Client(base_url=world.base_url, auth=auth, timeout=TIMEOUT) as http:
        return Run(world, auth, check_server(SyncSCIMClient(http)))


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    """The catalog run: the lab's own RAR registry."""
    with served_admin_api() as world:
        yield _check(world, OboPerRequest(world))


@pytest.fixture(scope="module")
def conformance_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    doc = json.loads((fixtures_dir() / "policy" / "rar_types.json").read_text())
    for name, (tier, method, path) in CONFORMANCE_TYPES.items():
        body = {"POST": {"attributes": "object"}, "PUT": {"attributes": "object"},
                "PATCH": {"operations": "objects"}}.get(method, {}) if tier > 1 else {}
        doc["types"][name] = {
            "tier": tier, "actions": ["read" if tier == 1 else "update"],
            "fields": {**({"target": "string"} if "{target}" in path else {}), **body},
            "request": {"method": method, "path": path},
            "description": f"scim2-tester: {method} {path}"}
    path = tmp_path_factory.mktemp("conformance") / "rar_types.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def full_run(conformance_registry: Path) -> Iterator[Run]:
    """The conformance run: every SCIM operation has a RAR type, so every check can run."""
    with served_admin_api(conformance_registry) as world:
        yield _check(world, OboPerRequest(world, types=list(CONFORMANCE_TYPES)))


def _key(result: CheckResult) -> tuple[str | None, str | None]:
    return result.resource_type, result.title


def test_every_check_is_accounted_for(run: Run) -> None:
    keys = {_key(r) for r in run.results}
    unexpected = keys - PASSING - REFUSED - {("User", "check_replace_attribute")}
    assert not unexpected, f"a check this test does not account for: {unexpected}"
    assert keys >= PASSING


def test_the_catalog_s_operations_pass(run: Run) -> None:
    failed = [r for r in run.results if _key(r) in PASSING and r.status != Status.SUCCESS]
    assert not failed, failed


def test_deactivation_is_the_one_user_patch_that_passes(run: Run) -> None:
    """PATCH replace on User: `active` to false passes; every other replacement is refused
    (scim2-tester draws the new `active` at random: true is refused, false passes)."""
    replaced = [r for r in run.results if _key(r) == ("User", "check_replace_attribute")]
    assert replaced
    for result in replaced:
        data = result.data or {}
        deactivates = data.get("urn") == "active" and (
            data.get("value", data.get("patch_value")) is False)
        assert (result.status == Status.SUCCESS) == deactivates, result


def test_checks_outside_the_catalog_are_refused_by_the_admin_api(run: Run) -> None:
    """Each failed its check because the admin API answered 403: the reason scim2-tester gives
    is the 403 status or the detail of one of the admin API's refusals."""
    details = {r.reason for r in run.world.api.requests if r.outcome == "refused"}
    for result in run.results:
        if _key(result) not in REFUSED:
            continue
        reason = result.reason or ""
        assert result.status == Status.ERROR, result
        assert "403" in reason or any(detail in reason for detail in details), result


def test_the_admin_api_refused_with_403_and_never_failed(run: Run) -> None:
    """Server side: every refusal was the coverage check (each token was valid and fresh),
    nothing answered 5xx, and some requests of every allowed kind went through."""
    records = run.world.api.requests
    assert records
    assert all(r.status < 500 for r in records), [r for r in records if r.status >= 500]
    refused = [r for r in records if r.outcome == "refused"]
    assert refused and all(r.status == 403 for r in refused), refused
    allowed = {r.rar_type for r in records if r.outcome == "allowed"}
    assert allowed >= {"verify_create_user", "verify_read_user", "verify_read_users"}


def test_discovery_is_public_and_passes(run: Run) -> None:
    """RFC 7644 §4: scim2-tester discovered the server without a token; every discovery check
    passed, and the admin API let those requests through as discovery, not on a token."""
    discovery = [r for r in run.results if _key(r) in DISCOVERY]
    assert {_key(r) for r in discovery} == DISCOVERY
    assert all(r.status == Status.SUCCESS for r in discovery), discovery
    public = [r for r in run.world.api.requests
              if r.path.strip("/").split("/")[0] in {"Schemas", "ResourceTypes"}]
    assert public and all(r.outcome == "allowed" and r.jti is None
                          and r.reason.endswith("(RFC 7644 §4)") for r in public), public


# -- the conformance run ------------------------------------------------------------------------

def test_conformance_every_check_passes(full_run: Run) -> None:
    """With a RAR type for every SCIM operation, scim2-server passes every scim2-tester check
    (Groups, PUT, DELETE, PATCH add/remove/replace, /.search, discovery) but NOT_APPLICABLE."""
    keys = {_key(r) for r in full_run.results}
    assert keys >= PASSING | GROUP_CHECKS | REFUSED
    failed = [r for r in full_run.results
              if _key(r) not in NOT_APPLICABLE and r.status != Status.SUCCESS]
    assert not failed, failed
    for key in NOT_APPLICABLE:
        outcomes = [r for r in full_run.results if _key(r) == key]
        assert outcomes and all(r.status == Status.ERROR and "403" in (r.reason or "")
                                for r in outcomes), outcomes


def test_conformance_run_kept_the_enforcement_on(full_run: Run) -> None:
    """Every non-discovery request carried its own single-use OBO token of one conformance
    type, which covered exactly that request; the only refusal is the random URL's 403."""
    records = full_run.world.api.requests
    tokened = [r for r in records if r.jti is not None]
    assert len({r.jti for r in tokened}) == len(tokened)  # one token per request
    assert all(r.status < 500 for r in records), [r for r in records if r.status >= 500]
    refused = [r for r in records if r.outcome == "refused"]
    assert len(refused) == 1 and refused[0].status == 403, refused
    assert refused[0].path.strip("/").count("/") == 0  # GET /<random uuid>
    allowed = [r for r in tokened if r.outcome == "allowed"]
    assert {r.rar_type for r in allowed} == set(CONFORMANCE_TYPES)
    assert len(allowed) + len(refused) == len(tokened) == len(full_run.auth.minted)


def test_conformance_types_cover_one_resource_only(full_run: Run) -> None:
    """The test-only types are enforced like the lab's: a token to delete one group cannot
    delete another, and changes nothing."""
    world = full_run.world
    ids = [world.group_id(name) for name in ("Engineering", "Sales")]
    before = world.snapshot()
    token = world.obo("scim_delete_groups", target=ids[0])
    with httpx.Client(base_url=world.base_url, timeout=TIMEOUT) as http:
        response = http.delete(f"/Groups/{ids[1]}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403, response.text
    assert f"this token covers DELETE /Groups/{ids[0]}" in response.json()["detail"]
    assert world.snapshot() == before
