"""An approved push is never wasted by a transient failure (issue #20 item 2).

The token endpoint fails while a push waits (HTTP 500 from the simulated Verify, or a refused
connection), the user approves on their phone (the signed Verify app path), and the MCP server
keeps asking, with backoff, until it gets the answer: the call executes once and no second push
is sent. Final answers stay final. And the IdP's side of it: an approval takes effect when the
client redeems it, so an approved push nobody redeemed leaves nothing behind.

Every wait is on a condition with a generous timeout; no duration is asserted.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from harness.lab import Lab
from harness.lab_client import PhoneApi
from harness.verify.approvals import PushRequest
from iia.agent import ToolResult
from iia.hitl import Approval
from iia.oauth.client import IdpUnavailableError
from iia.protocol import CIBA_GRANT
from tests import helpers
from tests.agent_helpers import mcp_call, user_id
from tests.helpers import (
    bc_authorize,
    exchange,
    poll,
    rar,
    sid_of,
    user_token,
)

WAIT = 60.0
ALICE = "alice@example.com"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return helpers.wait_for(condition, what, timeout)


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class FailingTokenEndpoint:
    """The simulated Verify's token endpoint answering HTTP 500 (a crashed worker) to the
    next `fail` CIBA token requests; counts every CIBA token request by auth_req_id."""

    def __init__(self, lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
        self.remaining = 0
        self.failed = 0
        self.asked: list[str] = []
        original = lab.verify.server.token

        async def token(request: Request) -> Response:
            form = await request.form()  # Starlette keeps it: the real handler reads it again
            if form.get("grant_type") == CIBA_GRANT:
                self.asked.append(str(form.get("auth_req_id")))
                if self.remaining > 0:
                    self.remaining -= 1
                    self.failed += 1
                    return PlainTextResponse("Internal Server Error", status_code=500)
            return await original(request)

        monkeypatch.setattr(lab.verify.server, "token", token)


@pytest.fixture
def failing(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> FailingTokenEndpoint:
    return FailingTokenEndpoint(lab, monkeypatch)


class Call:
    """One tool call through the lab's MCP server, in a thread; `push` is the one it sent."""

    def __init__(self, lab: Lab, token: str, name: str, arguments: dict[str, Any]) -> None:
        self.known = {p.id for p in lab.verify.approvals.all()}
        self.lab = lab
        self.result: ToolResult | BaseException | None = None

        def run() -> None:
            try:
                self.result = mcp_call(lab, token, name, arguments)
            except BaseException as exc:  # handed to the test
                self.result = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self.push: PushRequest = wait_for(lambda: next(iter(self.pushes()), None), "the push")

    def pushes(self) -> list[PushRequest]:
        return [p for p in self.lab.verify.approvals.all()
                if p.id not in self.known and p.email == ALICE]

    def done(self) -> ToolResult:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the call did not end"
        assert isinstance(self.result, ToolResult), self.result
        return self.result


def approve(lab: Lab, push: PushRequest) -> None:
    """The user approves on their phone: the Verify app's wire, signed with their passkey."""
    with httpx.Client(timeout=10) as http:
        answered = PhoneApi(lab.verify.base_url, http).answer(push.id, True)
    assert answered.status_code == 200 and answered.json()["status"] == "approved", answered.text


def admin_writes(lab: Lab, jtis: set[str]) -> list[Any]:
    return [r for r in lab.verify.admin_api.requests if r.jti in jtis and r.method != "GET"]


def obo_jtis(lab: Lab, start: int) -> set[str]:
    return {e.correlation["oboJti"] for e in lab.events.since(start)[0]
            if e.type == "agent:token_exchange_success" and "oboJti" in e.correlation}


def test_a_token_endpoint_failing_after_the_approval_does_not_waste_it(
        lab: Lab, failing: FailingTokenEndpoint) -> None:
    """Tier 3: the IdP answers 500 twice to the token request that follows the approval's
    callback; the MCP server asks again, backing off, and the approved push is used."""
    token = user_token(lab)["access_token"]
    start = lab.events.cursor()
    call = Call(lab, token, "revoke_user_sessions", {"user_id": user_id(lab, "heidi@example.com")})
    push = call.push
    failing.remaining = 2
    approve(lab, push)
    result = call.done()
    assert not result.is_error, result.text
    assert failing.failed == 2
    assert failing.asked.count(push.auth_req_id) == 3  # two failures, then the tokens
    assert push.redeemed
    assert [p.id for p in call.pushes()] == [push.id]  # no second push
    writes = admin_writes(lab, obo_jtis(lab, start))
    assert len(writes) == 1 and writes[0].status < 300  # the call executed once


def test_a_refused_connection_while_the_push_waits_does_not_waste_it(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tier 2: the MCP server cannot reach the token endpoint at all while the user approves
    (connection refused); once it can, it redeems the approval, the write runs once, and the
    consent it caches is the one the IdP recorded (the next write asks nobody)."""
    token = user_token(lab)["access_token"]
    sid = sid_of(token)
    alice = jwt.decode(token, options={"verify_signature": False})["sub"]
    name = f"transient.{threading.get_ident()}.{id(token)}@example.com"
    metadata = lab.mcp.idp.metadata
    real = metadata["token_endpoint"]
    start = lab.events.cursor()
    call = Call(lab, token, "create_user",
                {"user_name": name, "given_name": "Tran", "family_name": "Sient"})
    push = call.push
    sent = lab.mcp.idp.requests.get("token_endpoint", 0)
    monkeypatch.setitem(metadata, "token_endpoint", dead_url())
    try:
        approve(lab, push)
        wait_for(lambda: lab.mcp.idp.requests.get("token_endpoint", 0) >= sent + 2,
                 "two token requests to fail")
        assert not push.redeemed and call.thread.is_alive()
        # nothing took effect at the IdP while the MCP server could not redeem the approval
        assert lab.verify.approvals.session_consent_age(alice, sid) is None
    finally:
        metadata["token_endpoint"] = real
    result = call.done()
    assert not result.is_error, result.text
    assert push.redeemed and [p.id for p in call.pushes()] == [push.id]
    assert lab.verify.directory.user_by_username(name) is not None
    assert len(admin_writes(lab, obo_jtis(lab, start))) == 1
    assert lab.verify.approvals.session_consent_age(alice, sid) is not None
    assert lab.mcp.consents.consent(sid) is not None  # the IdP's record and ours agree
    again = mcp_call(lab, token, "add_user_to_group", {
        "user_id": user_id(lab, name), "group_id": lab.verify.directory.group_by_name(
            "Engineering").id})  # type: ignore[union-attr]
    assert not again.is_error, again.text
    assert [p.id for p in call.pushes()] == [push.id]  # the consent served: no second push


def test_a_push_that_expires_while_the_idp_is_unreachable_says_so(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Transient failures are retried until the push expires, and no longer; the error then
    says the answer could not be learned, not that nobody answered."""
    token = user_token(lab)["access_token"]
    details = rar(lab, "verify_deactivate_user", target=f"u-transient-{id(token)}",
                  summary="Deactivate a test user")
    monkeypatch.setattr(lab.mcp.approvals, "timeout", 2.0)  # requested_expiry=2
    monkeypatch.setitem(lab.mcp.idp.metadata, "token_endpoint", dead_url())
    outcome: list[Approval | BaseException] = []

    def run() -> None:
        try:
            outcome.append(lab.mcp.approvals.request(user=ALICE, details=details,  # type: ignore[arg-type]
                                                     binding_message="transient test",
                                                     user_token=token))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    waiting = threading.Thread(target=run, daemon=True)
    waiting.start()
    waiting.join(WAIT)
    assert not waiting.is_alive() and outcome
    error = outcome[0]
    assert isinstance(error, IdpUnavailableError), error
    assert error.code == "idp_unavailable" and error.dependency == "idp"
    assert "could not be learned before it expired" in error.description
    assert "unreachable" in error.description and "nothing was done" in error.description


# -- the IdP's side: an approval takes effect when it is redeemed ----------------------------

def consent_for(lab: Lab, token: str) -> dict[str, Any]:
    return rar(lab, "agent_write_consent", session=sid_of(token), duration=1800)


def test_an_approved_consent_nobody_redeemed_grants_nothing(
        lab: Lab, identity: Any) -> None:
    token = user_token(lab)["access_token"]
    alice = jwt.decode(token, options={"verify_signature": False})["sub"]
    started = bc_authorize(lab, identity, ALICE, consent_for(lab, token), login_hint=None,
                           login_hint_token=token)
    assert started.status_code == 200, started.text
    auth_req_id = started.json()["auth_req_id"]
    push = lab.verify.approvals.by_auth_req_id(auth_req_id)
    assert push is not None
    approve(lab, push)
    assert lab.verify.approvals.session_consent_age(alice, sid_of(token)) is None
    write = rar(lab, "verify_create_user", target="never.redeemed@example.com")
    refused = exchange(lab, identity, token, write)
    assert refused.json()["error"] == "access_denied", refused.text
    assert refused.json()["policy_id"] == "tier2-needs-session-approval"
    assert poll(lab, identity, auth_req_id).status_code == 200  # redeemed: now it counts
    assert lab.verify.approvals.session_consent_age(alice, sid_of(token)) is not None
    assert exchange(lab, identity, token, write).status_code == 200


def test_an_approved_push_withdrawn_before_redemption_never_takes_effect(
        lab: Lab, identity: Any) -> None:
    token = user_token(lab)["access_token"]
    alice = jwt.decode(token, options={"verify_signature": False})["sub"]
    started = bc_authorize(lab, identity, ALICE, consent_for(lab, token), login_hint=None,
                           login_hint_token=token)
    auth_req_id = started.json()["auth_req_id"]
    push = lab.verify.approvals.by_auth_req_id(auth_req_id)
    assert push is not None
    approve(lab, push)
    cred = identity.credential()
    withdrawn = httpx.post(f"{lab.verify.issuer}/bc-authorize/withdraw",
                           data={"auth_req_id": auth_req_id},
                           auth=(cred.client_id, cred.client_secret), timeout=10)
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "approved"
    late = poll(lab, identity, auth_req_id)
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant", late.text
    assert "voided" in late.json()["error_description"] and "access_token" not in late.json()
    assert lab.verify.approvals.session_consent_age(alice, sid_of(token)) is None


@pytest.fixture(autouse=True)
def _restore_metadata(lab: Lab) -> Iterator[None]:
    real = lab.mcp.idp.metadata["token_endpoint"]
    yield
    lab.mcp.idp.metadata["token_endpoint"] = real
