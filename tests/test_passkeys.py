"""Passkeys at the simulated Verify (issue #16): enrollment and sign-in ceremonies, and the
push answered only by a passkey assertion bound to it. Every refused answer is asserted on the
wire (error code and words) AND by the push being exactly as it was."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

from harness.authenticator import SoftwareAuthenticator, b64url, from_b64url
from harness.lab import Lab
from harness.lab_client import PhoneApi
from harness.paths import fixtures_dir
from harness.verify.approvals import PushRequest
from harness.verify.login import login, passkey_request
from harness.verify.passkeys import (
    RP_ID,
    challenge_binding_view,
    credential_digest,
    push_challenge,
)
from iia.identity import WorkloadIdentity
from tests.helpers import bc_authorize, poll, rar, wait_for

ALICE, BOB = "alice@example.com", "bob@example.com"


@pytest.fixture
def push(lab: Lab, identity: WorkloadIdentity) -> Iterator[PushRequest]:
    """A fresh tier-3 push to alice (deactivate laura), expired at the end if still pending."""
    laura = lab.verify.directory.user_by_username("laura@example.com")
    details = rar(lab, "verify_deactivate_user", target=laura.id,
                  summary="Deactivate laura@example.com")
    response = bc_authorize(lab, identity, ALICE, details, binding="Deactivate Laura? (4821)")
    assert response.status_code == 200, response.text
    found = lab.verify.approvals.by_auth_req_id(response.json()["auth_req_id"])
    assert found is not None
    yield found
    if found.status == "pending":
        found.expires_at = 0


def snapshot(push: PushRequest) -> dict[str, Any]:
    return copy.deepcopy(asdict(push))


def app_url(lab: Lab, push_id: str, what: str) -> str:
    return f"{lab.verify.base_url}/lab/phone/requests/{push_id}/{what}"


def options(lab: Lab, push_id: str, answer: str = "approve") -> dict[str, Any]:
    response = httpx.post(app_url(lab, push_id, "options"), json={"answer": answer})
    assert response.status_code == 200, response.text
    return response.json()["publicKey"]


def answer(lab: Lab, push_id: str, credential: dict[str, Any] | None,
           answer: str = "approve") -> httpx.Response:
    body: dict[str, Any] = {"answer": answer}
    if credential is not None:
        body["credential"] = credential
    return httpx.post(app_url(lab, push_id, "answer"), json=body)


def origin(lab: Lab) -> str:
    return lab.verify.passkeys.origin


def sign(lab: Lab, push_id: str, answer_: str = "approve", **forge: Any) -> dict[str, Any]:
    return lab.authenticator.get(options(lab, push_id, answer_), forge.pop("at", origin(lab)),
                                 **forge)


def refused(response: httpx.Response, status: int, error: str, words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == error and words in body["error_description"], body


def unchanged(lab: Lab, push: PushRequest, before: dict[str, Any]) -> None:
    now = lab.verify.approvals.get(push.id)
    assert now is not None and snapshot(now) == before
    assert now.status == "pending" and now.answered_with is None
    assert not [a for a in lab.verify.approvals.call_approvals() if a.id == push.id]


# -- the ceremonies ---------------------------------------------------------------------------

def test_every_demo_user_has_a_passkey_and_the_tenant_only_its_public_key(lab: Lab) -> None:
    # the fixtures' people, enrolled when the lab started (a user another test creates in this
    # shared lab later has no passkey until enrolled, as in a real tenant)
    demo = {u["userName"] for u in json.loads((fixtures_dir() / "tenant" / "users.json")
                                              .read_text())}
    active = [u for u in lab.verify.directory.users() if u.active and u.user_name in demo]
    assert active
    store = lab.verify.passkeys.store
    for user in active:
        mine = store.of_user(user.id)
        assert len(mine) >= 1, user.user_name
        assert all(c.public_key and c.sign_count >= 0 for c in mine)
    held = {p.user_name for p in lab.authenticator.passkeys(RP_ID)}
    assert {u.user_name for u in active} <= held
    # what the tenant stores has no private part: a COSE EC2 public key (kty 2, no 'd' = -4)
    import cbor2
    cose = cbor2.loads(store.of_user(active[0].id)[0].public_key)
    assert cose[1] == 2 and cose[3] == -7 and -4 not in cose


def test_registration_then_sign_in_with_a_new_authenticator(lab: Lab) -> None:
    user = lab.verify.directory.user_by_username("carol@example.com")
    rp = lab.verify.passkeys
    device = SoftwareAuthenticator()
    started = rp.registration_options(user.id, user.user_name, user.display_name)
    assert started["publicKey"]["authenticatorSelection"]["userVerification"] == "required"
    stored = rp.register(started["ceremony"], device.create(started["publicKey"], rp.origin))
    assert stored.user_id == user.id and stored.sign_count == 0
    ceremony = rp.authentication_options(None)
    assert ceremony["publicKey"]["userVerification"] == "required"
    signed = device.get(ceremony["publicKey"], rp.origin)
    verified = rp.sign_in(ceremony["ceremony"], signed)
    assert verified.user_id == user.id and verified.user_verified
    assert rp.store.get(stored.credential_id).sign_count == 1
    # the ceremony's challenge is single-use: the same response again is refused
    with pytest.raises(Exception, match="no authentication ceremony"):
        rp.sign_in(ceremony["ceremony"], signed)


def test_enrollment_over_http_needs_a_signed_in_user(lab: Lab) -> None:
    base = lab.verify.base_url
    nobody = httpx.post(f"{base}/lab/enroll/invitations", json={"ceremony": "x"})
    refused(nobody, 400, "assertion_required", "no assertion")
    started = httpx.post(f"{base}/lab/passkeys/sign-in/options", json={"user": BOB}).json()
    signed = lab.authenticator.get(started["publicKey"], origin(lab), user_name=BOB)
    invite = httpx.post(f"{base}/lab/enroll/invitations",
                        json={"ceremony": started["ceremony"], "credential": signed})
    assert invite.status_code == 200, invite.text
    assert invite.json()["user"].endswith(f"<{BOB}>")
    code = invite.json()["url"].split("code=")[1]
    assert invite.json()["url"].startswith(origin(lab) + "/lab/enroll?")
    creation = httpx.post(f"{base}/lab/enroll/options", json={"code": code}).json()
    device = SoftwareAuthenticator()
    made = device.create(creation["publicKey"], origin(lab))
    enrolled = httpx.post(f"{base}/lab/enroll", json={"code": code, "ceremony":
                                                     creation["ceremony"], "credential": made})
    assert enrolled.status_code == 200 and enrolled.json()["enrolled"], enrolled.text
    bob = lab.verify.directory.user_by_username(BOB)
    assert from_b64url(made["rawId"]) in {c.credential_id
                                          for c in lab.verify.passkeys.store.of_user(bob.id)}
    # the tenant's SSF transmitter says so: CAEP credential-change (fido2-platform, create)
    change = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
    got = wait_for(lambda: next((c for c in lab.mcp.ssf.received if change in c["events"]
                                 and c["sub_id"].get("sub") == bob.id), None),
                   "the credential-change SET", timeout=30)
    assert got["events"][change]["change_type"] == "create"
    again = httpx.post(f"{base}/lab/enroll", json={"code": code, "ceremony": "y",
                                                  "credential": made})
    refused(again, 401, "invalid_assertion", "enrollment link is unknown, used or expired")


def test_the_authorization_code_flow_ends_in_a_passkey_assertion(lab: Lab) -> None:
    with httpx.Client() as http:
        start = http.get(f"{lab.verify.issuer}/authorize", params={
            "response_type": "code", "client_id": "iia-ui", "scope": "openid",
            "redirect_uri": "http://127.0.0.1:5555/callback", "state": "s",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256", "login_hint": ALICE})
        assert start.status_code == 302  # to the page at localhost (WebAuthn refuses IPs)
        assert start.headers["location"].startswith(origin(lab) + "/oidc/endpoint/default/")
        page = http.get(start.headers["location"])
        assert page.status_code == 200 and "Sign in with a passkey" in page.text
        request = passkey_request(page.text)
        assert request is not None and request["publicKey"]["rpId"] == RP_ID
        form = {**request["form"], "passkey_ceremony": request["ceremony"]}
        # without an assertion (the old login_hint-logs-anyone-in): refused, no code
        bare = http.post(request["action"], data=form)
        assert bare.status_code == 302
        assert "error=access_denied" in bare.headers["location"]
        assert "code=" not in bare.headers["location"]
    tokens = login(lab.verify.issuer, ALICE, resource=lab.mcp_url)
    assert tokens["access_token"] and tokens["id_token"]
    allowed = [d for d in lab.verify.audit.decisions("login") if d.outcome == "allowed"]
    assert allowed[-1].user == ALICE


def test_another_users_passkey_cannot_sign_in_as_the_hinted_user(lab: Lab) -> None:
    started = lab.verify.passkeys.authentication_options(
        lab.verify.directory.user_by_username(ALICE).id)
    # bob's passkey answers a ceremony that allows only alice's credentials
    bob_options = {**started["publicKey"], "allowCredentials": []}
    signed = lab.authenticator.get(bob_options, origin(lab), user_name=BOB)
    with pytest.raises(Exception, match="belongs to another user"):
        lab.verify.passkeys.sign_in(started["ceremony"], signed)


# -- answering a push -------------------------------------------------------------------------

def test_approve_with_a_bound_assertion(lab: Lab, push: PushRequest,
                                        identity: WorkloadIdentity) -> None:
    signed = sign(lab, push.id)
    view = challenge_binding_view(push, signed)
    assert view["bound"] and view["clientDataJSON.challenge"] == view["digest"]
    assert view["digest"] == b64url(push_challenge(push.auth_req_id, push.binding_message,
                                                   push.authorization_details, True))
    response = answer(lab, push.id, signed)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "approved" and body["user_verified"] is True
    digest = credential_digest(from_b64url(signed["rawId"]))
    assert body["answered_with"] == digest
    # the phone names people, not ids: laura by name and e-mail
    laura = lab.verify.directory.user_by_username("laura@example.com")
    assert body["names"]["target"] == f"{laura.display_name} <laura@example.com>"
    assert push.authorization_details[0]["target"] not in json.dumps(body["names"])
    decision = [d for d in lab.verify.audit.decisions("passkey") if d.approval_id == push.id]
    assert decision and decision[-1].details == {"credentialIdDigest": digest,
                                                 "userVerified": True}
    # the approval takes effect when the MCP server redeems it, not at the tap
    assert not [a for a in lab.verify.approvals.call_approvals() if a.id == push.id]
    assert poll(lab, identity, push.auth_req_id).status_code == 200
    assert [a for a in lab.verify.approvals.call_approvals() if a.id == push.id]


def test_deny_with_a_bound_assertion(lab: Lab, push: PushRequest) -> None:
    response = answer(lab, push.id, sign(lab, push.id, "deny"), "deny")
    assert response.status_code == 200 and response.json()["status"] == "denied"
    assert not [a for a in lab.verify.approvals.call_approvals() if a.id == push.id]


def test_no_assertion(lab: Lab, push: PushRequest) -> None:
    before = snapshot(push)
    refused(answer(lab, push.id, None), 400, "assertion_required", "no assertion")
    old = httpx.post(app_url(lab, push.id, "approve"))  # the unauthenticated endpoint is gone
    assert old.status_code in (404, 405)
    unchanged(lab, push, before)


def test_an_assertion_for_another_push(lab: Lab, identity: WorkloadIdentity,
                                       push: PushRequest) -> None:
    other = bc_authorize(lab, identity, ALICE, rar(lab, "verify_revoke_user_sessions",
                                                   target=push.authorization_details[0]
                                                   ["target"]), binding="Sign Laura out?")
    assert other.status_code == 200, other.text
    other_push = lab.verify.approvals.by_auth_req_id(other.json()["auth_req_id"])
    try:
        before = snapshot(push)
        signed_for_other = sign(lab, other_push.id)
        refused(answer(lab, push.id, signed_for_other), 401, "invalid_assertion",
                "challenge was not expected challenge")
        unchanged(lab, push, before)
    finally:
        other_push.expires_at = 0


def test_an_approve_assertion_cannot_deny_and_back(lab: Lab, push: PushRequest) -> None:
    before = snapshot(push)
    refused(answer(lab, push.id, sign(lab, push.id, "approve"), "deny"), 401,
            "invalid_assertion", "challenge was not expected challenge")
    unchanged(lab, push, before)


def test_another_users_credential(lab: Lab, push: PushRequest) -> None:
    before = snapshot(push)
    opts = {**options(lab, push.id), "allowCredentials": []}
    bobs = lab.authenticator.get(opts, origin(lab), user_name=BOB)
    refused(answer(lab, push.id, bobs), 401, "invalid_assertion", "belongs to another user")
    unchanged(lab, push, before)


def test_another_origin(lab: Lab, push: PushRequest) -> None:
    before = snapshot(push)
    for elsewhere in ("http://127.0.0.1:" + origin(lab).rsplit(":", 1)[1],
                      "http://localhost:1", "https://evil.example"):
        refused(answer(lab, push.id, sign(lab, push.id, at=elsewhere)), 401,
                "invalid_assertion", "Unexpected client data origin")
    unchanged(lab, push, before)


def test_another_rp_id(lab: Lab, push: PushRequest) -> None:
    before = snapshot(push)
    alice = next(p for p in lab.authenticator.passkeys(RP_ID) if p.user_name == ALICE)
    forger = SoftwareAuthenticator()
    forger._passkeys = [copy.copy(alice)]
    forger._passkeys[0].rp_id = "evil.example"  # the same key, signing for another RP ID
    forger._passkeys[0].sign_count = alice.sign_count + 100
    opts = {**options(lab, push.id), "rpId": "evil.example"}
    refused(answer(lab, push.id, forger.get(opts, origin(lab))), 401, "invalid_assertion",
            "Unexpected RP ID hash")
    unchanged(lab, push, before)


def test_a_replayed_assertion(lab: Lab, identity: WorkloadIdentity) -> None:
    """The same signed approval presented to a second push with the same content: the
    challenge differs (auth_req_id), and to the same push twice: answered once."""
    laura = lab.verify.directory.user_by_username("laura@example.com")
    details = rar(lab, "verify_deactivate_user", target=laura.id, summary="Deactivate laura")
    first = bc_authorize(lab, identity, ALICE, details, binding="Deactivate Laura?")
    second = bc_authorize(lab, identity, ALICE, details, binding="Deactivate Laura?")
    one = lab.verify.approvals.by_auth_req_id(first.json()["auth_req_id"])
    two = lab.verify.approvals.by_auth_req_id(second.json()["auth_req_id"])
    try:
        signed = sign(lab, one.id)
        assert answer(lab, one.id, signed).status_code == 200
        before = snapshot(two)
        refused(answer(lab, two.id, signed), 401, "invalid_assertion",
                "challenge was not expected challenge")
        unchanged(lab, two, before)
        answered = snapshot(one)
        refused(answer(lab, one.id, signed), 409, "conflict", "already approved")
        assert snapshot(lab.verify.approvals.get(one.id)) == answered
    finally:
        two.expires_at = 0


def test_an_older_assertion_is_refused_by_the_counter(lab: Lab, push: PushRequest) -> None:
    """An assertion for this very push whose sign counter the tenant has since seen pass
    (the user signed in meanwhile): a replay, refused."""
    before = snapshot(push)
    stale = sign(lab, push.id)  # counter n, held back
    ceremony = lab.verify.passkeys.authentication_options(push.user_id)
    lab.verify.passkeys.sign_in(ceremony["ceremony"], lab.authenticator.get(
        ceremony["publicKey"], origin(lab), user_name=ALICE))  # counter n+1, seen
    refused(answer(lab, push.id, stale), 401, "invalid_assertion", "sign count")
    unchanged(lab, push, before)


def test_a_counter_that_went_backwards(lab: Lab, push: PushRequest) -> None:
    before = snapshot(push)
    ceremony = lab.verify.passkeys.authentication_options(push.user_id)  # the tenant sees n>=1
    lab.verify.passkeys.sign_in(ceremony["ceremony"], lab.authenticator.get(
        ceremony["publicKey"], origin(lab), user_name=ALICE))
    stored = lab.verify.passkeys.store.of_user(push.user_id)[0]
    assert stored.sign_count >= 1
    cloned = sign(lab, push.id, sign_count=stored.sign_count - 1)
    refused(answer(lab, push.id, cloned), 401, "invalid_assertion", "sign count")
    equal = sign(lab, push.id, sign_count=lab.verify.passkeys.store.get(
        stored.credential_id).sign_count)
    refused(answer(lab, push.id, equal), 401, "invalid_assertion", "sign count")
    unchanged(lab, push, before)


def test_uv_missing(lab: Lab, push: PushRequest) -> None:
    before = snapshot(push)
    refused(answer(lab, push.id, sign(lab, push.id, user_verified=False)), 401,
            "invalid_assertion", "User verification is required")
    unchanged(lab, push, before)


def test_a_forged_signature(lab: Lab, push: PushRequest) -> None:
    before = snapshot(push)
    signed = sign(lab, push.id)
    signature = bytearray(from_b64url(signed["response"]["signature"]))
    signature[-1] ^= 1
    signed["response"]["signature"] = b64url(bytes(signature))
    refused(answer(lab, push.id, signed), 401, "invalid_assertion", "signature")
    unchanged(lab, push, before)


def test_a_push_answered_twice(lab: Lab, push: PushRequest) -> None:
    assert answer(lab, push.id, sign(lab, push.id, "deny"), "deny").status_code == 200
    after = snapshot(lab.verify.approvals.get(push.id))
    options_again = httpx.post(app_url(lab, push.id, "options"), json={"answer": "approve"})
    refused(options_again, 409, "conflict", "already denied")
    with_old_options = lab.authenticator.get(
        {"challenge": b64url(push_challenge(push.auth_req_id, push.binding_message,
                                            push.authorization_details, True)),
         "rpId": RP_ID, "allowCredentials": []}, origin(lab), user_name=ALICE)
    refused(answer(lab, push.id, with_old_options), 409, "conflict", "already denied")
    assert snapshot(lab.verify.approvals.get(push.id)) == after
    assert lab.verify.approvals.get(push.id).status == "denied"


def test_phone_api_answers_through_the_signed_path(lab: Lab, push: PushRequest) -> None:
    with httpx.Client(timeout=10) as http:
        phone = PhoneApi(lab.verify.base_url, http)
        shown = [p for p in phone.pending(ALICE) if p["id"] == push.id]
        assert shown and shown[0]["display_name"] and "auth_req_id" not in shown[0]
        response = phone.answer(push.id, True)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved" and response.json()["answered_with"]


def test_the_verify_app_lists_only_the_signed_in_users_pushes(lab: Lab,
                                                             push: PushRequest) -> None:
    base = lab.verify.base_url
    assert httpx.get(f"{base}/lab/phone/me").status_code == 401
    with httpx.Client() as app:
        started = app.post(f"{base}/lab/passkeys/sign-in/options").json()
        signed = lab.authenticator.get({**started["publicKey"]}, origin(lab), user_name=BOB)
        assert app.post(f"{base}/lab/phone/session", json={
            "ceremony": started["ceremony"], "credential": signed}).status_code == 200
        bobs = app.get(f"{base}/lab/phone/me").json()
        assert bobs["user"].endswith(f"<{BOB}>")
        assert push.id not in [p["id"] for p in bobs["pushes"]]
    page = httpx.get(f"{base}/lab/phone")
    assert page.status_code == 302 and page.headers["location"] == origin(lab) + "/lab/phone"
