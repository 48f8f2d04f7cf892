"""Long tool calls with the official MCP Python SDK client (issue #18 item 2): progress while a
call waits for the human, and a cancelled or disconnected call that never executes, even when
its push is approved afterwards.

Both MCP wire eras the SDK speaks are exercised: `auto` (the 2026-07-28 per-request protocol,
where cancelling closes the response stream) and `legacy` (the 2025-11-25 handshake, where the
SDK posts `notifications/cancelled` on its own POST). Every wait is on a condition, bounded by
a generous timeout; nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from harness.authenticator import for_origin
from harness.lab import Lab
from harness.lab_client import PhoneApi
from harness.verify.approvals import PushRequest
from iia.cancellation import CallCancel
from iia.events import SecurityEvent
from iia.oauth.errors import OAuthError
from iia.oauth.token_exchange import exchange
from tests.helpers import caller_of, sid_of, user_token, wait_for

ALICE = "alice@example.com"
BOB = "bob@example.com"
WAIT = 30.0  # seconds any condition may take to come true (a bound, not an expectation)
LEGACY = "2025-11-25"


def until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return wait_for(condition, what, timeout)


async def auntil(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    with anyio.fail_after(timeout):
        while True:
            value = condition()
            if value:
                return value
            await anyio.sleep(0.02)
    raise AssertionError(what)  # pragma: no cover - fail_after raises first


def new_user_args() -> dict[str, str]:
    name = f"long-{secrets.token_hex(4)}@example.com"
    return {"user_name": name, "given_name": "Long", "family_name": "Call"}


def push_for(lab: Lab, name: str, status: str = "pending") -> PushRequest | None:
    """The push (tier-2 consent or tier-3) whose authorization_details name `name`."""
    for push in lab.verify.approvals.all():
        if push.status == status and name in json.dumps(push.authorization_details):
            return push
    return None


def created(lab: Lab, name: str) -> bool:
    return lab.verify.directory.user_by_username(name) is not None


def session_events(lab: Lab, token: str, type_: str) -> list[SecurityEvent]:
    sid = sid_of(token)
    return [e for e in lab.events.recent(type=type_) if e.session_id == sid]


@contextlib.asynccontextmanager
async def sdk(lab: Lab, token: str, mode: str) -> AsyncIterator[Client]:
    """The official SDK client, the user's token on every request, its own defaults else."""
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                  timeout=httpx2.Timeout(30, read=300)) as http, \
            Client(streamable_http_client(lab.mcp_url, http_client=http),
                   mode=mode) as client:  # type: ignore[arg-type]
        yield client


def approve(lab: Lab, push: PushRequest) -> httpx.Response:
    """Approve on the phone: the Verify app's wire, signed with the user's passkey."""
    with httpx.Client(timeout=10) as http:
        return PhoneApi(lab.verify.base_url, http).answer(push.id, True)


def assert_never_executed(lab: Lab, token: str, name: str, push: PushRequest,
                          audit_before: int) -> None:
    """The push was withdrawn and approving it now is refused; nothing was exchanged or
    written, and the events say the call was cancelled."""
    until(lambda: push_for(lab, name, "withdrawn"), "the push to be withdrawn at the IdP")
    late = approve(lab, push)
    assert late.status_code == 409, late.text
    assert late.json()["error"] == "conflict" and "withdrawn" in late.json()["error_description"]
    assert lab.verify.approvals.get(push.id).status == "withdrawn"  # type: ignore[union-attr]
    assert not created(lab, name)
    decisions = lab.verify.audit.since(audit_before)
    assert not [d for d in decisions if d.kind in ("token_exchange", "admin_api")], decisions
    assert [d for d in decisions if d.kind == "ciba" and d.outcome == "withdrawn"
            and d.approval_id == push.id]
    withdrawn = until(lambda: session_events(lab, token, "agent:push_withdrawn"),
                      "agent:push_withdrawn")
    assert withdrawn[-1].outcome == "cancelled"
    assert withdrawn[-1].details["pushStatus"] == "withdrawn"
    assert "withdrawn" in (withdrawn[-1].reason or "")
    errors = session_events(lab, token, "agent:tool_error")
    assert errors and errors[-1].details["error"] == "call_cancelled"
    assert not session_events(lab, token, "agent:token_exchange_success")


# -- progress ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_progress_while_waiting_then_the_call_completes_after_approval(lab: Lab,
                                                                      mode: str) -> None:
    token = user_token(lab)["access_token"]
    args = new_user_args()
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async def go() -> Any:
        async with sdk(lab, token, mode) as client, anyio.create_task_group() as tg:
            result: list[Any] = []

            async def call() -> None:
                result.append(await client.call_tool("create_user", args,
                                                     progress_callback=on_progress))

            tg.start_soon(call)
            await auntil(lambda: seen, "a progress notification while the push waits")
            push = push_for(lab, args["user_name"])
            assert push is not None and not created(lab, args["user_name"])
            answered = await anyio.to_thread.run_sync(approve, lab, push)
            assert answered.status_code == 200, answered.text
            await auntil(lambda: result, "the call's result")
            return result[0]

    result = anyio.run(go)
    assert not result.is_error, result.content
    assert created(lab, args["user_name"])
    progress, total, message = seen[0]
    assert total == pytest.approx(lab.mcp.settings.approval_timeout, abs=1)
    assert 0 <= progress <= total
    assert message is not None and ALICE in message and "s left" in message
    assert [p for p, _, _ in seen] == sorted({p for p, _, _ in seen})  # only grows


def test_a_client_without_progress_token_keeps_its_json_answer(lab: Lab) -> None:
    """No progress token (or no SSE in Accept): one JSON body, as before."""
    token = user_token(lab)["access_token"]
    for meta in ({}, {"_meta": {"progressToken": "p1"}}):
        body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "list_groups", "arguments": {}, **meta}}
        response = httpx.post(lab.mcp_url, json=body, timeout=30, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json",
            "MCP-Protocol-Version": LEGACY})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["result"]["isError"] is False


# -- cancellation -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_a_call_cancelled_by_the_sdk_before_approval_never_executes(lab: Lab,
                                                                    mode: str) -> None:
    """The caller gives up while the push waits (what a client timeout does): `auto` closes
    the response stream, `legacy` posts notifications/cancelled. The push is withdrawn, and
    the user's approval afterwards is refused: no token exchange, no SCIM write."""
    token = user_token(lab)["access_token"]
    args = new_user_args()
    audit_before = len(lab.verify.audit)

    async def go() -> PushRequest:
        async with sdk(lab, token, mode) as client:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.call_tool, "create_user", args)
                    push = await auntil(lambda: push_for(lab, args["user_name"]),
                                        "the push on the phone")
                    scope.cancel()
            return push

    push = anyio.run(go)
    assert_never_executed(lab, token, args["user_name"], push, audit_before)


def _raw_call(lab: Lab, token: str, request_id: str, args: dict[str, str],
              out: list[httpx.Response]) -> threading.Thread:
    """A tools/call POST (2025-11-25, stateless, JSON answer) held open in a thread."""
    def run() -> None:
        out.append(httpx.post(lab.mcp_url, timeout=120, json={
            "jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "create_user", "arguments": args}}, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json",
            "MCP-Protocol-Version": LEGACY}))
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _cancel(lab: Lab, token: str, request_id: str) -> httpx.Response:
    return httpx.post(lab.mcp_url, timeout=30, json={
        "jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": request_id, "reason": "the client timed out"}}, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": LEGACY})


def test_a_posted_cancel_reaches_only_the_same_users_call_in_the_same_session(
        lab: Lab) -> None:
    """Stateless: the cancel is its own POST. Bob's, and Alice's from another session, with
    the very request id, cancel nothing; Alice's from the call's session does."""
    alice = user_token(lab)["access_token"]
    request_id = f"call-{secrets.token_hex(3)}"
    args = new_user_args()
    audit_before = len(lab.verify.audit)
    out: list[httpx.Response] = []
    thread = _raw_call(lab, alice, request_id, args, out)
    push = until(lambda: push_for(lab, args["user_name"]), "the push on the phone")

    for stranger in (user_token(lab, BOB)["access_token"], user_token(lab)["access_token"]):
        cancelled = lab.mcp.calls.cancelled
        refused = _cancel(lab, stranger, request_id)
        assert refused.status_code == 202  # a notification is acknowledged, never answered
        assert lab.mcp.calls.cancelled == cancelled  # nothing was cancelled
        assert lab.verify.approvals.get(push.id).status == "pending"  # type: ignore[union-attr]
        assert not out

    assert _cancel(lab, alice, request_id).status_code == 202
    thread.join(WAIT)
    assert out and out[0].status_code == 200, out
    result = out[0].json()["result"]
    assert result["isError"] is True and "[call_cancelled]" in result["content"][0]["text"]
    assert_never_executed(lab, alice, args["user_name"], push, audit_before)


def test_a_disconnected_call_never_executes(lab: Lab) -> None:
    """No cancel notification at all: the client just goes away (closes the connection)."""
    token = user_token(lab)["access_token"]
    args = new_user_args()
    audit_before = len(lab.verify.audit)

    async def go() -> PushRequest:
        async with httpx.AsyncClient(timeout=120) as http:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: http.post(lab.mcp_url, json={
                        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                        "params": {"name": "create_user", "arguments": args}}, headers={
                        "Authorization": f"Bearer {token}", "Accept": "application/json",
                        "MCP-Protocol-Version": LEGACY}))
                    push = await auntil(lambda: push_for(lab, args["user_name"]),
                                        "the push on the phone")
                    scope.cancel()  # the request task ends: httpx closes the connection
            return push

    push = anyio.run(go)
    assert_never_executed(lab, token, args["user_name"], push, audit_before)


def test_the_phone_shows_a_withdrawn_push_as_withdrawn(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    request_id = f"call-{secrets.token_hex(3)}"
    args = new_user_args()
    out: list[httpx.Response] = []
    thread = _raw_call(lab, token, request_id, args, out)
    push = until(lambda: push_for(lab, args["user_name"]), "the push on the phone")
    origin = lab.verify.passkeys.origin
    with httpx.Client(base_url=lab.verify.base_url, timeout=10) as http:
        options = http.post("/lab/passkeys/sign-in/options", json={"user": ALICE}).json()
        assertion = for_origin(origin).get(options["publicKey"], origin)
        signed_in = http.post("/lab/phone/session", json={"ceremony": options["ceremony"],
                                                          "credential": assertion})
        assert signed_in.status_code == 200, signed_in.text
        me = http.get("/lab/phone/me").json()
        assert push.id in [p["id"] for p in me["pushes"]]
        assert push.id not in [p["id"] for p in me["withdrawn"]]
        _cancel(lab, token, request_id)
        thread.join(WAIT)
        me = until(lambda: (m := http.get("/lab/phone/me").json())["withdrawn"] and m,
                   "the phone to list the push as withdrawn")
    assert push.id not in [p["id"] for p in me["pushes"]]
    shown = [p for p in me["withdrawn"] if p["id"] == push.id]
    assert shown and shown[0]["status"] == "withdrawn"
    assert not created(lab, args["user_name"])


@pytest.mark.parametrize("after", ["agent:hitl_approved", "agent:token_exchange_success"])
def test_a_cancel_after_approval_but_before_the_write_executes_nothing(lab: Lab,
                                                                       after: str) -> None:
    """The cancellation lands after the user approved (before the token exchange: none is
    made) or after the exchange (`commit()` before the admin API still refuses): nothing is
    written."""
    token = user_token(lab)["access_token"]
    args = new_user_args()
    cancel = CallCancel()
    sid = sid_of(token)

    def on_event(event: SecurityEvent) -> None:
        if event.type == after and event.session_id == sid:
            cancel.cancel("the test's client went away")

    audit_before = len(lab.verify.audit)
    unsubscribe = lab.events.subscribe(on_event)
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(lab.mcp.chain.call(
        "create_user", args, caller_of(token), cancel=cancel)), daemon=True)
    try:
        worker.start()
        push = until(lambda: push_for(lab, args["user_name"]), "the push on the phone")
        assert approve(lab, push).status_code == 200
        worker.join(WAIT)
    finally:
        unsubscribe()
    outcome = out[0]
    assert not outcome.ok and outcome.code == "call_cancelled", outcome
    assert not created(lab, args["user_name"])
    decisions = lab.verify.audit.since(audit_before)
    assert not [d for d in decisions if d.kind == "admin_api"]
    exchanged = [d for d in decisions if d.kind == "token_exchange"]
    assert bool(exchanged) == (after == "agent:token_exchange_success")
    assert not cancel.cancel("again")  # cancelled once; a second cancellation changes nothing


def test_a_tier3_call_cancelled_after_approval_spends_the_approval_and_executes_nothing(
        lab: Lab) -> None:
    """Tier 3 differs from tier 2 here: its approval is for exactly this call, once, and the
    IdP keeps it redeemable until the token exchange spends it. A call cancelled after the
    user approved but before the exchange must not leave it lying there for the next exchange
    of the same call in the same session: the cancelled call spends it at the IdP (the
    withdrawal endpoint, which spends an approved push's unused approval). Nothing is
    exchanged or sent, and the same exchange afterwards is refused by the tier-3 policy."""
    token = user_token(lab)["access_token"]
    target = f"u-cancel-{secrets.token_hex(4)}"
    cancel = CallCancel()
    sid = sid_of(token)

    def on_event(event: SecurityEvent) -> None:
        if event.type == "agent:hitl_approved" and event.session_id == sid:
            cancel.cancel("the test's client went away")

    audit_before = len(lab.verify.audit)
    unsubscribe = lab.events.subscribe(on_event)
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(lab.mcp.chain.call(
        "deactivate_user", {"user_id": target}, caller_of(token), cancel=cancel)), daemon=True)
    try:
        worker.start()
        push = until(lambda: push_for(lab, target), "the tier-3 push on the phone")
        assert push.tier == 3
        assert approve(lab, push).status_code == 200
        worker.join(WAIT)
    finally:
        unsubscribe()
    outcome = out[0]
    assert not outcome.ok and outcome.code == "call_cancelled", outcome
    assert "spent the approval" in (outcome.error or ""), outcome
    decisions = lab.verify.audit.since(audit_before)
    assert not [d for d in decisions if d.kind in ("token_exchange", "admin_api")], decisions
    # the approval is spent at the IdP, and the tenant recorded why
    assert [a.used for a in lab.verify.approvals.call_approvals() if a.id == push.id] == [True]
    late = [d for d in decisions if d.kind == "ciba" and d.outcome == "withdraw_late"
            and d.approval_id == push.id]
    assert late and late[-1].details["approvalSpent"] is True
    withdrawn = session_events(lab, token, "agent:push_withdrawn")
    assert withdrawn and withdrawn[-1].details["pushStatus"] == "approved"
    assert "spent the approval" in (withdrawn[-1].reason or "")
    # another call of exactly this in the same session finds no approval to redeem
    chain = lab.mcp.chain
    with pytest.raises(OAuthError) as refused:
        exchange(chain.server, chain.identity, subject_token=token,
                 details=push.authorization_details[0], audience=chain.admin_api_url)
    assert refused.value.code == "access_denied"
    assert refused.value.policy_id == "tier3-needs-call-approval"
    after = lab.verify.audit.since(audit_before)
    assert not [d for d in after if d.kind == "admin_api"]
    assert not [d for d in after if d.kind == "token_exchange" and d.outcome == "issued"]
    assert not cancel.cancel("again")
