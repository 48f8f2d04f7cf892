"""The tool catalog (iia) and the IdP's registered RAR types (the tenant's configuration) agree:
every tool's type is registered with the same tier, actions and fields."""

from __future__ import annotations

import json

from harness.paths import fixtures_dir
from iia.catalog import CATALOG
from iia.rar import argument_digest, authorization_details


def test_every_tool_maps_to_a_registered_type_with_the_same_shape() -> None:
    registry = json.loads((fixtures_dir() / "policy" / "rar_types.json").read_text())["types"]
    example = {"user_id": "u1", "group_id": "g1", "user_name": "a@b.example", "given_name": "A",
               "family_name": "B", "application_id": "app",
               "policy_id": "policy-mfa"}
    for tool in CATALOG:
        spec = registry[tool.rar_type]
        assert spec["tier"] == tool.tier, tool.name
        assert tuple(spec["actions"]) == tool.actions, tool.name
        required = tool.input_schema.get("required", [])
        args = {k: example[k] for k in required}
        details = authorization_details(tool, args, "http://api/v2.0")
        assert set(details) - {"type", "actions", "locations", "tier", "summary", "digest"} \
            == set(spec["fields"]), tool.name


def test_tiers_match_the_design() -> None:
    tiers = {t.name: t.tier for t in CATALOG}
    assert tiers == {
        "list_users": 1, "get_user": 1, "list_groups": 1, "list_applications": 1,
        "get_application": 1, "list_access_policies": 1, "get_access_policy": 1,
        "create_user": 2,
        "add_user_to_group": 2, "remove_user_from_group": 2, "deactivate_user": 3,
        "revoke_user_sessions": 3, "delete_user": 4, "grant_admin_role": 4}
    assert {t.hitl for t in CATALOG if t.tier == 2} == {"session"}
    assert {t.hitl for t in CATALOG if t.tier in (1, 4)} == {"none"}


def test_the_digest_binds_the_exact_arguments() -> None:
    assert argument_digest({"a": 1, "b": 2}) == argument_digest({"b": 2, "a": 1})
    assert argument_digest({"a": 1}) != argument_digest({"a": 2})
