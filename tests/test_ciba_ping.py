"""OpenID CIBA ping mode (§10.2): the simulated Verify calls the MCP server's client notification
endpoint back when the user answers or the push expires, and the MCP server then makes one token
request, so a waiting push costs one Vault read instead of one per poll.

No test here times anything: each waits on a condition (with a generous timeout) and asserts
what happened — the requests made, the Vault reads, the push's state, the wire errors.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from harness.lab import Lab
from harness.verify.approvals import Approvals, PushRequest
from harness.verify.ciba import ciba_delivery
from harness.verify.ciba_ping import Delivery, PingCallbacks
from iia.hitl import Approval, ApprovalDeniedError, ApprovalTimeoutError
from iia.oauth.ciba_ping import NOTIFICATION_PATH, PingReceiver
from iia.protocol import CIBA_GRANT
from tests import helpers
from tests.agent_helpers import mcp_call, phone, user_id
from tests.helpers import bc_authorize, rar, user_token

WAIT = 60.0  # seconds: the most any condition here is waited for
ALICE = "alice@example.com"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    return helpers.wait_for(condition, what, timeout)


@dataclass
class TokenRequests:
    """The CIBA token requests the lab's MCP server made (its IdP client, wrapped)."""

    made: list[str] = field(default_factory=list)

    def of(self, auth_req_id: str) -> int:
        return self.made.count(auth_req_id)


@pytest.fixture
def token_requests(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> TokenRequests:
    counted = TokenRequests()
    original = lab.mcp.idp.token

    def token(form: Any, credential: Any) -> dict[str, Any]:
        if form.get("grant_type") == CIBA_GRANT:
            counted.made.append(str(form["auth_req_id"]))
        return original(form, credential)

    monkeypatch.setattr(lab.mcp.idp, "token", token)
    return counted


@pytest.fixture
def callback_tokens(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """push id -> the client_notification_token the IdP was given for it (as a test can see
    the simulated IdP's state: the token is in no log or answer)."""
    tokens: dict[str, str] = {}
    original = lab.verify.ciba.pings.register

    def register(push: PushRequest, endpoint: str, token: str) -> None:
        tokens[push.id] = token
        original(push, endpoint, token)

    monkeypatch.setattr(lab.verify.ciba.pings, "register", register)
    return tokens


class Waiting:
    """One approval request of the lab's MCP server, running in a thread."""

    def __init__(self, lab: Lab, token: str, details: dict[str, Any]) -> None:
        self.lab = lab
        self.result: Approval | BaseException | None = None
        known = {p.id for p in lab.verify.approvals.all()}

        def run() -> None:
            try:
                self.result = lab.mcp.approvals.request(
                    user=ALICE, details=details, binding_message="ping test",
                    user_token=token)
            except BaseException as exc:  # handed to the test
                self.result = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self.push: PushRequest = wait_for(
            lambda: next((p for p in lab.verify.approvals.all() if p.id not in known
                          and p.authorization_details == [details]), None), "the push")

    def done(self) -> Approval | BaseException:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the approval request did not end"
        assert self.result is not None
        return self.result


def details_for(lab: Lab) -> dict[str, Any]:
    return rar(lab, "verify_deactivate_user", target=f"u-ping-{time.time_ns()}",
               summary="Deactivate a test user")


def notify_url(lab: Lab) -> str:
    return lab.mcp_url.rsplit("/mcp", 1)[0] + NOTIFICATION_PATH


def delivered(lab: Lab, push: PushRequest) -> list[Delivery]:
    return lab.verify.ciba.pings.deliveries(push.id)


def bound(lab: Lab, push: PushRequest) -> bool:
    """The MCP server has read the bc-authorize answer and waits under its auth_req_id."""
    return push.auth_req_id in lab.mcp.pings._waiting


# -- the IdP's side ---------------------------------------------------------------------------

def test_the_tenant_offers_ping_and_the_mcp_server_is_registered_for_it(lab: Lab) -> None:
    metadata = httpx.get(f"{lab.verify.issuer}/.well-known/openid-configuration").json()
    assert metadata["backchannel_token_delivery_modes_supported"] == ["poll", "ping"]
    client = lab.verify.clients.get("iia-mcp-server")
    assert client is not None and client.backchannel_token_delivery_mode == "ping"
    assert client.backchannel_client_notification_endpoint == notify_url(lab)


@pytest.mark.parametrize(("token", "why"), [
    (None, "client_notification_token is required"),
    ("short", "22 to 1024 characters"),
    ("a" * 1025, "22 to 1024 characters"),
    ("has spaces in it and is long enough", "RFC 6750"),
])
def test_a_ping_client_must_send_a_good_notification_token(
        lab: Lab, identity: Any, token: str | None, why: str) -> None:
    pushes = len(lab.verify.approvals.all())
    response = bc_authorize(lab, identity, ALICE, details_for(lab),
                            client_notification_token=token)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
    assert why in response.json()["error_description"]
    assert len(lab.verify.approvals.all()) == pushes  # nobody was asked


@pytest.mark.parametrize(("raw", "message"), [
    ({"backchannel_token_delivery_mode": "push"}, "is not served here"),
    ({"backchannel_token_delivery_mode": "ping"}, "needs a backchannel_client_notification"),
    ({"backchannel_client_notification_endpoint": "/n"}, "this client polls"),
    ({"backchannel_token_delivery_mode": "ping",
      "backchannel_client_notification_endpoint": "http://example.com/n"}, "must be an https"),
])
def test_bad_ciba_registrations_are_refused(raw: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ciba_delivery({"client_id": "c", **raw}, "http://127.0.0.1:9/mcp")


def test_a_relative_notification_endpoint_is_the_mcp_servers() -> None:
    assert ciba_delivery({"backchannel_token_delivery_mode": "ping",
                          "backchannel_client_notification_endpoint": "/ciba/notification"},
                         "http://127.0.0.1:8000/mcp") == \
        ("ping", "http://127.0.0.1:8000/ciba/notification")
    assert ciba_delivery({}, "") == ("poll", None)


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/ciba/notification"


def test_a_push_answered_before_its_callback_was_registered_is_still_called_back() -> None:
    """A fast phone can answer between the push's creation and the callback's registration:
    the registration sees the answer and sends the callback anyway, once."""
    approvals = Approvals()
    callbacks = PingCallbacks(approvals)
    try:
        push = approvals.create(client_id="c", user_id="u", email="u@example.com", tier=3,
                                binding_message="m",
                                authorization_details=[{"type": "verify_deactivate_user"}],
                                session=None)
        approvals.answer(push.id, True)
        callbacks.register(push, dead_url(), "t" * 43)
        sent = wait_for(lambda: callbacks.deliveries(push.id), "the callback")
        assert [(d.status, d.outcome) for d in sent] == [("approved", "failed")]
        assert not callbacks.owed(push.id)
        assert "unreachable" in sent[0].reason and "t" * 43 not in repr(sent[0])
    finally:
        callbacks.close()


# -- the MCP server's notification endpoint, on its own ---------------------------------------

def test_a_callback_is_accepted_once_for_its_own_request() -> None:
    receiver = PingReceiver()
    one, two = receiver.expect(), receiver.expect()
    assert one.token != two.token and len(one.token) >= 43  # 256 bits, fresh each time
    receiver.bind(one, "req-1")
    receiver.bind(two, "req-2")
    body = b'{"auth_req_id": "req-1"}'
    assert receiver.receive(f"Bearer {two.token}", body)[0] == 401  # another request's token
    assert not one.notified.is_set() and not two.notified.is_set()
    assert receiver.receive(f"Bearer {one.token}", body) == (204, {})
    assert one.notified.is_set() and not two.notified.is_set()
    status, error = receiver.receive(f"Bearer {one.token}", body)  # replayed
    assert status == 401 and error["error"] == "invalid_token"
    assert "already used" in error["error_description"]
    assert receiver.accepted == 1
    receiver.discard(one)
    assert receiver.receive(f"Bearer {one.token}", body)[0] == 404  # the request is over


def test_a_callback_before_the_bc_authorize_answer_counts_for_that_request_only() -> None:
    receiver = PingReceiver()
    early, other = receiver.expect(), receiver.expect()
    wrong = receiver.receive("Bearer " + "w" * 43, b'{"auth_req_id": "req-9"}')
    assert wrong[0] == 404 and not early.used and not other.used  # no request's token
    assert receiver.receive(f"Bearer {early.token}", b'{"auth_req_id": "req-9"}') == (204, {})
    assert receiver.receive(f"Bearer {other.token}", b'{"auth_req_id": "req-x"}') == (204, {})
    receiver.bind(early, "req-9")
    receiver.bind(other, "req-8")  # its callback named another auth_req_id: not this one
    assert early.notified.is_set() and not other.notified.is_set()


def test_the_notification_endpoint_refuses_with_oauth_errors_and_changes_nothing(
        lab: Lab, token_requests: TokenRequests) -> None:
    """Wrong, missing or other-scheme bearers are 401 invalid_token; a bad body 400; an
    auth_req_id nothing waits for 404; never a 5xx. The push stays pending, no token request
    is made, and the request goes on waiting until the user answers."""
    waiting = Waiting(lab, user_token(lab)["access_token"], details_for(lab))
    push = waiting.push
    wait_for(lambda: bound(lab, push), "the MCP server to wait for the callback")
    accepted = lab.mcp.pings.accepted
    url = notify_url(lab)
    body = {"auth_req_id": push.auth_req_id}
    for headers in ({}, {"Authorization": "Bearer " + "x" * 43},
                    {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
        refused = httpx.post(url, json=body, headers=headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.json()["error"] == "invalid_token"
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    bad_body = httpx.post(url, content=b"[1, 2]", headers={"Authorization": "Bearer abc"})
    assert bad_body.status_code == 400 and bad_body.json()["error"] == "invalid_request"
    unknown = httpx.post(url, json={"auth_req_id": "nobody-asked"},
                         headers={"Authorization": "Bearer " + "x" * 43})
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    huge = httpx.post(url, content=b"{" + b" " * 10000 + b"}",
                      headers={"Authorization": "Bearer abc"})
    assert huge.status_code == 400
    # nothing changed: the push waits on the phone, unpolled, and the MCP server waits too
    assert lab.verify.approvals.get(push.id).status == "pending"  # type: ignore[union-attr]
    assert push.last_poll is None and token_requests.of(push.auth_req_id) == 0
    assert lab.mcp.pings.accepted == accepted and waiting.thread.is_alive()
    lab.verify.ciba.answer(push.id, True)
    assert isinstance(waiting.done(), Approval)
    assert token_requests.of(push.auth_req_id) == 1


# -- a push through the lab's MCP server, in ping mode ----------------------------------------

def test_a_waiting_push_costs_one_token_request_and_one_vault_read(
        lab: Lab, token_requests: TokenRequests, callback_tokens: dict[str, str]) -> None:
    """The push waits on the phone for several of the IdP's poll intervals: no token request
    (and no Vault read) while it waits; the callback, then one token request, one read. A
    replay of the callback afterwards is refused and costs nothing."""
    token = user_token(lab)["access_token"]
    reads = lab.mcp_identity.vault.reads
    waiting = Waiting(lab, token, details_for(lab))
    push = waiting.push
    wait_for(lambda: bound(lab, push), "the MCP server to wait for the callback")
    wait_for(lambda: lab.verify.approvals.clock() - push.created_at >= 4 * push.interval,
             "four poll intervals to pass")
    assert push.last_poll is None and token_requests.of(push.auth_req_id) == 0
    assert lab.mcp_identity.vault.reads == reads + 1  # bc-authorize's, nothing since
    lab.verify.ciba.answer(push.id, True)
    approval = waiting.done()
    assert isinstance(approval, Approval) and approval.approval_id == push.auth_req_id
    assert token_requests.of(push.auth_req_id) == 1
    assert lab.mcp_identity.vault.reads == reads + 2  # bc-authorize and the one token request
    assert [(d.status, d.outcome, d.http_status) for d in delivered(lab, push)] == \
        [("approved", "delivered", 204)]
    assert push.redeemed
    replayed = httpx.post(notify_url(lab), json={"auth_req_id": push.auth_req_id},
                          headers={"Authorization": f"Bearer {callback_tokens[push.id]}"})
    assert replayed.status_code in (401, 404) and "error" in replayed.json()
    assert token_requests.of(push.auth_req_id) == 1


def test_a_tier3_call_reads_vault_three_times_however_long_the_push_waits(
        lab: Lab, token_requests: TokenRequests) -> None:
    """The whole call: step 3's read (which serves bc-authorize), the one token request after
    the callback, the token exchange — whatever the wait (it was one read per poll)."""
    token = user_token(lab)["access_token"]
    target = user_id(lab, "heidi@example.com")
    start = lab.events.cursor()
    known = {p.id for p in lab.verify.approvals.all()}
    result: dict[str, Any] = {}
    call = threading.Thread(target=lambda: result.setdefault(
        "r", mcp_call(lab, token, "revoke_user_sessions", {"user_id": target})), daemon=True)
    call.start()
    push = wait_for(lambda: next((p for p in lab.verify.approvals.all() if p.id not in known
                                  and p.email == ALICE), None), "the push")
    wait_for(lambda: bound(lab, push), "the MCP server to wait for the callback")
    wait_for(lambda: lab.verify.approvals.clock() - push.created_at >= 4 * push.interval,
             "four poll intervals to pass")
    lab.verify.ciba.answer(push.id, True)
    call.join(WAIT)
    assert not call.is_alive() and not result["r"].is_error, result
    reads = [e for e in lab.events.since(start)[0] if e.type == "vault:secret_read"]
    assert len(reads) == 3
    assert token_requests.of(push.auth_req_id) == 1


def test_a_denial_is_called_back_and_ends_the_request_denied(
        lab: Lab, token_requests: TokenRequests) -> None:
    waiting = Waiting(lab, user_token(lab)["access_token"], details_for(lab))
    push = waiting.push
    wait_for(lambda: bound(lab, push), "the MCP server to wait for the callback")
    lab.verify.ciba.answer(push.id, False)
    outcome = waiting.done()
    assert isinstance(outcome, ApprovalDeniedError) and outcome.code == "approval_denied"
    assert token_requests.of(push.auth_req_id) == 1  # the token request said access_denied
    assert [(d.status, d.outcome) for d in delivered(lab, push)] == [("denied", "delivered")]


def test_an_expired_push_is_called_back_and_ends_the_request_timed_out(
        lab: Lab, token_requests: TokenRequests, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab.mcp.approvals, "timeout", 2.0)  # requested_expiry=2
    waiting = Waiting(lab, user_token(lab)["access_token"], details_for(lab))
    push = waiting.push
    outcome = waiting.done()
    assert isinstance(outcome, ApprovalTimeoutError) and outcome.code == "approval_timeout"
    assert lab.verify.approvals.get(push.id).status == "expired"  # type: ignore[union-attr]
    assert [(d.status, d.outcome) for d in delivered(lab, push)] == [("expired", "delivered")]
    assert token_requests.of(push.auth_req_id) == 1  # after the callback: expired_token


@pytest.fixture
def endpoint_down(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The IdP calls back at an address nothing listens on; the MCP server falls back to
    polling every second instead of every 30."""
    client = lab.verify.clients.get("iia-mcp-server")
    assert client is not None
    monkeypatch.setattr(client, "backchannel_client_notification_endpoint", dead_url())
    monkeypatch.setattr(lab.mcp.approvals, "ping_fallback", 1.0)
    yield


def test_a_lost_callback_does_not_lose_the_answer(
        lab: Lab, token_requests: TokenRequests, endpoint_down: None) -> None:
    accepted = lab.mcp.pings.accepted
    with phone(lab, plan=True):
        waiting = Waiting(lab, user_token(lab)["access_token"], details_for(lab))
        outcome = waiting.done()
    push = waiting.push
    assert isinstance(outcome, Approval), outcome
    assert [(d.status, d.outcome) for d in delivered(lab, push)] == [("approved", "failed")]
    assert "unreachable" in delivered(lab, push)[0].reason
    assert lab.mcp.pings.accepted == accepted  # no callback reached it: the poll found it
    assert token_requests.of(push.auth_req_id) >= 1 and push.redeemed
