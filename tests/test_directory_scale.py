"""The simulated directory at 10,000 users (issue #15): every lookup is exact, with no silent cap
(it used to ask scim2-server for 1,000 results and miss the rest), in process (the `Directory`)
and over HTTP through the admin API; a page is a page of the whole directory, its totalResults
the whole count. `DirectoryStorage` keeps its indexes in step with creates, updates, deletes and
a re-seed, answers the pages scim2-server's own storage answers, and follows scim2-server's
storage contract. Outcomes only: what the lookups cost is `bench/directory_scale.py`'s figure."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from scim2_models import Resource, SearchRequest
from scim2_server.memory import InMemoryStorage
from scim2_server.testing import ScimStorageContract

from harness.paths import fixtures_dir
from harness.verify.directory import Directory, DirectoryStorage
from tests.admin_world import (
    TIMEOUT,
    AdminWorld,
    add_member,
    bearer,
    patch,
    served_admin_api,
)

SIZE = 10_000
GROUPS = 1_200  # more groups than the old 1,000-result page, too
LATE = "late.user@scale.example"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"



def remove_member(user_id: str) -> dict[str, Any]:
    return {"op": "remove", "path": f'members[value eq "{user_id}"]'}


def user_count(directory: Directory) -> int:
    return sum(1 for r in directory.storage.resources
               if r.meta is not None and r.meta.resource_type == "User")


def model(directory: Directory, endpoint: str) -> type[Resource[Any]]:
    found = directory.provider.model_for_endpoint(endpoint)
    assert found is not None and issubclass(found, Resource), endpoint
    return found


def grow(directory: Directory, users: int, groups: int) -> None:
    """Through the storage's write path (`create`), up to `users` users, then `groups` more
    groups."""
    user_model, group_model = model(directory, "/Users"), model(directory, "/Groups")
    for i in range(user_count(directory), users):
        name = f"user{i:05d}@scale.example"
        directory.storage.create(directory.user_type, user_model.model_validate({
            "schemas": [USER], "userName": name, "displayName": f"User {i}",
            "emails": [{"value": name, "primary": True}], "active": True}))
    for i in range(groups):
        directory.storage.create(directory.group_type, group_model.model_validate({
            "schemas": [GROUP], "displayName": f"Scale group {i:04d}"}))


@dataclass
class Scale:
    world: AdminWorld
    http: httpx.Client
    late_id: str  # the 10,000th user, created last, over HTTP
    late_group: str  # the last group created
    finance: str

    @property
    def directory(self) -> Directory:
        return self.world.directory


@pytest.fixture(scope="module")
def scale() -> Iterator[Scale]:
    """A served admin API over 9,999 users and 1,206 groups; then the 10,000th user is created
    through the admin API and added to the last group created and to Finance."""
    with served_admin_api() as world, \
            httpx.Client(base_url=world.base_url, timeout=TIMEOUT) as http:
        directory = world.directory
        grow(directory, SIZE - 1, GROUPS)
        body = {"schemas": [USER], "userName": LATE}
        created = http.post("/Users", json=body, headers=bearer(world.obo(
            "verify_create_user", target=LATE, attributes=body)))
        assert created.status_code == 201, created.text
        late_id = created.json()["id"]
        late_group = directory.group_by_name(f"Scale group {GROUPS - 1:04d}")
        assert late_group is not None and late_group.id is not None
        finance = world.group_id("Finance")
        for group in (late_group.id, finance):
            added = http.patch(f"/Groups/{group}", json=patch(add_member(late_id)),
                               headers=bearer(world.obo("verify_add_group_member",
                                                        target=late_id, group=group)))
            assert added.status_code == 204, added.text
        yield Scale(world, http, late_id, late_group.id, finance)


# -- in process: the Directory object ---------------------------------------------------------

def test_the_last_user_is_found_by_id_and_by_username(scale: Scale) -> None:
    directory = scale.directory
    assert user_count(directory) == SIZE
    by_id = directory.user(scale.late_id)
    assert by_id is not None and by_id.user_name == LATE
    for name in (LATE, LATE.upper()):  # userName is caseExact false (RFC 7643 §4.1.1)
        found = directory.user_by_username(name)
        assert found is not None and found.id == scale.late_id, name
    assert directory.user_by_username("nobody@scale.example") is None
    users = directory.users()
    names = [u.user_name or "" for u in users]
    assert len(names) == SIZE and names == sorted(names) and LATE in names


def test_groups_of_a_user_added_late_finds_its_groups(scale: Scale) -> None:
    directory = scale.directory
    assert {g.id for g in directory.groups_of(scale.late_id)} == {scale.late_group, scale.finance}
    found = directory.group_by_name(f"Scale group {GROUPS - 1:04d}")
    assert found is not None and found.id == scale.late_group
    lonely = directory.user_by_username("user09998@scale.example")
    assert lonely is not None and lonely.id is not None and directory.groups_of(lonely.id) == []


def test_groups_of_answers_what_walking_every_group_answers(scale: Scale) -> None:
    directory = scale.directory
    every_group = directory._search(directory.group_type, None)
    assert len(every_group) == GROUPS + 6
    for user in [*directory.users()[:30], directory.user(scale.late_id)]:
        assert user is not None and user.id is not None
        walked = [g.id for g in every_group if any(m.value == user.id for m in g.members or [])]
        assert [g.id for g in directory.groups_of(user.id)] == walked, user.user_name
        # the token exchange's copy-free reads answer the same
        assert directory.group_names_of(user.id) == [
            g.display_name or "" for g in every_group if g.id in walked], user.user_name
        record = directory.user_record(user.id)
        assert record is not None and (record.user_name, record.active) == (
            user.user_name, user.active)
    assert directory.user_record("no-such-user") is None
    assert directory.group_names_of("no-such-user") == []


def test_unfiltered_pages_are_the_pages_scim2_server_s_storage_answers(scale: Scale) -> None:
    """The index serves an unfiltered, unsorted page; scim2-server's own search (the parent's
    method, which walks and sorts everything) answers the same total and the same page."""
    storage, user_type = scale.directory.storage, scale.directory.user_type
    for start, count in ((1, 1), (2, 3), (SIZE - 10, 20), (SIZE, 5), (SIZE + 1, 5), (5, 0),
                         (1, None)):
        request: SearchRequest[Any] = SearchRequest(start_index=start, count=count)
        fast = storage.search([user_type], request)
        walked = InMemoryStorage.search(storage, [user_type], request)
        assert fast.total == walked.total == SIZE
        assert [r.id for r in fast.resources] == [r.id for r in walked.resources], (start, count)
        expected = SIZE - start + 1 if count is None else min(count, max(SIZE - start + 1, 0))
        assert len(fast.resources) == expected, (start, count)


# -- over HTTP: the admin API ------------------------------------------------------------------

def test_a_page_of_one_counts_the_whole_directory(scale: Scale) -> None:
    world, http = scale.world, scale.http
    one = http.get("/Users", params={"count": "1"},
                   headers=bearer(world.obo("verify_read_users")))
    assert one.status_code == 200, one.text
    body = one.json()
    assert (body["totalResults"], body["itemsPerPage"], body["startIndex"]) == (SIZE, 1, 1)
    assert len(body["Resources"]) == 1
    last = http.get("/Users", params={"startIndex": str(SIZE), "count": "5"},
                    headers=bearer(world.obo("verify_read_users")))
    assert last.status_code == 200, last.text
    tail = last.json()
    assert (tail["totalResults"], tail["itemsPerPage"], tail["startIndex"]) == (SIZE, 1, SIZE)
    assert tail["Resources"][0]["id"] == max(
        str(r.id) for r in scale.directory.storage.resources
        if r.meta is not None and r.meta.resource_type == "User")
    # no count: the maxResults this API announces (RFC 7643 §5), and the whole total
    default = http.get("/Users", headers=bearer(world.obo("verify_read_users"))).json()
    assert (default["totalResults"], default["itemsPerPage"]) == (SIZE, 1000)


def test_the_last_user_by_id_and_by_username_over_http(scale: Scale) -> None:
    world, http = scale.world, scale.http
    got = http.get(f"/Users/{scale.late_id}",
                   headers=bearer(world.obo("verify_read_user", target=scale.late_id)))
    assert got.status_code == 200, got.text
    assert got.json()["userName"] == LATE
    found = http.get("/Users", params={"filter": f'userName eq "{LATE.upper()}"'},
                     headers=bearer(world.obo("verify_read_users")))
    assert found.status_code == 200, found.text
    assert found.json()["totalResults"] == 1
    assert [u["id"] for u in found.json()["Resources"]] == [scale.late_id]


def test_the_indexes_follow_updates_and_deletes(scale: Scale) -> None:
    """A user created, added to a group and removed from it over HTTP, then deleted; a group
    created and deleted in the storage: every lookup follows, and the directory is back to
    10,000 users."""
    world, http, directory = scale.world, scale.http, scale.directory
    name = "moving.user@scale.example"
    body = {"schemas": [USER], "userName": name}
    created = http.post("/Users", json=body, headers=bearer(world.obo(
        "verify_create_user", target=name, attributes=body)))
    assert created.status_code == 201, created.text
    moving = created.json()["id"]
    try:
        assert user_count(directory) == SIZE + 1 and directory.groups_of(moving) == []
        added = http.patch(f"/Groups/{scale.late_group}", json=patch(add_member(moving)),
                           headers=bearer(world.obo("verify_add_group_member", target=moving,
                                                    group=scale.late_group)))
        assert added.status_code == 204, added.text
        assert [g.id for g in directory.groups_of(moving)] == [scale.late_group]
        assert directory.group_names_of(moving) == [f"Scale group {GROUPS - 1:04d}"]
        removed = http.patch(f"/Groups/{scale.late_group}", json=patch(remove_member(moving)),
                             headers=bearer(world.obo("verify_remove_group_member",
                                                      target=moving, group=scale.late_group)))
        assert removed.status_code == 204, removed.text
        assert directory.groups_of(moving) == []
        assert {g.id for g in directory.groups_of(scale.late_id)} == {scale.late_group,
                                                                      scale.finance}
    finally:
        deleted = http.delete(f"/Users/{moving}",
                              headers=bearer(world.obo("verify_delete_user", target=moving)))
    assert deleted.status_code == 204, deleted.text
    assert directory.user(moving) is None and directory.user_by_username(name) is None
    assert directory.user_record(moving) is None and directory.group_names_of(moving) == []
    page = http.get("/Users", params={"count": "1"},
                    headers=bearer(world.obo("verify_read_users"))).json()
    assert page["totalResults"] == SIZE
    # a group deleted: no member's groups name it any more
    short_lived = model(directory, "/Groups").model_validate(
        {"schemas": [GROUP], "displayName": "Short-lived", "members": [{"value": scale.late_id}]})
    group = directory.storage.create(directory.group_type, short_lived)
    assert group.id in {g.id for g in directory.groups_of(scale.late_id)}
    directory.storage.delete(directory.group_type, str(group.id))
    assert {g.id for g in directory.groups_of(scale.late_id)} == {scale.late_group, scale.finance}


# -- the storage on its own ----------------------------------------------------------------

def test_a_re_seed_rebuilds_the_indexes() -> None:
    """`resources = ...` replaces everything (as `Directory` seeds it): the indexes follow."""
    directory = Directory(fixtures_dir())
    alice = directory.user_by_username("alice@example.com")
    assert alice is not None and alice.id is not None and directory.groups_of(alice.id)
    kept = [r for r in directory.storage.resources
            if r.meta is not None and r.meta.resource_type == "User"]
    directory.storage.resources = kept
    assert directory.groups_of(alice.id) == []
    page = directory.storage.search([directory.user_type], SearchRequest(count=1))
    assert page.total == len(kept) == 23 and len(page.resources) == 1
    assert directory.storage.search([directory.group_type], SearchRequest()).total == 0


class TestDirectoryStorageContract(ScimStorageContract):
    """scim2-server's own checks of what a storage must do (copies, ids, versions, uniqueness,
    filters, sorting, index and cursor paging), run against `DirectoryStorage`."""

    @pytest.fixture
    def storage(self) -> DirectoryStorage:
        return DirectoryStorage()
