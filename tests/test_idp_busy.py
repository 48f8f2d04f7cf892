"""A saturated IdP says it is busy, and the chain says so too (issue #20 item 3).

The suite's own tenant gets a small token-endpoint capacity (harness/verify/capacity.py) and is
saturated for real: raw HTTP requests whose body has not finished arriving hold its slots, as
slow clients hold a real server's workers. Past the limit the endpoint answers 503
`temporarily_unavailable` with Retry-After; the MCP server's IdP client retries within its
budget (iia.oauth.client BUSY_RETRIES / BUSY_BUDGET), succeeds when capacity returns, and
otherwise tells the agent that the identity provider is busy, with nothing executed.

Every wait is on a condition with a generous timeout; no duration is asserted.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from harness.lab import Lab
from harness.lab_client import PhoneApi
from harness.verify.capacity import TokenCapacity, TokenGate
from iia.agent import ToolResult
from iia.identity import WorkloadIdentity
from iia.oauth.client import BUSY_RETRIES
from tests import helpers
from tests.agent_helpers import group_id, mcp_call, phone, user_id
from tests.helpers import as_mcp_server, sid_of, user_token

WAIT = 60.0
ALICE = "alice@example.com"
HEAD = "grant_type="  # sent first; the rest of the body only when the slot is let go
REST = "client_credentials"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return helpers.wait_for(condition, what, timeout)


@pytest.fixture
def gate(lab: Lab) -> Iterator[TokenGate]:
    """The tenant's token gate; its capacity is restored after the test."""
    gate = lab.verify.token_gate
    saved = gate.capacity
    yield gate
    gate.capacity = saved


@contextmanager
def held(lab: Lab, slots: int) -> Iterator[None]:
    """`slots` token requests in progress at the tenant: their headers sent, their bodies not
    yet; on exit each body is finished (the request then fails client authentication)."""
    url = urlsplit(lab.verify.issuer)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    gate = lab.verify.token_gate
    before = gate.in_flight
    sockets = []
    try:
        for _ in range(slots):
            s = socket.create_connection((host, port), timeout=WAIT)
            s.sendall((f"POST {url.path}/token HTTP/1.1\r\nHost: {host}:{port}\r\n"
                       "Content-Type: application/x-www-form-urlencoded\r\n"
                       f"Content-Length: {len(HEAD) + len(REST)}\r\n\r\n{HEAD}").encode())
            sockets.append(s)
        wait_for(lambda: gate.in_flight >= before + slots, "the slots to be held")
        yield
    finally:
        for s in sockets:
            s.sendall(REST.encode())
            s.recv(4096)  # its answer (401 invalid_client): the slot is free again
            s.close()
        wait_for(lambda: gate.in_flight <= before, "the held slots to be let go")


def client_credentials(identity: WorkloadIdentity, lab: Lab) -> httpx.Response:
    return as_mcp_server(identity, f"{lab.verify.issuer}/token",
                         {"grant_type": "client_credentials", "scope": "ssf.manage"})


def test_a_saturated_token_endpoint_answers_503_with_retry_after(
        lab: Lab, gate: TokenGate, identity: WorkloadIdentity) -> None:
    gate.capacity = TokenCapacity(max_in_flight=2, max_queued=0, retry_after=1)
    turned_away = gate.turned_away
    with held(lab, 2):
        busy = client_credentials(identity, lab)
    assert busy.status_code == 503, busy.text
    body = busy.json()
    assert body["error"] == "temporarily_unavailable" and "access_token" not in body
    assert "at capacity" in body["error_description"]
    assert busy.headers["Retry-After"] == "1" and busy.headers["Cache-Control"] == "no-store"
    assert gate.turned_away == turned_away + 1
    again = client_credentials(identity, lab)  # capacity is back: the same request works
    assert again.status_code == 200, again.text


def test_a_queued_token_request_is_served_when_a_slot_frees(
        lab: Lab, gate: TokenGate, identity: WorkloadIdentity) -> None:
    gate.capacity = TokenCapacity(max_in_flight=1, max_queued=1, queue_wait=WAIT)
    answers: list[httpx.Response] = []
    with held(lab, 1):
        waiting = threading.Thread(target=lambda: answers.append(
            client_credentials(identity, lab)), daemon=True)
        waiting.start()
        wait_for(lambda: gate.queued == 1, "the request to queue")
        assert not answers
    waiting.join(WAIT)
    assert answers and answers[0].status_code == 200, answers


def members(lab: Lab, group: str) -> set[str]:
    return {m.value for m in lab.verify.directory.group(group_id(lab, group)).members or []}


def test_the_chain_says_the_idp_is_busy_and_nothing_is_written(
        lab: Lab, gate: TokenGate) -> None:
    token = user_token(lab)["access_token"]
    with phone(lab) as p:  # the session's write consent, given while the IdP has room
        created = mcp_call(lab, token, "create_user", {
            "user_name": f"busy.{id(token)}@example.com", "given_name": "Bu", "family_name": "Sy"})
        assert not created.is_error, created.text
    newcomer = user_id(lab, f"busy.{id(token)}@example.com")
    before = members(lab, "Engineering")
    admin = len(lab.verify.admin_api.requests)
    busy_answers = lab.mcp.idp.busy_answers
    start = lab.events.cursor()
    gate.capacity = TokenCapacity(max_in_flight=1, max_queued=0, retry_after=1)
    with held(lab, 1), phone(lab) as p:
        result = mcp_call(lab, token, "add_user_to_group", {
            "user_id": newcomer, "group_id": group_id(lab, "Engineering")})
    assert result.is_error and result.text.startswith("[idp_busy]"), result.text
    assert "the identity provider is busy" in result.text
    assert "HTTP 503 temporarily_unavailable, retry after 1 s" in result.text
    assert f"after {BUSY_RETRIES} retries" in result.text
    assert "unreachable" not in result.text and "the call was not made" in result.text
    assert lab.mcp.idp.busy_answers == busy_answers + 1 + BUSY_RETRIES  # within budget only
    assert p.answered == []  # the cached consent covered it; nobody was asked
    assert len(lab.verify.admin_api.requests) == admin  # no write reached the admin API
    assert members(lab, "Engineering") == before and newcomer not in before
    mine = [e.to_dict() for e in lab.events.since(start)[0] if e.session_id == sid_of(token)]
    errors = [e for e in mine if e["type"] == "agent:tool_error"]
    assert len(errors) == 1 and errors[0]["error"] == "idp_busy"
    assert errors[0]["dependency"] == "idp"
    assert not [e for e in mine if e["type"] == "agent:token_exchange_success"]


def test_the_chain_retries_and_succeeds_when_capacity_returns(
        lab: Lab, gate: TokenGate) -> None:
    token = user_token(lab)["access_token"]
    gate.capacity = TokenCapacity(max_in_flight=1, max_queued=0, retry_after=1)
    busy_answers = lab.mcp.idp.busy_answers
    outcome: list[ToolResult] = []
    with held(lab, 1):
        call = threading.Thread(target=lambda: outcome.append(
            mcp_call(lab, token, "list_users", {})), daemon=True)
        call.start()
        wait_for(lambda: lab.mcp.idp.busy_answers > busy_answers,
                 "the chain to be told the IdP is busy")
    call.join(WAIT)
    assert outcome and not outcome[0].is_error, outcome
    assert busy_answers < lab.mcp.idp.busy_answers <= busy_answers + BUSY_RETRIES


def test_a_busy_idp_while_the_push_waits_does_not_waste_the_approval(
        lab: Lab, gate: TokenGate) -> None:
    """The user approves while the token endpoint is saturated: the poll that follows the
    callback is told busy past the client's budget, keeps waiting, and uses the approval."""
    token = user_token(lab)["access_token"]
    known = {p.id for p in lab.verify.approvals.all()}
    outcome: list[ToolResult] = []
    call = threading.Thread(target=lambda: outcome.append(mcp_call(
        lab, token, "revoke_user_sessions", {"user_id": user_id(lab, "heidi@example.com")})),
        daemon=True)
    call.start()
    push = wait_for(lambda: next((p for p in lab.verify.approvals.all() if p.id not in known
                                  and p.email == ALICE), None), "the push")
    gate.capacity = TokenCapacity(max_in_flight=1, max_queued=0, retry_after=1)
    busy_answers = lab.mcp.idp.busy_answers
    with held(lab, 1):
        with httpx.Client(timeout=10) as http:
            assert PhoneApi(lab.verify.base_url, http).answer(push.id, True).status_code == 200
        wait_for(lambda: lab.mcp.idp.busy_answers > busy_answers + BUSY_RETRIES,
                 "the poll to spend the client's busy budget")
        assert call.is_alive() and not push.redeemed
    call.join(WAIT)
    assert outcome and not outcome[0].is_error, outcome
    assert push.redeemed
    assert [p.id for p in lab.verify.approvals.all()
            if p.id not in known and p.email == ALICE] == [push.id]  # no second push
