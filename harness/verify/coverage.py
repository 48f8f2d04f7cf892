"""Does an on-behalf-of token cover exactly this admin-API request? (RFC 9396 at the resource
server.)

An OBO token from token exchange carries one `authorization_details` object (RFC 9396 §2) whose
registered type (`fixtures/policy/rar_types.json`) names the one request it covers: a method, a
path template relative to the admin API root (`{target}`, `{group}` from the object,
`{admin_group}` from the registry) and, for writes, a rule on the body. The resource server
checks the object again (RFC 9396 §2.2: its `locations` must name this API) and then that the
request is that one: same method, same path, and a body whose *effect* is the one described.

Bodies are judged twice. First by their effect, after scim2-server parses them (the same parser
that then serves the request), a PATCH by applying it to a copy of the stored resource and
comparing before and after, so a differential between two parsers (case-variant keys,
schema-qualified paths, value filters) cannot slip a second change past the check. Then, for a
write, against the object's words (docs/architecture.md §6, the body is the approval): the body must
be exactly what the object names, `attributes` for a POST, `operations` for a PATCH, compared as
JSON values in iia.rar's canonical form. An attribute, a value, an operation, a path or a member
the object does not name is refused (403), before anything is created or changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from scim2_models import PatchOperation, Resource, ResourceType
from scim2_server.conditions import Conditions
from scim2_server.service import ScimService

from harness.verify.admin_errors import NotCovered
from harness.verify.directory import Directory
from harness.verify.errors import InvalidAuthorizationDetails
from harness.verify.rar import RarRegistry
from iia.rar import PathSegmentError, RarType, canonical_json

__all__ = ["PATCH_OP", "Coverage", "Grant", "RequestLine"]

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@dataclass(frozen=True)
class RequestLine:
    """What the admin API was asked: method, path relative to the API root, body."""

    method: str
    path: str
    body: bytes = b""
    content_type: str | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Grant:
    """An `authorization_details` object the admin API accepted for one request."""

    rar: RarType
    details: Mapping[str, Any]
    path: str  # the path the object covers, its template filled in

    @property
    def target(self) -> str | None:
        return self.details.get("target")

    @property
    def group(self) -> str | None:
        return self.details.get("group")

    def describe(self) -> str:
        return f"{self.rar.method} {self.path}"


def _segments(path: str) -> list[str]:
    """Path segments as scim2-server's router splits them (`routing.match`)."""
    stripped = path.strip("/")
    return stripped.split("/") if stripped else []


def _dump(resource: Resource[Any], *drop: str) -> dict[str, Any]:
    data = resource.model_dump()
    for key in ("meta", *drop):
        data.pop(key, None)
    return data


class Coverage:
    """Decide whether one `authorization_details` object covers one request."""

    def __init__(self, *, registry: RarRegistry, directory: Directory, service: ScimService,
                 location: str) -> None:
        self.registry = registry
        self.directory = directory
        self.service = service
        self.location = location
        # what a type's body must do (its registered `effect`), judged by its effect
        self._body_rules: dict[str, Callable[[Grant, RequestLine], None]] = {
            "creates_target": self._creates_target,
            "adds_target": self._adds_target,
            "removes_target": self._removes_target,
            "deactivates_target": self._deactivates_target,
        }

    # -- the object ----------------------------------------------------------------------------

    def grant(self, authorization_details: Any, request: RequestLine) -> Grant:
        """The grant for `request`, or NotCovered (403) saying what the token covers instead.

        A malformed body raises the SCIM error scim2-server would answer (400, 415); a PATCH
        on a resource that does not exist raises 404.
        """
        details = self._single_object(authorization_details)
        try:
            rar = self.registry.validate(details, location=self.location)
        except InvalidAuthorizationDetails as exc:
            raise NotCovered(detail=f"the token's authorization_details are not valid here: "
                                    f"{exc.description}") from exc
        if rar.method is None or rar.path is None:
            raise NotCovered(detail=f"{rar.name} covers no admin-API request")
        refused = self.registry.refused_group(rar, details)
        if refused is not None:
            raise NotCovered(detail=refused)
        grant = Grant(rar=rar, details=details, path=self._fill(rar, details))
        if rar.method != request.method.upper() or \
                _segments(grant.path) != _segments(request.path):
            raise NotCovered(detail=f"this token covers {grant.describe()}; the request is "
                                    f"{request}")
        rule = self._body_rules.get(rar.effect) if rar.effect else None
        if rule is not None:
            with self.service.provider:
                rule(grant, request)
        self._body_is_named(grant, request)
        return grant

    @staticmethod
    def _single_object(authorization_details: Any) -> dict[str, Any]:
        if not isinstance(authorization_details, list) or len(authorization_details) != 1 \
                or not isinstance(authorization_details[0], dict):
            count = len(authorization_details) if isinstance(authorization_details, list) else 0
            raise NotCovered(detail="an admin-API token must carry exactly one "
                                    f"authorization_details object; this one carries {count}")
        return authorization_details[0]

    def _fill(self, rar: RarType, details: Mapping[str, Any]) -> str:
        """The path the object covers (`iia.rar.fill_path` of its type's template)."""
        try:
            return str(self.registry.resource_path(rar, details))
        except PathSegmentError as exc:
            raise NotCovered(detail=f"{rar.name}: {exc}") from exc

    # -- body rules --------------------------------------------------------------------------

    def _body_is_named(self, grant: Grant, request: RequestLine) -> None:
        """A write's body is exactly what its object names: `attributes` is the whole body
        (POST, PUT), `operations` the `Operations` of a PatchOp (RFC 7644 §3.5.2)."""
        field = grant.rar.body_field
        if field is None:
            return
        sent = self.service.decode_body(request.body, request.content_type)
        named: Any = grant.details[field] if field == "attributes" else {
            "schemas": [PATCH_OP], "Operations": grant.details[field]}
        difference = _difference(sent, named, "")
        if difference is not None:
            done = "created" if request.method.upper() == "POST" else "changed"
            raise NotCovered(detail=f"the request's body {difference}; this token covers only "
                                    f"the body its authorization_details ({grant.rar.name}) "
                                    f"name, so nothing was {done}")

    def _creates_target(self, grant: Grant, request: RequestLine) -> None:
        """`creates_target`: the body creates the user whose userName is `target`
        (RFC 7644 §3.3)."""
        user = self.service.read_creation(self.directory.user_type, request.body,
                                          request.content_type)
        if getattr(user, "user_name", None) != grant.target:
            raise NotCovered(detail=f"this token covers creating the user {grant.target!r}; "
                                    f"the request creates {getattr(user, 'user_name', None)!r}")

    def _patched(self, grant: Grant, request: RequestLine, resource_type: ResourceType,
                 resource_id: str, op: PatchOperation.Op) -> tuple[Resource[Any], Resource[Any]]:
        """Parse a PATCH (RFC 7644 §3.5.2), require one operation `op`, and return the stored
        resource before and after applying it to a copy."""
        patch = self.service.read_patch(resource_type, request.body, request.content_type)
        operations = list(patch.operations or [])
        if len(operations) != 1 or operations[0].op != op:
            found = ", ".join(str(o.op.value) for o in operations) or "none"
            raise NotCovered(detail=f"{grant.rar.name} covers a PATCH of one {op.value!r} "
                                    f"operation; the request has: {found}")
        before = self.directory.storage.get(resource_type, resource_id)
        after = self.directory.storage.get(resource_type, resource_id)
        self.service.apply_patch(after, patch, Conditions())
        return before, after

    def _adds_target(self, grant: Grant, request: RequestLine) -> None:
        """`adds_target`: the PATCH adds the member `target` to the group
        and changes nothing else."""
        before, after = self._patched(grant, request, self.directory.group_type,
                                      _segments(grant.path)[-1], PatchOperation.Op.add)
        added = _entries(after, grant.target)
        already = _entries(before, grant.target)
        if (_dump(after, "members") != _dump(before, "members")
                or _others(after, grant.target) != _others(before, grant.target)
                or len(added) != 1 or (already and added != already)
                or added[0].get("type") not in (None, "User")
                or not str(added[0].get("$ref", f"/Users/{grant.target}")).endswith(
                    f"/Users/{grant.target}")):
            raise NotCovered(detail=f"this token covers adding the member {grant.target!r} to "
                                    f"group {_segments(grant.path)[-1]!r} and nothing else; the "
                                    "request's PATCH does something else")

    def _removes_target(self, grant: Grant, request: RequestLine) -> None:
        """`removes_target`: `remove` with path `members[value eq "<target>"]`, which removes
        that member and changes nothing else (RFC 7644 §3.5.2.2)."""
        before, after = self._patched(grant, request, self.directory.group_type,
                                      _segments(grant.path)[-1], PatchOperation.Op.remove)
        if (_dump(after, "members") != _dump(before, "members")
                or _others(after, grant.target) != _others(before, grant.target)
                or any(m.value == grant.target for m in _members(after))):
            raise NotCovered(detail=f"this token covers removing the member {grant.target!r} "
                                    f"from group {_segments(grant.path)[-1]!r} and nothing "
                                    "else; the request's PATCH does something else")

    def _deactivates_target(self, grant: Grant, request: RequestLine) -> None:
        """`deactivates_target`: `replace` of `active` with false, nothing else
        (RFC 7644 §3.5.2.3)."""
        before, after = self._patched(grant, request, self.directory.user_type,
                                      str(grant.target), PatchOperation.Op.replace_)
        if getattr(after, "active", None) is not False or \
                _dump(after, "active") != _dump(before, "active"):
            raise NotCovered(detail=f"this token covers setting active to false on user "
                                    f"{grant.target!r} and nothing else; the request's PATCH "
                                    "does something else")


_UNNAMED = "the token's authorization_details"


def _same(sent: Any, named: Any) -> bool:
    """Equal as JSON values in the canonical form (`true` is not `1`, `1.0` is not `1`)."""
    try:
        return canonical_json(sent) == canonical_json(named)
    except (TypeError, ValueError):  # NaN, Infinity: never what an object names
        return False


def _at(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _difference(sent: Any, named: Any, where: str) -> str | None:
    """The first way the body `sent` differs from what the object `named`, as a phrase that
    names the attribute (never its value: a body may hold a secret), or None."""
    if isinstance(sent, dict) and isinstance(named, dict):
        extra = sorted(str(k) for k in set(sent) - set(named))
        if extra:
            return f"carries {_at(where, extra[0])}, which {_UNNAMED} do not name"
        missing = sorted(str(k) for k in set(named) - set(sent))
        if missing:
            return f"lacks {_at(where, missing[0])}, which {_UNNAMED} name"
        return next((d for key in sorted(named)
                     if (d := _difference(sent[key], named[key], _at(where, key)))), None)
    if isinstance(sent, list) and isinstance(named, list):
        if len(sent) != len(named):
            return (f"has {len(sent)} entries in {where or 'the body'}, where {_UNNAMED} name "
                    f"{len(named)}")
        return next((d for i, (one, other) in enumerate(zip(sent, named, strict=True))
                     if (d := _difference(one, other, f"{where}[{i}]"))), None)
    if _same(sent, named):
        return None
    return f"sets {where or 'the body'} to another value than {_UNNAMED} name"


def _members(group: Resource[Any]) -> list[Any]:
    """The members of a Group (its model is built from the served schema, so it is read by
    attribute, not by class)."""
    return list(getattr(group, "members", None) or [])


def _others(group: Resource[Any], target: str | None) -> list[dict[str, Any]]:
    """The member entries of everyone but `target`."""
    return [m.model_dump() for m in _members(group) if m.value != target]


def _entries(group: Resource[Any], target: str | None) -> list[dict[str, Any]]:
    """The member entries of `target` (an add must leave an existing one as it was)."""
    return [m.model_dump() for m in _members(group) if m.value == target]
