"""A real browser does it (issue #16 item 5): Debian's Chromium, driven by Playwright, with a CDP
virtual authenticator (ctap2, internal transport, resident keys, user verification) enrolls a
passkey from an enrollment link, signs in to the Verify app with it and approves a tier-3 push.
Screenshots are kept in tests/artifacts/browser/ (git-ignored; tests/browser.py)."""

from __future__ import annotations

import time

import httpx

from harness.lab import Lab
from iia.identity import WorkloadIdentity
from tests.browser import (
    add_virtual_authenticator,
    launch,
    requires_chromium,
    screenshot,
    watched_page,
)
from tests.helpers import bc_authorize, rar

ALICE = "alice@example.com"


def invitation(lab: Lab) -> str:
    """Alice, signed in with her phone's passkey, asks for a link to enroll a new device."""
    base = lab.verify.base_url
    started = httpx.post(f"{base}/lab/passkeys/sign-in/options", json={"user": ALICE}).json()
    signed = lab.authenticator.get(started["publicKey"], lab.verify.passkeys.origin,
                                   user_name=ALICE)
    response = httpx.post(f"{base}/lab/enroll/invitations",
                          json={"ceremony": started["ceremony"], "credential": signed})
    assert response.status_code == 200, response.text
    return str(response.json()["url"])


@requires_chromium
def test_enroll_sign_in_and_approve_with_a_virtual_authenticator(
        lab: Lab, identity: WorkloadIdentity) -> None:
    from playwright.sync_api import expect

    alice = lab.verify.directory.user_by_username(ALICE)
    before = {c.credential_id for c in lab.verify.passkeys.store.of_user(alice.id)}
    with launch() as browser, watched_page(browser, "passkeys-4-done") as watched:
        page = watched.page
        add_virtual_authenticator(page)
        page.goto(invitation(lab))
        page.click("#enroll")
        expect(page.locator("#status")).to_contain_text("Passkey enrolled", timeout=30_000)
        screenshot(page, "passkeys-1-enrolled")
        added = {c.credential_id for c in lab.verify.passkeys.store.of_user(alice.id)} \
            - before
        assert len(added) == 1

        page.goto(lab.verify.passkeys.origin + "/lab/phone")
        page.click("#signin")
        expect(page.locator("#who")).to_contain_text("Signed in as", timeout=30_000)
        expect(page.locator("#who")).to_contain_text(ALICE)

        laura = lab.verify.directory.user_by_username("laura@example.com")
        pushed = bc_authorize(lab, identity, ALICE,
                              rar(lab, "verify_deactivate_user", target=laura.id,
                                  summary="Deactivate laura@example.com"),
                              binding="Deactivate Laura Lopez?")
        assert pushed.status_code == 200, pushed.text
        push = lab.verify.approvals.by_auth_req_id(pushed.json()["auth_req_id"])
        card = page.locator(f"[data-push='{push.id}']")
        expect(card).to_contain_text("Laura Lopez <laura@example.com>", timeout=30_000)
        expect(card).to_contain_text("tier 3")
        # a reload keeps the phone signed in, the push listed (it once looked signed out,
        # "No pending requests.", while the push waited and expired unseen)
        page.reload()
        expect(page.locator("#who")).to_contain_text(ALICE, timeout=30_000)
        expect(card).to_contain_text("Laura Lopez <laura@example.com>", timeout=30_000)
        expect(page.locator("#signin")).to_be_hidden()
        expect(page.locator("#empty")).to_be_hidden()
        screenshot(page, "passkeys-2-push-on-the-phone")
        card.locator("button.approve").click()
        expect(page.locator("#status")).to_contain_text("approved", timeout=30_000)
        screenshot(page, "passkeys-3-approved")
    deadline = time.monotonic() + 30
    while push.status == "pending" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert push.status == "approved" and push.user_verified is True
    from harness.verify.passkeys import credential_digest
    assert push.answered_with == credential_digest(next(iter(added)))  # the browser's passkey
