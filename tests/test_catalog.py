"""The tool catalog (iia) and the IdP's registered RAR types (the tenant's configuration) agree:
every tool names a registered type, takes its tier and actions from it, fills exactly its fields
and makes the request it covers."""

from __future__ import annotations

from pathlib import Path

import pytest

from iia.catalog import (
    CATALOG,
    MARKDOWN_END,
    MARKDOWN_START,
    CatalogContext,
    Tool,
    markdown_table,
    replace_markdown_table,
)
from iia.rar import argument_digest, argument_fields, authorization_details, fill_path, registry

EXAMPLE = {"user_id": "u1", "group_id": "g1", "user_name": "a@b.example", "given_name": "A",
           "family_name": "B", "application_id": "app", "policy_id": "policy-mfa"}


def _args(tool: Tool) -> dict[str, str]:
    return {k: EXAMPLE[k] for k in tool.input_schema.get("required", [])}


def test_every_tool_maps_to_a_registered_type_with_the_same_shape() -> None:
    """Each tool's object carries its registered type's tier, actions and exactly its fields;
    every registered type a token can carry is some tool's."""
    for tool in CATALOG:
        spec = registry().type(tool.rar_type)
        assert not spec.approval_only, tool.name
        details = authorization_details(tool, _args(tool), "http://api/v2.0")
        assert (details["tier"], tuple(details["actions"])) == (spec.tier, spec.actions)
        assert set(argument_fields(details)) == set(spec.fields), tool.name
    tokens = {name for name, spec in registry().types.items() if not spec.approval_only}
    assert {t.rar_type for t in CATALOG} == tokens
    named = [spec.tool for spec in registry().types.values() if spec.tool is not None]
    assert sorted(named) == sorted(t.name for t in CATALOG)  # one type per tool, each once
    with pytest.raises(KeyError, match="no registered authorization_details type"):
        registry().for_tool("no_such_tool")


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
    rar = registry()
    context = CatalogContext(admin_group_id=rar.admin_group)
    for tool in CATALOG:
        spec, args = tool.rar, _args(tool)
        assert spec.path is not None, tool.name
        path = fill_path(spec.path, rar.values(tool.rar_fields(args)))
        request = tool.admin_request(args, context)
        assert (request.method, request.path) == (spec.method, path), tool.name


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
