"""RFC 9396 `authorization_details`: the registered types, read once, and the object for one call.

**The registry.** The lab's tenant registers its types in one file,
`fixtures/policy/rar_types.json`; `registry()` reads it (once) and everything reads it through
here: the tool catalog (each tool's tier and actions), the simulated IdP (`harness.verify.rar`
validates against it), the admin API's coverage check (`harness.verify.coverage` fills its path
templates) and the tests (they build objects from it). For each type: its tier, its `actions`,
its own fields and the one admin-API request it covers (a method, a path template, and for a
write the body it may send).

**The object.** One object describes exactly one operation (`RarDetails`): its registered
`type` and `actions`, the admin API in `locations` (§2.2), the tier, a one-line `summary` a
person can read on their phone, the type's own fields (its *argument fields*: `target`, `group`,
and for a write the body it will send) and a `digest` of those argument fields, so an approval or
a token for one call can never serve another.

A write names every attribute its request body carries: `create_user`'s object has
`attributes`, the SCIM resource exactly as `POST /Users` sends it (RFC 7643 §3, `schemas`
included); a PATCH's object (`add_user_to_group`, `remove_user_from_group`,
`deactivate_user`, `grant_admin_role`) has `operations`, the PatchOp's `Operations` exactly
(RFC 7644 §3.5.2: the operation, its path, its value). The admin API refuses a body that
carries anything else.

**Defined here once:** the digest (`argument_digest`, `details_digest`), the canonical JSON form
(`canonical_json`) and the template fillers (`fill` for JSON values, `fill_path` for a path such
as `/Users/{target}`); the simulated IdP, the admin API and the tests import them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

from iia.errors import ConfigurationError

if TYPE_CHECKING:
    from iia.catalog import Tool

__all__ = ["SESSION_CONSENT", "FieldKind", "PathSegmentError", "RarDetails", "RarType",
           "Registry", "argument_digest", "argument_fields", "authorization_details",
           "body_fields", "canonical_json", "default_registry_path", "details_digest", "fill",
           "fill_path", "one_segment", "registry", "session_consent_details", "wire"]

# The registered type of the tier-2 approval: the user's consent to agent writes in one session.
SESSION_CONSENT = "agent_write_consent"

FieldKind = Literal["string", "integer", "array", "object", "objects"]


class _RarCommon(TypedDict):
    type: str
    actions: list[str]
    locations: list[str]
    tier: int
    summary: str
    digest: str


class RarDetails(_RarCommon, total=False):
    """One `authorization_details` object (RFC 9396 §2) as this tenant registers them: the
    common fields (required), then the argument fields its type has (`RarType.fields`)."""

    target: str
    group: str
    attributes: dict[str, Any]
    operations: list[dict[str, Any]]
    session: str
    duration: int


@dataclass(frozen=True)
class RarType:
    """One registered type: what an object of it must look like and the request it covers."""

    name: str
    tier: int
    actions: tuple[str, ...]
    fields: Mapping[str, FieldKind]
    method: str | None
    path: str | None  # relative to the admin API root, with {target} {group} {admin_group}
    approval_only: bool
    description: str
    tool: str | None = None  # the MCP tool (iia.catalog) whose calls this type authorizes
    operations: Any = None  # the one `operations` value allowed (a template), if any
    attributes_include: Mapping[str, Any] | None = None  # values `attributes` must hold
    effect: str | None = None  # what the body must do, judged by the admin API
    refuse_group: str | None = None  # a group (template) this type may never name
    refuse_reason: str = ""

    @property
    def body_field(self) -> str | None:
        """The field naming the request's whole body: `attributes`, `operations`, or None."""
        return next((f for f in ("attributes", "operations") if f in self.fields), None)


class Registry:
    """The registered types, read from one JSON file (see `default_registry_path`)."""

    def __init__(self, path: Path) -> None:
        doc = json.loads(path.read_text())
        self.path = path
        self.common_fields: dict[str, FieldKind] = dict(doc["common_fields"])
        self.admin_group: str = doc["admin_group"]
        self.types: dict[str, RarType] = {}
        for name, spec in doc["types"].items():
            request = spec.get("request") or {}
            refuse = request.get("refuse_group") or {}
            self.types[name] = RarType(
                name=name, tier=int(spec["tier"]), actions=tuple(spec["actions"]),
                fields=dict(spec["fields"]), method=request.get("method"),
                path=request.get("path"), approval_only=bool(spec.get("approval_only")),
                description=spec.get("description", ""), tool=spec.get("tool"),
                operations=request.get("operations"),
                attributes_include=request.get("attributes_include"),
                effect=request.get("effect"), refuse_group=refuse.get("group"),
                refuse_reason=refuse.get("reason", ""))

    def supported_types(self) -> list[str]:
        return sorted(self.types)

    def type(self, name: str) -> RarType:
        """The registered type `name` (KeyError when the tenant registers none)."""
        return self.types[name]

    def for_tool(self, tool: str) -> RarType:
        """The registered type naming the MCP tool `tool` (KeyError when none does)."""
        for spec in self.types.values():
            if spec.tool == tool:
                return spec
        raise KeyError(f"no registered authorization_details type names the tool {tool!r}")

    def values(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """What the placeholders of a type's templates stand for in `obj`: `{target}` and
        `{group}` its fields, `{admin_group}` the tenant's administrators group."""
        return {"target": obj.get("target"), "group": obj.get("group"),
                "admin_group": self.admin_group}

    def resource_path(self, spec: RarType, obj: Mapping[str, Any]) -> str | None:
        """The path (relative to the admin API) of the one resource `obj` covers: the type's
        template filled from `obj` (`fill_path`: PathSegmentError when a value is not one path
        segment), or None for a type that covers no request."""
        return None if spec.path is None else fill_path(spec.path, self.values(obj))

    def refused_group(self, spec: RarType, obj: Mapping[str, Any]) -> str | None:
        """The sentence saying why `obj` may not name its group, or None when it may."""
        if spec.refuse_group is None:
            return None
        return spec.refuse_reason if obj.get("group") == fill(spec.refuse_group,
                                                              self.values(obj)) else None


def default_registry_path() -> Path:
    """`$IIA_RAR_TYPES` (the tenant's registered types, for a deployment), else
    `$IIA_FIXTURES_DIR/policy/rar_types.json`, else the checkout's
    `fixtures/policy/rar_types.json` (the fixtures the simulated tenant reads too)."""
    explicit = os.environ.get("IIA_RAR_TYPES")
    if explicit:
        return Path(explicit)
    fixtures = os.environ.get("IIA_FIXTURES_DIR")
    root = Path(fixtures) if fixtures else Path(__file__).resolve().parents[1] / "fixtures"
    return root / "policy" / "rar_types.json"


@functools.cache
def registry() -> Registry:
    """The registered types (read once from `default_registry_path()`); ConfigurationError
    when there is no such file."""
    path = default_registry_path()
    if not path.is_file():
        raise ConfigurationError(f"the registered authorization_details types are not at "
                                 f"{path}: set IIA_RAR_TYPES to the tenant's rar_types.json")
    return Registry(path)


# -- templates -------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(target|group|admin_group)\}")


def fill(template: Any, values: Mapping[str, Any]) -> Any:
    """`template` (JSON) with `{target}`, `{group}`, `{admin_group}` in its strings replaced
    by `values` (one pass: a value is never itself filled; a placeholder without a value
    stays)."""
    if isinstance(template, str):
        return _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), template)
    if isinstance(template, list):
        return [fill(item, values) for item in template]
    if isinstance(template, dict):
        return {key: fill(item, values) for key, item in template.items()}
    return template


class PathSegmentError(ValueError):
    """A value meant for a path template is not one path segment."""

    def __init__(self, name: str, value: Any) -> None:
        super().__init__(f"{name} {value!r} is not one path segment")
        self.name = name
        self.value = value


def one_segment(value: Any) -> bool:
    """A non-empty string that is not `.` or `..` and holds no `/`, `?` or `#` (RFC 3986 §3.3):
    filled into a path, it names exactly one resource."""
    return isinstance(value, str) and value not in ("", ".", "..") and \
        not any(c in value for c in "/?#")


def fill_path(template: str, values: Mapping[str, Any]) -> str:
    """A path template such as `/Groups/{group}` with each placeholder it names replaced by its
    value, in one pass; PathSegmentError when such a value is not `one_segment`."""
    def segment(match: re.Match[str]) -> str:
        value = values.get(match.group(1))
        if not one_segment(value):
            raise PathSegmentError(match.group(1), value)
        return cast(str, value)
    return _PLACEHOLDER.sub(segment, template)


# -- the object and its digest ---------------------------------------------------------------

def wire(details: Mapping[str, Any]) -> str:
    """The `authorization_details` form parameter for one object (a JSON array, RFC 9396 §2)."""
    return json.dumps([dict(details)])


def canonical_json(value: Any) -> bytes:
    """The one canonical form: UTF-8 JSON (RFC 8259), object keys sorted by code point at every
    level, no whitespace (separators `,` and `:`), non-ASCII characters as themselves (not
    `\\u` escapes), no NaN or Infinity. `true` and `1` stay distinct."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def argument_fields(details: Mapping[str, Any]) -> dict[str, Any]:
    """An object's argument fields: every field but the registry's common ones (`type`,
    `actions`, `locations`, `tier`, `summary`, `digest`)."""
    common = registry().common_fields
    return {k: v for k, v in details.items() if k not in common}


def argument_digest(fields: Mapping[str, Any]) -> str:
    """The digest of argument fields: `"sha256:"` followed by the 64 lowercase hex digits of
    SHA-256 over `canonical_json` of the JSON object of those fields (keys sorted, no
    whitespace, UTF-8). For example `{"target": "u1"}` digests the 15 bytes
    `{"target":"u1"}`; an object with no argument fields digests `{}`."""
    return "sha256:" + hashlib.sha256(canonical_json(dict(fields))).hexdigest()


def details_digest(details: Mapping[str, Any]) -> str:
    """What an authorization_details object's `digest` must be: `argument_digest` of its own
    argument fields (`argument_fields`). The IdP recomputes it at token exchange and CIBA."""
    return argument_digest(argument_fields(details))


def _details(spec: RarType, location: str, summary: str,
             fields: Mapping[str, Any]) -> RarDetails:
    obj = {"type": spec.name, "actions": list(spec.actions), "locations": [location],
           "tier": spec.tier, "summary": summary, "digest": argument_digest(fields), **fields}
    return cast(RarDetails, obj)


def body_fields(tool: Tool, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that name the body the tool's request sends: `attributes` (the whole body of
    a POST), `operations` (a PATCH's `Operations`), none for a request without a body. A body
    never depends on the tenant context (only a path does)."""
    request = tool.admin_request(arguments)
    if request.json is None:
        return {}
    if request.method == "PATCH":
        return {"operations": request.json["Operations"]}
    return {"attributes": request.json}


def authorization_details(tool: Tool, arguments: Mapping[str, Any],
                          admin_api_url: str, *, summary: str | None = None) -> RarDetails:
    """The object for one call of `tool`: its registered type's tier and actions, the fields
    the tool fills from `arguments`, the body it will send, and their digest. `summary` is the
    line a person reads (`iia.people.Names.summary`: people by name); by default the tool's
    summary of the bare arguments. It is not an argument field: the digest never covers it."""
    fields = {**tool.rar_fields(arguments), **body_fields(tool, arguments)}
    return _details(tool.rar, admin_api_url,
                    tool.summary(arguments) if summary is None else summary, fields)


def session_consent_details(session_id: str, duration: int, admin_api_url: str,
                            summary: str) -> RarDetails:
    """The tier-2 approval: the user lets the agent write in this session for `duration` s."""
    return _details(registry().type(SESSION_CONSENT), admin_api_url, summary,
                    {"session": session_id, "duration": duration})
