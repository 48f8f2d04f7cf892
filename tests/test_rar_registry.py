"""iia.rar owns the RAR registry, the digest and the template fillers; everything else reads them.

Known-answer vectors pin the canonical digest (the IdP shares iia.rar's, so only fixed bytes can
tell a changed definition from the same one); the fillers refuse a value that is not one path
segment; the typed object and the catalog follow the registry file, never a copy of it.
"""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import pytest

import iia.catalog
from harness.paths import fixtures_dir
from iia.catalog import CATALOG, tool
from iia.errors import ConfigurationError
from iia.rar import (
    PathSegmentError,
    RarDetails,
    Registry,
    argument_digest,
    default_registry_path,
    details_digest,
    fill,
    fill_path,
    registry,
)

# -- the digest: fixed bytes, fixed hex ----------------------------------------------------------


def test_the_digest_of_known_fields_is_the_known_hex() -> None:
    """`{"target":"u1"}` (15 bytes), `{}`, and an object whose canonical form sorts keys at every
    level, keeps `é` as UTF-8 and `true` as `true`: SHA-256 of exactly those bytes."""
    assert argument_digest({"target": "u1"}) == \
        "sha256:4f89937a4df2a5b21d10fea10af53c26e597f4d2646a7b1728a53e139c501691"
    assert argument_digest({}) == \
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    assert argument_digest({"b": [1, True, {"c": None}], "a": "é"}) == \
        "sha256:b6d9a9a6bde519a5c0fc03f676a7714ea5589aa9c68c35ec438e89d5cfe8f00c"
    assert argument_digest({"b": [True, 1, {"c": None}], "a": "é"}) != \
        argument_digest({"b": [1, True, {"c": None}], "a": "é"})
    with pytest.raises(ValueError):
        argument_digest({"n": float("nan")})


def test_an_objects_digest_is_of_its_argument_fields_only() -> None:
    """The common fields the registry names (type, actions, locations, tier, summary, digest)
    are not digested; every other field is."""
    obj = {"type": "any", "actions": ["read"], "locations": ["http://api"], "tier": 1,
           "summary": "one", "digest": "sha256:x", "target": "u1"}
    assert details_digest(obj) == argument_digest({"target": "u1"})
    assert details_digest({**obj, "summary": "two", "tier": 3, "locations": []}) == \
        details_digest(obj)
    assert details_digest({**obj, "group": "g1"}) != details_digest(obj)
    assert set(registry().common_fields) == {"type", "actions", "locations", "tier", "summary",
                                             "digest"}


# -- the fillers -------------------------------------------------------------------------------


def test_a_path_template_is_filled_in_one_pass_from_one_segment_values() -> None:
    assert fill_path("/Groups/{group}", {"group": "g1", "target": "u1"}) == "/Groups/g1"
    assert fill_path("/Users/{target}/sessions", {"target": "a:b@c"}) == "/Users/a:b@c/sessions"
    # a value is never itself filled: a target named "{group}" stays that string
    assert fill_path("/Users/{target}", {"target": "{group}", "group": "g1"}) == \
        "/Users/{group}"
    assert fill_path("/Users", {}) == "/Users"


@pytest.mark.parametrize("value", ["", ".", "..", "a/b", "a?b", "a#b", None, 7])
def test_a_value_that_is_not_one_path_segment_is_refused(value: object) -> None:
    with pytest.raises(PathSegmentError) as caught:
        fill_path("/Groups/{group}/x", {"group": value})
    assert caught.value.name == "group" and caught.value.value == value
    assert str(caught.value) == f"group {value!r} is not one path segment"


def test_the_registry_resource_path_is_its_template_filled_from_the_object() -> None:
    rar = registry()
    assert rar.resource_path(rar.type("verify_add_group_member"),
                             {"target": "u1", "group": "g1"}) == "/Groups/g1"
    assert rar.resource_path(rar.type("verify_grant_admin_role"), {"target": "u1"}) == \
        f"/Groups/{rar.admin_group}"
    assert rar.resource_path(rar.type("agent_write_consent"), {"session": "s"}) is None
    with pytest.raises(PathSegmentError):
        rar.resource_path(rar.type("verify_read_user"), {"target": ".."})


def test_a_json_template_is_filled_and_an_unknown_placeholder_stays() -> None:
    template = {"op": "add", "value": [{"value": "{target}"}], "path": "{admin_group}",
                "n": 3, "keep": "{nobody}"}
    assert fill(template, {"target": "u1", "admin_group": "adm"}) == {
        "op": "add", "value": [{"value": "u1"}], "path": "adm", "n": 3, "keep": "{nobody}"}
    assert fill("{group}", {}) == "{group}"


def test_the_admin_group_is_refused_to_the_group_member_type_only() -> None:
    rar = registry()
    add = rar.type("verify_add_group_member")
    reason = rar.refused_group(add, {"target": "u1", "group": rar.admin_group})
    assert reason is not None and "Tenant Administrators" in reason
    assert rar.refused_group(add, {"target": "u1", "group": "g1"}) is None
    assert rar.refused_group(rar.type("verify_grant_admin_role"), {"target": "u1"}) is None


# -- one registry --------------------------------------------------------------------------------


def test_the_typed_object_names_exactly_the_registered_fields() -> None:
    """RarDetails (the TypedDict) and the registry file name the same fields: the common ones
    required, every type's own ones optional."""
    rar = registry()
    hints = typing.get_type_hints(RarDetails)
    own = {name for spec in rar.types.values() for name in spec.fields}
    assert set(RarDetails.__required_keys__) == set(rar.common_fields)
    assert set(RarDetails.__optional_keys__) == own
    assert set(hints) == set(rar.common_fields) | own


def test_the_registry_is_read_from_the_fixtures_directory(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    """The product and the tenant read the same file: `IIA_FIXTURES_DIR` moves both."""
    assert default_registry_path() == fixtures_dir() / "policy" / "rar_types.json"
    monkeypatch.setenv("IIA_FIXTURES_DIR", str(tmp_path))
    assert default_registry_path() == tmp_path / "policy" / "rar_types.json"
    monkeypatch.setenv("IIA_RAR_TYPES", str(tmp_path / "tenant.json"))
    assert default_registry_path() == tmp_path / "tenant.json"


def test_a_deployment_without_the_registry_is_told_what_to_set(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A product install carries no fixtures: without the file, a sentence naming the
    setting, not a bare FileNotFoundError at the first tool call."""
    monkeypatch.setenv("IIA_RAR_TYPES", str(tmp_path / "missing.json"))
    registry.cache_clear()
    try:
        with pytest.raises(ConfigurationError, match="set IIA_RAR_TYPES to the tenant's"):
            registry()
        shutil.copy(fixtures_dir() / "policy" / "rar_types.json", tmp_path / "missing.json")
        assert registry().path == tmp_path / "missing.json"
    finally:
        registry.cache_clear()


def test_the_catalog_takes_tier_and_actions_from_the_registry(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Change a type's tier and actions in a copy of the registry file: the tool follows."""
    copy = tmp_path / "rar_types.json"
    shutil.copy(default_registry_path(), copy)
    doc = json.loads(copy.read_text())
    doc["types"]["verify_read_user"].update(tier=3, actions=["inspect"])
    copy.write_text(json.dumps(doc))
    get_user = tool("get_user")
    assert (get_user.tier, get_user.actions, get_user.hitl) == (1, ("read",), "none")
    monkeypatch.setattr(iia.catalog, "registry", lambda: Registry(copy))
    assert (get_user.tier, get_user.actions, get_user.hitl) == (3, ("inspect",), "call")
    assert {t.rar_type for t in CATALOG} <= set(Registry(copy).types)
