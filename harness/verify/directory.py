"""The tenant's directory: users and groups (SCIM resources in scim2-server's storage, which the
admin API serves), applications, access policies, and who delegated to the agent.

Seeded from `fixtures/tenant/` at start. The storage is the single source of truth: the login
page, token claims and the admin API all read the same records, so a user the agent deactivates
cannot log in any more.
"""

from __future__ import annotations

import datetime
import json
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
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

__all__ = ["Directory"]


def _provider() -> ScimProvider:
    return ScimProvider.from_discovery(load_default_schemas().values(),
                                       load_default_resource_types().values(),
                                       config=load_default_service_provider_config())


class Directory:
    def __init__(self, fixtures: Path) -> None:
        tenant = fixtures / "tenant"
        self.provider = _provider()
        self.storage = InMemoryStorage()
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
        # validated from the string, as a request body would be (binds the filter to the types)
        request: SearchRequest[Any] = SearchRequest.model_validate({"filter": scim_filter,
                                                                    "count": 1000})
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
        return [g for g in self._search(self.group_type, None)
                if any(m.value == user_id for m in (g.members or []))]

    def delegated(self, user: User[Any]) -> bool:
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
