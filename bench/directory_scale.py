"""How the simulated directory's lookups scale with its size (issue #15, item 2's directory
goals): the median cost of one `get_user`, one `userName eq` filter, one `groups_of` and one
`list_users` with `count=1`, in process (`harness.verify.directory.Directory`) and through the
admin API (the same `AdminApi`, admitting a static token as the unenforced baseline does, over
ASGI in process: no socket, so the figure is the directory's and the SCIM service's), at the
fixtures' 23 users and at 10,000.

A figure to read, run by hand (`python -m bench.directory_scale [SIZE ...]`); never a test.
"""

from __future__ import annotations

import asyncio
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from scim2_models import Resource
from starlette.applications import Starlette
from starlette.routing import Mount

from harness.keyset import RotatingKeySet
from harness.paths import fixtures_dir
from harness.verify.admin_api import AdminApi
from harness.verify.audit import AuditTrail
from harness.verify.directory import Directory
from harness.verify.rar import RarRegistry
from harness.verify.sessions import SessionStore
from harness.verify.tokens import TokenService

BASE = "http://admin.bench"
REPEAT = 41


def grow(directory: Directory, size: int) -> str:
    """Create users through the storage's write path until the directory holds `size`; the
    userName of the last one created."""
    model = directory.provider.model_for_endpoint("/Users")
    assert model is not None and issubclass(model, Resource)
    have = sum(1 for r in directory.storage.resources
               if r.meta is not None and r.meta.resource_type == "User")
    name = "alice@example.com"
    for i in range(have, size):
        name = f"user{i:05d}@scale.example"
        directory.storage.create(directory.user_type, model.model_validate({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": name,
            "displayName": f"User {i}", "emails": [{"value": name, "primary": True}],
            "active": True}))
    return name


def _median_ms(call: Callable[[], Any]) -> float:
    for _ in range(3):
        call()
    samples = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


async def _amedian_ms(call: Callable[[], Awaitable[Any]]) -> float:
    for _ in range(3):
        await call()
    samples = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


async def measure(size: int) -> dict[str, float]:
    fixtures = fixtures_dir()
    directory = Directory(fixtures)
    last = grow(directory, size)
    user = directory.user_by_username(last)
    alice = directory.user_by_username("alice@example.com")  # in 2 of the 6 fixture groups
    assert user is not None and user.id is not None and alice is not None and alice.id
    user_id, alice_id = user.id, alice.id
    token = secrets.token_urlsafe(32)
    sessions = SessionStore()
    api = AdminApi(directory=directory, sessions=sessions,
                   tokens=TokenService(BASE + "/oidc", RotatingKeySet(rotation_period=86400.0,
                                                                      retain=1000.0), sessions),
                   registry=RarRegistry(fixtures / "policy" / "rar_types.json"),
                   audit=AuditTrail(), base_url=BASE + "/v2.0", static_tokens=[token])
    app = Starlette(routes=[Mount("/v2.0", app=api.app())])
    figures = {
        "directory.user (get by id)": _median_ms(lambda: directory.user(user_id)),
        "directory.user_by_username": _median_ms(lambda: directory.user_by_username(last)),
        "directory.groups_of (alice)": _median_ms(lambda: directory.groups_of(alice_id)),
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE + "/v2.0",
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        async def get(path: str, params: dict[str, str] | None = None) -> None:
            response = await http.get(path, params=params)
            assert response.status_code == 200, response.text

        figures["GET /Users/{id}"] = await _amedian_ms(lambda: get(f"/Users/{user_id}"))
        figures['GET /Users?filter=userName eq "…"'] = await _amedian_ms(
            lambda: get("/Users", {"filter": f'userName eq "{last}"'}))
        figures["GET /Users?count=1"] = await _amedian_ms(lambda: get("/Users", {"count": "1"}))
    return figures


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [23, 10_000]
    rows = {size: asyncio.run(measure(size)) for size in sizes}
    names = list(next(iter(rows.values())))
    width = max(len(n) for n in names)
    print(f"{'median ms per call':<{width}}  " + "  ".join(f"{s:>9,}" for s in sizes))
    for name in names:
        print(f"{name:<{width}}  " + "  ".join(f"{rows[s][name]:9.3f}" for s in sizes))


if __name__ == "__main__":
    main(sys.argv[1:])
