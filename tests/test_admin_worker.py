"""The admin API's SCIM work runs on its own thread (`harness.verify.admin_worker`), not on the
loop that serves the tenant's other endpoints: while one admin request is held inside the gate,
another endpoint of the same server still answers, and the held request then completes as
usual."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from harness.net import HttpService
from harness.verify.admin_worker import admin_worker
from tests.admin_world import TIMEOUT, AdminWorld, bearer, served_admin_api


@pytest.fixture(scope="module")
def world() -> Iterator[AdminWorld]:
    with served_admin_api() as served:
        yield served


@contextlib.contextmanager
def beside_another_endpoint(world: AdminWorld) -> Iterator[str]:
    """The admin API mounted at /v2.0 next to `/ping` on one uvicorn server (one loop, as in
    the tenant's process); yields the server's URL."""

    async def ping(request: Request) -> JSONResponse:
        return JSONResponse({"pong": True})

    service = HttpService("tenant", Starlette(routes=[
        Route("/ping", ping), Mount("/v2.0", app=world.api.app())]))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="tenant-loop", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(service.start(), loop).result(timeout=TIMEOUT)
        yield service.url
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(service.stop(), loop).result(timeout=TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=TIMEOUT)
        loop.close()


def test_another_endpoint_answers_while_an_admin_request_is_held(
        world: AdminWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    entered, release = threading.Event(), threading.Event()
    ran_on: list[str] = []
    grant = world.api.coverage.grant

    def held_grant(*args: Any, **kwargs: Any) -> Any:
        ran_on.append(threading.current_thread().name)
        entered.set()
        release.wait(TIMEOUT)
        return grant(*args, **kwargs)

    monkeypatch.setattr(world.api.coverage, "grant", held_grant)
    token = world.obo("verify_read_users")
    answers: list[httpx.Response] = []
    with beside_another_endpoint(world) as url:
        admin = threading.Thread(target=lambda: answers.append(httpx.get(
            f"{url}/v2.0/Users", params={"count": "1"}, headers=bearer(token),
            timeout=TIMEOUT)))
        admin.start()
        try:
            assert entered.wait(TIMEOUT), "the admin request never reached the gate"
            pong = httpx.get(f"{url}/ping", timeout=TIMEOUT)
            assert pong.status_code == 200 and pong.json() == {"pong": True}
            assert not answers, "the admin request was answered while held"
        finally:
            release.set()
            admin.join(TIMEOUT)
    assert ran_on == [admin_worker.name]
    assert len(answers) == 1 and answers[0].status_code == 200, answers
    assert answers[0].json()["totalResults"] >= 1
    assert world.api.requests[-1].outcome == "allowed"
