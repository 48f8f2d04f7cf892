"""The tenant's directory: users and groups (SCIM resources in scim2-server's storage, which the
admin API serves), applications, access policies, and who delegated to the agent.

Seeded from `fixtures/tenant/` at start. The storage is the single source of truth: the login
page, token claims and the admin API all read the same records, so a user the agent deactivates
cannot log in any more.

Lookups are exact at any size (no page, no cap) and do not walk the directory: by id is the
storage's dictionary; `userName eq` and `displayName eq` use scim2-server's own equality index
(the filter is bound to the resource's model so that the storage can use it); `groups_of` and a
page of an unfiltered, unsorted search use `DirectoryStorage`'s indexes, which every write keeps
in step. The token exchange's warm path reads what it needs of a user and of their groups
(`user_record`, `group_names_of`) under the storage's lock, without copying whole resources.
"""

from __future__ import annotations

import datetime
import json
from bisect import bisect_left, insort
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from scim2_models import (
    Group,
    Meta,
    Resource,
    ResourceType,
    SCIMException,
    ScimProvider,
    SearchRequest,
    User,
)
from scim2_server.memory import InMemoryStorage
from scim2_server.storage import SearchPage
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
    parametrize,
)

__all__ = ["Directory", "DirectoryStorage", "UserRecord"]


def _provider() -> ScimProvider:
    return ScimProvider.from_discovery(load_default_schemas().values(),
                                       load_default_resource_types().values(),
                                       config=load_default_service_provider_config())


class DirectoryStorage(InMemoryStorage):
    """scim2-server's in-memory storage plus two indexes, kept in step with every write: each
    resource type's ids in order, so that a page of an unfiltered, unsorted search by index
    costs the page, not the directory; and, for each member value, the groups that list it, so
    that `groups_naming` reads that member's groups only.

    Every write goes through `_store` (create, update, and the seeding `resources = ...`) and
    `_remove` (delete, and the old state an update or a re-seed replaces), which is where the
    indexes follow: private hooks of scim2-server 0.8 (pinned <0.9), so
    `tests/test_directory_scale.py` checks the indexes against a walk and runs scim2-server's
    storage contract on this class. Every other search is the parent's, which sorts and pages
    the same way: the order without `sortBy` is by id (RFC 7644 §3.4.2.3 leaves it to the
    service provider)."""

    def __init__(self, group_type: str = "Group") -> None:
        super().__init__()
        self._group_type = group_type
        self._ids: dict[str | None, list[str]] = {}
        self._member_of: dict[str, set[str]] = {}

    @property
    def resources(self) -> list[Resource[Any]]:
        """The stored resources."""
        return super().resources

    @resources.setter
    def resources(self, resources: list[Resource[Any]]) -> None:
        with self.lock:
            self._ids = {}
            self._member_of = {}
            setter = cast(property, InMemoryStorage.__dict__["resources"]).fset
            assert setter is not None
            setter(self, resources)

    def search(self, resource_types: list[ResourceType], search_request: SearchRequest[Any],
               *, position: Any = None) -> SearchPage:
        names = {rt.name for rt in resource_types}
        if len(names) != 1 or search_request.filter is not None or \
                search_request.sort_by is not None or search_request.cursor is not None:
            return super().search(resource_types, search_request, position=position)
        (name,) = names
        with self.lock:
            ids = self._ids.get(name, [])
            start = search_request.start_index_0 or 0
            stop = None if search_request.count is None else start + search_request.count
            stored = self._resources.get(name, {})
            return SearchPage(len(ids), [stored[i].model_copy(deep=True) for i in ids[start:stop]])

    def peek(self, type_name: str | None, resource_id: str) -> Resource[Any] | None:
        """The stored resource itself, not a copy: to read under `lock` (which the caller
        holds), never to change."""
        return self._resources.get(type_name, {}).get(resource_id)

    def groups_naming(self, member: str) -> list[str]:
        """The ids of the groups whose `members` hold this value, in id order."""
        with self.lock:
            return sorted(self._member_of.get(member, ()))

    def _store(self, resource: Resource[Any], values: dict[str, Any]) -> None:
        super()._store(resource, values)  # which `_remove`s the state it replaces first
        name, resource_id = _key(resource)
        insort(self._ids.setdefault(name, []), resource_id)
        if name == self._group_type:
            for value in _member_values(resource):
                self._member_of.setdefault(value, set()).add(resource_id)

    def _remove(self, key: tuple[str | None, str]) -> None:
        stored = self._resources.get(key[0], {}).get(key[1])
        if stored is not None:
            ids = self._ids.get(key[0], [])
            at = bisect_left(ids, key[1])
            if at < len(ids) and ids[at] == key[1]:
                del ids[at]
            if key[0] == self._group_type:
                for value in _member_values(stored):
                    groups = self._member_of.get(value)
                    if groups is not None:
                        groups.discard(key[1])
                        if not groups:
                            del self._member_of[value]
        super()._remove(key)


def _key(resource: Resource[Any]) -> tuple[str | None, str]:
    """The resource type and id a resource is stored under (as scim2-server's storage)."""
    if resource.meta is None or resource.id is None:
        raise ValueError("a stored resource has an id and meta.resourceType")
    return resource.meta.resource_type, resource.id


def _member_values(resource: Resource[Any]) -> set[str]:
    return {m.value for m in (getattr(resource, "members", None) or [])
            if getattr(m, "value", None) is not None}


@dataclass(frozen=True)
class UserRecord:
    """What the token exchange reads of a user, now: read from the storage, not a copy of
    the whole resource."""

    id: str
    user_name: str | None
    active: bool | None


class Directory:
    def __init__(self, fixtures: Path) -> None:
        tenant = fixtures / "tenant"
        self.provider = _provider()
        self.storage = DirectoryStorage()
        self.user_type: ResourceType = self._resource_type("User")
        self.group_type: ResourceType = self._resource_type("Group")
        now = datetime.datetime.now(datetime.UTC)
        resources: list[Resource[Any]] = []
        for endpoint, name, file in (("/Users", "User", "users.json"),
                                     ("/Groups", "Group", "groups.json")):
            model = self.provider.model_for_endpoint(endpoint)
            if model is None or not issubclass(model, Resource):
                raise ValueError(f"the SCIM provider serves no resource at {endpoint}")
            for raw in json.loads((tenant / file).read_text()):
                resource = model.model_validate(raw)
                resource.meta = Meta(resource_type=name, created=now, last_modified=now,
                                     version=self.storage.next_version())
                resources.append(resource)
        self.storage.resources = resources
        self.applications: list[dict[str, Any]] = json.loads(
            (tenant / "applications.json").read_text())
        self.access_policies: list[dict[str, Any]] = json.loads(
            (tenant / "access_policies.json").read_text())
        delegation = json.loads((tenant / "delegation.json").read_text())
        self.agent_spiffe_id: str = delegation["agent"]
        self._delegated = {e.lower() for e in delegation["delegated"]}
        admins = self.group_by_name("Tenant Administrators")
        if admins is None or admins.id is None:
            raise ValueError("fixtures/tenant/groups.json must hold 'Tenant Administrators'")
        self.admin_group_id: str = admins.id

    def _resource_type(self, name: str) -> ResourceType:
        return next(rt for rt in self.provider.resource_types if rt.name == name)

    # -- lookups (copies; the storage holds the truth) ---------------------------------------

    def _search(self, resource_type: ResourceType, scim_filter: str | None) -> list[Any]:
        """Every match, in id order: no count, so no page and no cap. Validated from the string,
        as a request body would be, against the resource type's model, which binds the filter
        to its attributes (so that scim2-server's storage can use its `eq` index)."""
        request: SearchRequest[Any] = parametrize(
            SearchRequest, self.provider.model_for(resource_type)).model_validate(
            {"filter": scim_filter})
        page = self.storage.search([resource_type], request)
        return list(page.resources)

    def users(self) -> list[User[Any]]:
        return sorted(self._search(self.user_type, None), key=lambda u: u.user_name or "")

    # The storage holds the provider's models, built from the discovery schemas: they carry
    # scim2_models.User's and Group's attributes but are not their subclasses, hence the casts.

    def user(self, user_id: str) -> User[Any] | None:
        try:
            return cast("User[Any]", self.storage.get(self.user_type, user_id))
        except SCIMException:
            return None

    def user_by_username(self, username: str) -> User[Any] | None:
        found = self._search(self.user_type, f'userName eq "{_quote(username)}"')
        return found[0] if found else None

    def group(self, group_id: str) -> Group | None:
        try:
            return cast(Group, self.storage.get(self.group_type, group_id))
        except SCIMException:
            return None

    def group_by_name(self, display_name: str) -> Group | None:
        found = self._search(self.group_type, f'displayName eq "{_quote(display_name)}"')
        return found[0] if found else None

    def groups_of(self, user_id: str) -> list[Group]:
        """The groups listing this id among their members, in id order."""
        with self.storage.lock:  # the index and the groups it names, read as one
            return [cast(Group, self.storage.get(self.group_type, group_id))
                    for group_id in self.storage.groups_naming(user_id)]

    def user_record(self, user_id: str) -> UserRecord | None:
        """The user's id, userName and active flag as stored now (None: no such user)."""
        with self.storage.lock:
            stored: Any = self.storage.peek(self.user_type.name, user_id)
            if stored is None:
                return None
            return UserRecord(id=user_id, user_name=stored.user_name, active=stored.active)

    def group_names_of(self, user_id: str) -> list[str]:
        """The displayNames of the groups listing this id among their members, in group id
        order ("" for a group without one): `groups_of` without copying the groups."""
        with self.storage.lock:
            names = []
            for group_id in self.storage.groups_naming(user_id):
                stored: Any = self.storage.peek(self.group_type.name, group_id)
                if stored is not None:
                    names.append(stored.display_name or "")
            return names

    def delegated(self, user: User[Any] | UserRecord) -> bool:
        """Has this user delegated to the agent (their tokens carry `may_act`)?"""
        return (user.user_name or "").lower() in self._delegated

    def set_delegated(self, user: User[Any], delegated: bool) -> bool:
        """A tenant admin grants or withdraws the user's delegation to the agent; True when
        that changed the record. Token exchange reads it live, at every exchange."""
        email = (user.user_name or "").lower()
        before = email in self._delegated
        if delegated:
            self._delegated.add(email)
        else:
            self._delegated.discard(email)
        return before != delegated

    def application(self, app_id: str) -> dict[str, Any] | None:
        return next((a for a in self.applications if a["id"] == app_id), None)

    def access_policy(self, policy_id: str) -> dict[str, Any] | None:
        return next((p for p in self.access_policies if p["id"] == policy_id), None)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
