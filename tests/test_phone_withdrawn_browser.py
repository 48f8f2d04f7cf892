"""The phone, in a real browser, when the agent's call is cancelled (issue #18 item 2): Debian's
Chromium, driven by Playwright, signs alice in to the Verify app's phone page (/lab/phone) with
her passkey (a CDP virtual authenticator holding the one the lab enrolled), and shows the push a
tier-2 call asked for. The MCP client then cancels the call (`notifications/cancelled`, or it
just goes away): the push is withdrawn at the IdP, and the card the person is looking at turns
into a withdrawn card with nothing to answer, while nothing was exchanged or written.
Screenshots land in tests/artifacts/browser/ (git-ignored; tests/browser.py)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from harness.authenticator import for_origin
from harness.lab import Lab
from tests.browser import (
    add_passkey,
    add_virtual_authenticator,
    launch,
    requires_chromium,
    screenshot,
    sign_counts,
    watched_page,
)
from tests.helpers import user_token
from tests.test_long_calls import LEGACY, _cancel, _raw_call, created, push_for, until

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [requires_chromium, pytest.mark.timeout(600)]

ALICE = "alice@example.com"
WAIT_MS = 90_000  # generous: a loaded 2-core machine; never a duration the test asserts


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as b:
        yield b


def phone_signed_in(page: Page, lab: Lab) -> None:
    """Alice's phone page, signed in with her passkey: the software authenticator's key put
    into the browser's virtual one; afterwards the software copy's counter is moved past the
    browser's, as one passkey synced to two devices would be (the suite signs in with it)."""
    from cryptography.hazmat.primitives import serialization
    from playwright.sync_api import expect

    origin = lab.verify.passkeys.origin
    passkey = next(p for p in for_origin(origin).passkeys() if p.user_name == ALICE)
    authenticator = add_virtual_authenticator(page)
    add_passkey(page, authenticator, credential_id=passkey.credential_id,
                rp_id=passkey.rp_id, user_handle=passkey.user_handle,
                private_key_pkcs8=passkey.private_key.private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()),
                sign_count=passkey.sign_count)
    page.goto(origin + "/lab/phone")
    page.click("#signin")
    expect(page.locator("#who")).to_contain_text("Signed in as", timeout=WAIT_MS)
    expect(page.locator("#who")).to_contain_text(ALICE)
    counted = sign_counts(page, authenticator).get(passkey.credential_id, 0)
    passkey.sign_count = max(passkey.sign_count, counted)


def _disconnecting_call(lab: Lab, token: str, args: dict[str, str],
                        gone: threading.Event) -> threading.Thread:
    """A tools/call whose client goes away (closes the connection) once `gone` is set."""
    async def go() -> None:
        async with httpx.AsyncClient(timeout=120) as http:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(lambda: http.post(lab.mcp_url, json={
                        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
                        "params": {"name": "create_user", "arguments": args}}, headers={
                        "Authorization": f"Bearer {token}", "Accept": "application/json",
                        "MCP-Protocol-Version": LEGACY}))
                    while not gone.is_set():
                        await anyio.sleep(0.05)
                    scope.cancel()  # the request task ends: httpx closes the connection

    thread = threading.Thread(target=lambda: anyio.run(go), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("how", ["cancelled", "disconnected"])
def test_the_phone_card_turns_withdrawn_when_the_call_is_cancelled(
        lab: Lab, browser: Browser, how: str) -> None:
    from playwright.sync_api import expect

    token = user_token(lab)["access_token"]  # a new session: its first write asks for consent
    name = f"phone-{how}-{secrets.token_hex(4)}@example.com"
    args = {"user_name": name, "given_name": "Phone", "family_name": "Withdrawn"}
    audit_before = len(lab.verify.audit)
    with watched_page(browser, f"phone-withdrawn-{how}") as watched:
        page = watched.page
        phone_signed_in(page, lab)

        request_id = f"phone-{secrets.token_hex(3)}"
        gone = threading.Event()
        out: list[httpx.Response] = []
        thread = (_raw_call(lab, token, request_id, args, out) if how == "cancelled"
                  else _disconnecting_call(lab, token, args, gone))
        push = until(lambda: push_for(lab, name), "the push on the phone")
        card = page.locator(f".card[data-push='{push.id}']")
        expect(card).to_contain_text(name, timeout=WAIT_MS)
        expect(card.locator("button.approve")).to_be_visible()
        screenshot(page, f"phone-withdrawn-{how}-1-pending")

        if how == "cancelled":
            assert _cancel(lab, token, request_id).status_code == 202
        else:
            gone.set()
        thread.join(WAIT_MS / 1000)
        assert not thread.is_alive()

        expect(card).to_have_class("card withdrawn", timeout=WAIT_MS)
        expect(card).to_contain_text("Withdrawn: the agent cancelled this request")
        expect(card).to_contain_text("nothing to answer")
        expect(card.locator("button")).to_have_count(0)  # no Approve, no Deny
        expect(page.locator(f".card[data-push='{push.id}']")).to_have_count(1)
        screenshot(page, f"phone-withdrawn-{how}-2-withdrawn")

    assert lab.verify.approvals.get(push.id).status == "withdrawn"  # type: ignore[union-attr]
    assert not created(lab, name)
    decisions = lab.verify.audit.since(audit_before)
    assert not [d for d in decisions if d.kind in ("token_exchange", "admin_api")], decisions
    assert [d for d in decisions if d.kind == "ciba" and d.outcome == "withdrawn"
            and d.approval_id == push.id]
    if how == "cancelled":
        assert out and out[0].status_code == 200, out
        result = out[0].json()["result"]
        assert result["isError"] is True and "[call_cancelled]" in result["content"][0]["text"]
