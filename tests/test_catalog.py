"""The tool catalog (iia) and the IdP's registered RAR types (the tenant's configuration) agree:
every tool's type is registered with the same tier, actions and fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.paths import fixtures_dir
from iia.catalog import (
    CATALOG,
    MARKDOWN_END,
    MARKDOWN_START,
    CatalogContext,
    markdown_table,
    replace_markdown_table,
)
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


def test_each_tool_makes_the_request_its_registered_type_covers() -> None:
    """The tool's admin-API request is the method and path its RAR type's template names, filled
    from the same arguments (what the admin API's coverage check will compare)."""
    doc = json.loads((fixtures_dir() / "policy" / "rar_types.json").read_text())
    context = CatalogContext(admin_group_id=doc["admin_group"])
    args = {"user_id": "u1", "group_id": "g1", "user_name": "a@b.example", "given_name": "A",
            "family_name": "B", "application_id": "app", "policy_id": "policy-mfa"}
    for tool in CATALOG:
        spec = doc["types"][tool.rar_type]["request"]
        values = {**tool.rar_fields(args), "admin_group": doc["admin_group"]}
        path = spec["path"]
        for name, value in values.items():
            path = path.replace("{" + name + "}", value)
        request = tool.request(args, context)
        assert (request.method, request.path) == (spec["method"], path), tool.name


def test_readme_tool_table_is_the_catalog() -> None:
    """README.md's tool table is generated: `python -m iia.catalog --readme README.md`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert readme.count(MARKDOWN_START) == 1 and readme.count(MARKDOWN_END) == 1
    region = readme[readme.index(MARKDOWN_START) + len(MARKDOWN_START):
                    readme.index(MARKDOWN_END)]
    assert region == "\n" + markdown_table(), \
        "README's tool table is stale: run python -m iia.catalog --readme README.md"
    assert replace_markdown_table(readme) == readme


def test_the_markdown_table_has_one_row_per_tool() -> None:
    rows = markdown_table().splitlines()[2:]
    assert [row.split("|")[1].strip(" `") for row in rows] == [t.name for t in CATALOG]
    assert "| `get_access_policy` | 1 | `verify_read_access_policy` | " \
           "`GET /accesspolicies/{policy_id}` | Read access policy {policy_id} |" in rows
    assert "`PATCH /Groups/{admin_group}`" in markdown_table()
    with pytest.raises(ValueError, match="catalog:start"):
        replace_markdown_table("no markers here")
