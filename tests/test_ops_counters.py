"""`GET /ops/counters` on the MCP server (iia.mcp_server.ops, issue #15): the warm path's
counters, read over HTTP, as a benchmark reads them from the process topology."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.counters import counters_url, fetch_counters, per_call
from harness.lab import Lab
from harness.net import bind_loopback
from iia.mcp_server.ops import COUNTERS, COUNTERS_PATH
from tests.agent_helpers import mcp_call
from tests.helpers import user_token
from tests.zone_processes import clean_env, healthy, spawn, stop, url_of, wait_for


def _origin(lab: Lab) -> str:
    return lab.mcp_url.rsplit("/mcp", 1)[0]


def _read(lab: Lab) -> dict[str, Any]:
    response = httpx.get(_origin(lab) + COUNTERS_PATH, timeout=30)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    return {name: after["counters"][name] - before["counters"][name] for name in COUNTERS}


@pytest.fixture(scope="module")
def alice(lab: Lab) -> str:
    return str(user_token(lab)["access_token"])


def test_a_warm_call_reads_vault_and_exchanges_once_and_fetches_nothing(
        lab: Lab, alice: str) -> None:
    assert not mcp_call(lab, alice, "list_users", {"count": 1}).is_error  # warms every cache
    before = _read(lab)
    result = mcp_call(lab, alice, "list_users", {"count": 1})
    after = _read(lab)
    assert not result.is_error, result.text
    delta = _delta(before, after)
    assert delta == {name: 0 for name in COUNTERS} | {
        "tool_calls": 1, "vault_secret_reads": 1, "token_exchanges": 1, "token_requests": 1}
    assert after["process"]["pid"] == before["process"]["pid"]


def test_a_cold_call_fetches_the_keys_the_svids_and_logs_in(lab: Lab, alice: str) -> None:
    assert not mcp_call(lab, alice, "list_users", {"count": 1}).is_error
    lab.mcp.cold_start()  # what a restarted process would not have
    before = _read(lab)
    assert not mcp_call(lab, alice, "list_users", {"count": 1}).is_error
    delta = _delta(before, _read(lab))
    assert delta["jwks_fetches"] == 1 and delta["jwks_key_parses"] >= 1
    assert delta["svid_fetches"] == 2  # one for Vault, one for the IdP (the actor token)
    assert delta["vault_logins"] == 1
    assert (delta["tool_calls"], delta["vault_secret_reads"], delta["token_exchanges"]) == \
        (1, 1, 1)


def test_the_counters_are_counts_only_and_no_secret(lab: Lab, alice: str) -> None:
    assert not mcp_call(lab, alice, "list_users", {"count": 1}).is_error
    response = httpx.get(_origin(lab) + COUNTERS_PATH, timeout=30)
    body = response.json()
    assert list(body["counters"]) == list(COUNTERS)
    assert all(isinstance(v, int) and v >= 0 for v in body["counters"].values())
    assert set(body["process"]) == {"name", "pid", "started_at", "uptime_s", "cpu_ms",
                                    "event_loop"}
    vault_token = lab.mcp_identity.vault._token
    credential = lab.mcp_identity.vault.read()
    secrets = [alice, credential.client_secret,
               vault_token.token if vault_token else None,
               *(svid.token for svid in lab.mcp_identity.svids._cache.values())]
    for secret in filter(None, secrets):
        assert secret not in response.text


def test_the_counters_are_read_only(lab: Lab, alice: str) -> None:
    assert not mcp_call(lab, alice, "list_users", {"count": 1}).is_error
    before = _read(lab)
    for method in ("POST", "PUT", "DELETE"):
        response = httpx.request(method, _origin(lab) + COUNTERS_PATH, timeout=30)
        assert response.status_code == 405, method
    assert _read(lab)["counters"] == before["counters"]  # nothing changed


def test_the_bench_reads_them_per_call(lab: Lab, alice: str) -> None:
    """bench/counters.py, as the bench reads them around a window of warm calls."""
    url = counters_url(lab.mcp_url)
    assert url == _origin(lab) + COUNTERS_PATH
    assert not mcp_call(lab, alice, "list_users", {"count": 1}).is_error
    before = fetch_counters(url)
    for _ in range(3):
        assert not mcp_call(lab, alice, "list_users", {"count": 1}).is_error
    rates = per_call(before, fetch_counters(url))
    assert rates["vault_secret_reads"] == 1.0 and rates["token_exchanges"] == 1.0
    assert rates["jwks_fetches"] == rates["svid_fetches"] == rates["vault_logins"] == 0.0
    assert set(per_call(before, before).values()) == {None}  # no call: no rate


def test_iia_serve_answers_its_counters_on_uvloop(lab: Lab, tmp_path: Path) -> None:
    """The product process, as the supervisor runs it: its counters on the mcp socket, served
    on uvloop (iia.net.run_loop), and it still shuts down gracefully on SIGTERM."""
    sockets = {name: bind_loopback() for name in ("mcp", "chat", "antenna")}
    env = clean_env(**lab.iia_env(), IIA_BIND="127.0.0.1",
                    IIA_ANTENNA_DB=str(tmp_path / "antenna.sqlite"))
    env["IIA_ANTENNA_URL"] = url_of(sockets["antenna"])
    log = tmp_path / "iia.log"
    proc = spawn(["-m", "iia.serve"], env, log, sockets=sockets)
    try:
        mcp = url_of(sockets["mcp"])
        wait_for(lambda: healthy(mcp), f"{mcp}/healthz healthy", proc=proc, log=log)
        body = httpx.get(mcp + COUNTERS_PATH, timeout=30).json()
        assert body["process"]["pid"] == proc.pid
        assert body["process"]["event_loop"] == "uvloop"
        # no call yet: nothing done but the subscription to the IdP's SSF stream at start (one
        # client credentials token: an SVID, a Vault login and secret read, a token request)
        startup = {"svid_fetches": 1, "vault_logins": 1, "vault_secret_reads": 1,
                   "token_requests": 1}
        assert body["counters"] == {name: startup.get(name, 0) for name in COUNTERS}
    finally:
        for sock in sockets.values():
            sock.close()
        assert stop(proc) in (0, -signal.SIGTERM), log.read_text()[-3000:]
