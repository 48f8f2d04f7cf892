"""OpenID CIBA (poll mode) at the simulated Verify: pushes, the phone, and polling answers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from harness.lab import Lab
from harness.lab_client import PhoneApi
from harness.verify.client_auth import Client
from harness.verify.rotation import RotatingClientSecret
from iia.identity import WorkloadIdentity
from tests.helpers import CIBA, bc_authorize, poll, rar, sid_of, user_token


def push(lab: Lab, identity: WorkloadIdentity, **overrides) -> httpx.Response:
    details = overrides.pop("details", None) or rar(lab, "verify_deactivate_user",
                                                    target="u-laura")
    return bc_authorize(lab, identity, overrides.pop("email", "alice@example.com"), details,
                        **overrides)


def test_push_appears_on_the_phone_and_polling_follows_the_answer(
        lab: Lab, identity: WorkloadIdentity) -> None:
    details = rar(lab, "verify_deactivate_user", target="u-laura",
                  summary="Deactivate laura@example.com")
    response = push(lab, identity, details=details, binding="Deactivate Laura? (code 4821)")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_in"] == 120 and body["interval"] >= 1 and body["auth_req_id"]
    phone = httpx.get(f"{lab.verify.base_url}/lab/phone/requests",
                      params={"user": "alice@example.com"}).json()
    mine = [p for p in phone if p["authorization_details"] == [details]]
    assert len(mine) == 1
    item = mine[0]
    assert item["binding_message"] == "Deactivate Laura? (code 4821)" and item["tier"] == 3
    assert "auth_req_id" not in item  # the phone never sees the client's handle

    first = poll(lab, identity, body["auth_req_id"])
    assert first.json()["error"] == "authorization_pending"
    too_fast = poll(lab, identity, body["auth_req_id"])
    assert too_fast.json()["error"] == "slow_down"

    with httpx.Client(timeout=10) as http:  # the user's phone: answers signed by the passkey
        phone = PhoneApi(lab.verify.base_url, http)
        answered = phone.answer(item["id"], True)
        assert answered.json()["status"] == "approved"
        again = phone.answer(item["id"], False)
        assert again.status_code == 409

    time.sleep(1.05)
    tokens = poll(lab, identity, body["auth_req_id"])
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["authorization_details"] == [details]
    assert tokens.json()["id_token"]
    reused = poll(lab, identity, body["auth_req_id"])
    assert reused.json()["error"] == "invalid_grant"
    decisions = [d for d in lab.verify.audit.decisions("ciba") if d.approval_id == item["id"]]
    assert [d.outcome for d in decisions] == ["pending", "approved"]


def test_denied_push_polls_access_denied(lab: Lab, identity: WorkloadIdentity) -> None:
    response = push(lab, identity)
    approval = lab.verify.approvals.by_auth_req_id(response.json()["auth_req_id"])
    lab.verify.ciba.answer(approval.id, approve=False)
    denied = poll(lab, identity, response.json()["auth_req_id"])
    assert denied.status_code == 400 and denied.json()["error"] == "access_denied"


def test_the_receipt_session_lapses_quietly(lab: Lab, identity: WorkloadIdentity) -> None:
    """The session behind a CIBA receipt lives as long as the receipt and ends without a CAEP
    event: revoking the user's sessions later does not list (or signal) old approvals."""
    response = push(lab, identity)
    approval = lab.verify.approvals.by_auth_req_id(response.json()["auth_req_id"])
    lab.verify.ciba.answer(approval.id, approve=True)
    tokens = poll(lab, identity, response.json()["auth_req_id"])
    assert tokens.status_code == 200, tokens.text
    session = lab.verify.sessions.get(sid_of(tokens.json()["id_token"]))
    assert session is not None and session.alive
    assert session.expires_at == pytest.approx(session.created_at + lab.verify.tokens.access_ttl)


def test_unanswered_push_expires(lab: Lab, identity: WorkloadIdentity) -> None:
    response = push(lab, identity, requested_expiry="1")
    assert response.json()["expires_in"] == 1
    time.sleep(1.1)
    expired = poll(lab, identity, response.json()["auth_req_id"])
    assert expired.json()["error"] == "expired_token"
    approval = lab.verify.approvals.by_auth_req_id(response.json()["auth_req_id"])
    with pytest.raises(ValueError, match="expired"):
        lab.verify.ciba.answer(approval.id, approve=True)


@contextmanager
def extra_client(lab: Lab, client_id: str, grant_types: set[str]) -> Iterator[str]:
    """A second confidential client registered at the shared lab's tenant, its secret in Vault;
    yields the secret and unregisters the client (and deletes the secret) on exit."""
    root = lab.openbao.root_client()
    secret = RotatingClientSecret(root, client_id=client_id, kv_mount="ibm-verify",
                                  path=client_id)
    secret.initialize()
    lab.verify.clients.add(Client(client_id=client_id, public=False,
                                  grant_types=frozenset(grant_types), secret=secret))
    try:
        yield root.secrets.kv.v2.read_secret_version(
            path=client_id, mount_point="ibm-verify",
            raise_on_deleted_version=True)["data"]["data"]["client_secret"]
    finally:
        lab.verify.clients.remove(client_id)
        root.secrets.kv.v2.delete_metadata_and_all_versions(path=client_id,
                                                            mount_point="ibm-verify")
    assert lab.verify.clients.get(client_id) is None


def test_another_client_cannot_poll_my_request(lab: Lab, identity: WorkloadIdentity) -> None:
    response = push(lab, identity)
    auth_req_id = response.json()["auth_req_id"]
    mine = lab.verify.approvals.by_auth_req_id(auth_req_id)
    assert mine is not None
    with extra_client(lab, "other-agent", {CIBA}) as secret:
        stolen = httpx.post(f"{lab.verify.issuer}/token", auth=("other-agent", secret), data={
            "grant_type": CIBA, "auth_req_id": auth_req_id})
        assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
        assert "access_token" not in stolen.json()
    # nothing changed: still pending, never polled (no slow_down for its owner), unredeemed
    assert (mine.status, mine.redeemed, mine.last_poll) == ("pending", False, None)
    assert mine in lab.verify.approvals.pending("alice@example.com")
    # the owning client can still poll it, and redeem it once the user approves
    assert poll(lab, identity, auth_req_id).json()["error"] == "authorization_pending"
    lab.verify.ciba.answer(mine.id, approve=True)
    tokens = poll(lab, identity, auth_req_id)
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["authorization_details"] == mine.authorization_details


@pytest.mark.parametrize("case,error", [
    ("no openid scope", "invalid_scope"),
    ("no hint", "invalid_request"),
    ("unknown user", "unknown_user_id"),
    ("no binding message", "invalid_binding_message"),  # CIBA §13
    ("tier 1 needs no approval", "invalid_authorization_details"),
    ("tier 4 cannot be approved", "access_denied"),  # HTTP 403, CIBA §13
    ("two objects", "invalid_authorization_details"),
])
def test_bad_push_requests(lab: Lab, identity: WorkloadIdentity, case: str, error: str) -> None:
    overrides = {
        "no openid scope": {"scope": "profile"},
        "no hint": {"login_hint": None},
        "unknown user": {"email": "nobody@example.com"},
        "no binding message": {"binding": ""},
        "tier 1 needs no approval": {"details": rar(lab, "verify_read_users")},
        "tier 4 cannot be approved": {"details": rar(lab, "verify_delete_user", target="u")},
        "two objects": {"authorization_details": json.dumps(
            [rar(lab, "verify_deactivate_user", target="a"),
             rar(lab, "verify_deactivate_user", target="b")])},
    }[case]
    pending_before = len(lab.verify.approvals.pending())
    response = push(lab, identity, **overrides)
    assert response.json()["error"] == error, response.text
    assert response.status_code == (403 if error == "access_denied" else 400)
    assert len(lab.verify.approvals.pending()) == pending_before  # nothing reached the phone


def test_a_client_not_registered_for_ciba_cannot_push(lab: Lab) -> None:
    pending_before = len(lab.verify.approvals.pending())
    with extra_client(lab, "no-ciba-agent", {"authorization_code"}) as value:
        response = httpx.post(
            f"{lab.verify.issuer}/bc-authorize", auth=("no-ciba-agent", value),
            data={"scope": "openid", "login_hint": "alice@example.com",
                  "binding_message": "Deactivate Laura?",
                  "authorization_details": json.dumps(
                      [rar(lab, "verify_deactivate_user", target="u-laura")])})
    assert response.status_code == 400 and response.json()["error"] == "unauthorized_client"
    assert len(lab.verify.approvals.pending()) == pending_before


def test_session_consent_must_name_a_live_session_of_that_user(
        lab: Lab, identity: WorkloadIdentity) -> None:
    bob_sid = sid_of(user_token(lab, "bob@example.com")["access_token"])
    pending_before = len(lab.verify.approvals.pending())
    response = push(lab, identity, details=rar(lab, "agent_write_consent", session=bob_sid,
                                               duration=1800))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_authorization_details"
    assert len(lab.verify.approvals.pending()) == pending_before  # nothing reached a phone


def test_phone_page_renders(lab: Lab) -> None:
    page = httpx.get(f"{lab.verify.base_url}/lab/phone", follow_redirects=True)
    assert str(page.url).startswith(lab.verify.passkeys.origin)  # localhost: WebAuthn's RP ID
    assert page.status_code == 200 and "IBM Verify (lab phone)" in page.text
