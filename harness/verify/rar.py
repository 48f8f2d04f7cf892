"""Rich Authorization Requests (RFC 9396) at the tenant: the registered `authorization_details`
types and their validation.

Types live in `fixtures/policy/rar_types.json`: for each, its tier, its allowed `actions`, its
type-specific fields and the one admin-API request it covers. Every object also carries the
common fields `type`, `actions`, `locations`, `tier`, `summary` and `digest`. An object is valid
when its type is registered, it has every field and no other, each field has its type, its
`actions` and `tier` are the registered ones (the client does not get to choose its tier), its
`target` and `group` are each one path segment, and its `locations` (RFC 9396 §2.2) are either the
admin API or exactly the resource the object covers (the type's path template filled with the
object's `target`, `group`): a location naming another resource is a target mismatch.

A write names its whole body (docs/architecture.md §6): `attributes`, a POST's exact body, must
hold the type's `attributes_include` values (`verify_create_user`: userName = `target`);
`operations` is the exact `Operations` of a PATCH, and must be the type's `operations` when the
type registers one (adding or removing exactly the member `target`, setting active to false).
Last, the `digest` must be `iia.rar.details_digest` of the object's own argument fields (every
field but the common ones), the one canonical form the MCP server uses too. Anything else is
`invalid_authorization_details`, with a description saying what does not match.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from harness.verify.errors import InvalidAuthorizationDetails
from iia.rar import (
    PathSegmentError,
    RarType,
    Registry,
    argument_fields,
    canonical_json,
    details_digest,
    fill,
)

__all__ = ["RarRegistry", "RarType", "parse_authorization_details"]  # RarType: iia.rar's

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_KIND_WORDS = {"string": "a non-empty string", "integer": "an integer",
               "array": "an array of strings", "object": "a JSON object",
               "objects": "a non-empty array of JSON objects"}
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str) and v != "",
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "array": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "object": lambda v: isinstance(v, dict),
    "objects": lambda v: isinstance(v, list) and v != [] and all(isinstance(i, dict) for i in v),
}


def parse_authorization_details(raw: str | None) -> list[Any]:
    """The form parameter is a JSON array (RFC 9396 §2)."""
    if raw is None or raw == "":
        raise InvalidAuthorizationDetails("authorization_details is required")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidAuthorizationDetails("authorization_details is not valid JSON") from exc
    if not isinstance(value, list) or not value:
        raise InvalidAuthorizationDetails("authorization_details must be a non-empty JSON array")
    return value


class RarRegistry(Registry):
    """The tenant's registered types (`iia.rar.Registry`, read from one file) and the IdP's
    validation of an object against them."""

    def validate(self, obj: Any, *, location: str, approval: bool = False) -> RarType:
        """Validate one authorization_details object; return its registered type."""
        if not isinstance(obj, dict):
            raise InvalidAuthorizationDetails("each authorization_details entry must be an object")
        name = obj.get("type")
        spec = self.types.get(name) if isinstance(name, str) else None
        if spec is None:
            raise InvalidAuthorizationDetails(f"authorization_details type {name!r} is not "
                                              "registered at this tenant")
        if spec.approval_only and not approval:
            raise InvalidAuthorizationDetails(f"{name} can be approved but never be a token")
        shape = {**self.common_fields, **spec.fields}
        unknown = sorted(set(obj) - set(shape))
        if unknown:
            raise InvalidAuthorizationDetails(f"{name}: unknown field(s) {', '.join(unknown)}")
        missing = sorted(set(shape) - set(obj))
        if missing:
            raise InvalidAuthorizationDetails(f"{name}: missing field(s) {', '.join(missing)}")
        for field, kind in shape.items():
            if not _CHECKS[kind](obj[field]):
                raise InvalidAuthorizationDetails(f"{name}: field {field!r} must be "
                                                  f"{_KIND_WORDS[kind]}")
        if tuple(obj["actions"]) != spec.actions:
            raise InvalidAuthorizationDetails(f"{name}: actions must be {list(spec.actions)}")
        if obj["tier"] != spec.tier:
            raise InvalidAuthorizationDetails(f"{name} is a tier {spec.tier} operation, not tier "
                                              f"{obj['tier']}")
        if not spec.approval_only:
            self._check_locations(spec, obj, location)
        self._check_body(spec, obj)
        if not _DIGEST.match(obj["digest"]):
            raise InvalidAuthorizationDetails(f"{name}: digest must be 'sha256:' and 64 hex "
                                              "digits")
        expected = details_digest(obj)
        if obj["digest"] != expected:
            fields = ", ".join(sorted(argument_fields(obj))) or "none"
            raise InvalidAuthorizationDetails(
                f"{name}: digest does not match the object: its argument fields ({fields}) "
                f"digest to {expected}, but the object says {obj['digest']}")
        return spec

    def _check_body(self, spec: RarType, obj: Mapping[str, Any]) -> None:
        """A write's body fields: `attributes` holds the type's required values and no
        attribute twice (SCIM names are case-insensitive, RFC 7643 §2.1); `operations` is the
        type's one registered value."""
        if spec.attributes_include is not None:
            attributes = obj["attributes"]
            names = [str(k).lower() for k in attributes]
            twice = sorted({k for k in attributes if names.count(str(k).lower()) > 1})
            if twice:
                raise InvalidAuthorizationDetails(
                    f"{spec.name}: attributes name {', '.join(twice)} more than once (SCIM "
                    "attribute names are case-insensitive)")
            for key, value in fill(spec.attributes_include, self.values(obj)).items():
                if key not in attributes or canonical_json(attributes[key]) != \
                        canonical_json(value):
                    raise InvalidAuthorizationDetails(
                        f"{spec.name}: target mismatch: attributes.{key} must be {value!r}, "
                        f"as the object's fields name it; it is {attributes.get(key)!r}")
        if spec.operations is not None:
            expected = fill(spec.operations, self.values(obj))
            if canonical_json(obj["operations"]) != canonical_json(expected):
                raise InvalidAuthorizationDetails(
                    f"{spec.name}: operations must be exactly {json.dumps(expected)} for "
                    f"target {obj.get('target')!r}; the object names "
                    f"{json.dumps(obj['operations'])}")

    def _covered_path(self, spec: RarType, obj: Mapping[str, Any]) -> str | None:
        """`resource_path`, a value that is not one path segment refused as invalid."""
        try:
            return self.resource_path(spec, obj)
        except PathSegmentError as exc:
            raise InvalidAuthorizationDetails(f"{spec.name}: {exc}") from exc

    def _check_locations(self, spec: RarType, obj: Mapping[str, Any], location: str) -> None:
        """RFC 9396 §2.2: `locations` is `[<the admin API>]` or `[<the resource covered>]`."""
        path = self._covered_path(spec, obj)
        resource = location + path if path is not None else None
        allowed = [location] if resource is None else [location, resource]
        locations = obj["locations"]
        if len(locations) == 1 and locations[0] in allowed:
            return
        named = locations[0] if len(locations) == 1 else None
        fields = [f for f in ("target", "group") if spec.path and "{" + f + "}" in spec.path]
        if named is not None and named.startswith(location + "/") and fields:
            which = ", ".join(f"{f} {obj[f]!r}" for f in fields)
            raise InvalidAuthorizationDetails(
                f"{spec.name}: target mismatch: locations name {named}, but the object's "
                f"{which} names {resource}")
        raise InvalidAuthorizationDetails(
            f"{spec.name}: locations must be [{location!r}]"
            + (f" or [{resource!r}]" if resource is not None else ""))
