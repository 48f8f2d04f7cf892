"""scim2-tester against the admin API's SCIM endpoints, through the real enforcement.

Every request scim2-tester sends gets, from `OboPerRequest`, the one OBO token token exchange
would mint for it: the registered RAR type of tier 1-3 whose method and path template match the
request (tier 4 is always denied by policy), its fields taken from the path and the body. A request
no such type covers gets a valid read token (`verify_read_users`), so the admin API's coverage
check, not a missing token, is what refuses it. The enforcement is not relaxed for the tester.

Checks that pass (their request is one the lab's catalog can make): ServiceProviderConfig (no
token, RFC 7643 §5) and its 405s; for User: create, read by id, list, `attributes` /
`excludedAttributes` on read and list, and PATCH `replace active false` (deactivation).

Checks refused by design, each asserted to fail because the admin API answered 403:

* `/ResourceTypes`, `/Schemas` (every check, including their 404 and 405 probes): scim2-server
  authenticates them (only `/ServiceProviderConfig` is public) and no RAR type covers them. The
  client is given the RFC 7643 core schemas instead of discovering them.
* `random_url`: a path no RAR type covers is refused (403) before routing (404).
* User `search_with_attributes`: `POST /.search` is not in the catalog.
* User `object_replacement`: PUT is not in the catalog.
* User `object_deletion`: `verify_delete_user` is tier 4 (policy never mints it).
* User PATCH add / remove / replace of any attribute other than `active` to false: the only user
  PATCH the catalog has is deactivation (tier 3).
* every Group check: each starts by creating a group, and no RAR type creates groups (the
  catalog reads groups and adds or removes one member; `test_admin_api.py` covers those).
"""

from __future__ import annotations

import json
import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_models import ScimProvider
from scim2_server.utils import load_default_resource_types, load_default_schemas
from scim2_tester import CheckResult, Status, check_server

from tests.admin_world import TIMEOUT, AdminWorld, served_admin_api

_MEMBER_FILTER = re.compile(r'^members\[value eq "([^"]+)"\]$')

PASSING = {
    (None, "service_provider_config_endpoint"),
    (None, "service_provider_config_endpoint_methods"),
    ("User", "object_creation"),
    ("User", "object_query"),
    ("User", "object_query_without_id"),
    ("User", "object_query_with_attributes"),
    ("User", "object_list_with_attributes"),
}
REFUSED = {
    (None, "query_all_resource_types"), (None, "access_invalid_resource_type"),
    (None, "resource_types_endpoint_methods"), (None, "query_all_schemas"),
    (None, "access_invalid_schema"), (None, "schemas_endpoint_methods"), (None, "random_url"),
    ("User", "search_with_attributes"), ("User", "object_replacement"),
    ("User", "object_deletion"), ("User", "check_add_attribute"),
    ("User", "check_remove_attribute"),
    *{("Group", title) for title in (
        "object_creation", "object_query", "object_query_without_id",
        "object_query_with_attributes", "object_list_with_attributes", "search_with_attributes",
        "object_replacement", "object_deletion", "check_add_attribute", "check_remove_attribute",
        "check_replace_attribute")},
}


class OboPerRequest(httpx2.Auth):
    """Mint, for each request, an OBO token whose authorization_details cover that request."""

    requires_request_body = True

    def __init__(self, world: AdminWorld) -> None:
        self.world = world
        self.minted: list[str] = []

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, Any, None]:
        path = request.url.path.removeprefix("/v2.0")
        if path != "/ServiceProviderConfig":
            details = self.details_for(request.method, path, request.content)
            self.minted.append(details["type"])
            request.headers["Authorization"] = "Bearer " + self.world.obo(details=[details])
        yield request

    def details_for(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        for name, spec in self.world.registry.types.items():
            if spec.method != method or spec.path is None or spec.tier > 3:
                continue
            fields = _match(spec.path, path)
            if fields is None or not self._fill(name, fields, body):
                continue
            return self.world.rar(name, **fields)
        return self.world.rar("verify_read_users")

    @staticmethod
    def _fill(name: str, fields: dict[str, str], body: bytes) -> bool:
        """Take the fields the path does not give from the body, as the MCP tool would know
        them; False when this type is not the one the body asks for."""
        payload = json.loads(body) if body else {}
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


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    with served_admin_api() as world:
        auth = OboPerRequest(world)
        provider = ScimProvider.from_discovery(load_default_schemas().values(),
                                               load_default_resource_types().values())
        with httpx2.Client(base_url=world.base_url, auth=auth, timeout=TIMEOUT) as http:
            results = check_server(SyncSCIMClient(http, provider=provider))
        yield Run(world, auth, results)


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
