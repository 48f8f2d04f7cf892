"""The IIA UI in a real browser (Playwright driving Debian's Chromium), as a room would see it:
sign in, then one scenario per tier and the session kill, asserting what a person sees — the
tool card with its tier and target by name, the "awaiting your approval — check your phone"
state until the phone answers, the red refusal with the policy's reason, the chain step that
stopped it, the kill message — and that the page logged no console error. Screenshots land in
tests/artifacts/browser/ (not committed); docs/iia-ui.png is refreshed from `tier4-refused`
when IIA_UPDATE_SCREENSHOT=1.

The lab is this module's own (an in-process `harness.lab.Lab`): the scenarios deactivate a user
and end alice's session, which the suite's shared lab must not see. No ScriptedPhone runs: the
test answers each push itself, once the page shows that it waits for one.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from harness.lab import Lab
from harness.paths import project_root
from harness.phone import ScriptedPhone
from tests.browser import (
    add_passkey,
    add_virtual_authenticator,
    launch,
    requires_chromium,
    screenshot,
    sign_counts,
    watched_page,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [requires_chromium, pytest.mark.timeout(600)]

ALICE = "alice@example.com"
WAIT_MS = 90_000  # generous: a loaded 2-core machine; never a duration the test asserts


@pytest.fixture(scope="module")
def ui_lab() -> Iterator[Lab]:
    with Lab() as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as b:
        yield b


def sign_in(page: Page, lab: Lab, email: str = ALICE) -> None:
    """Sign in as a person would: the chat page's Sign in link, the IdP, back to the chat page.
    When the IdP's sign-in page asks for a passkey (WebAuthn, RP ID localhost), the browser
    answers with a virtual authenticator holding `email`'s passkey, the one the lab enrolled
    in its software authenticator; the software copy's counter is then moved past the
    browser's, as one passkey synced to two devices would be. The one place to adapt when the
    sign-in changes."""
    page.goto("/")
    page.get_by_role("link", name="Sign in").wait_for(timeout=WAIT_MS)
    page.goto(f"/auth/login?login_hint={email}")
    page.wait_for_function("() => document.title.includes('Sign in') || "
                           "document.body.innerText.includes('Signed in as')", timeout=WAIT_MS)
    if page.locator("#passkey-request").count():
        from cryptography.hazmat.primitives import serialization

        from harness.authenticator import for_origin

        origin = lab.verify.passkeys.origin
        software = for_origin(origin)
        passkey = next(p for p in software.passkeys() if p.user_name == email)
        authenticator = add_virtual_authenticator(page)
        add_passkey(page, authenticator, credential_id=passkey.credential_id,
                    rp_id=passkey.rp_id, user_handle=passkey.user_handle,
                    private_key_pkcs8=passkey.private_key.private_bytes(
                        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption()),
                    sign_count=passkey.sign_count)
        page.get_by_role("button", name="Sign in with a passkey").click()
        page.get_by_text(f"Signed in as {email}").wait_for(timeout=WAIT_MS)
        counted = sign_counts(page, authenticator).get(passkey.credential_id, 0)
        passkey.sign_count = max(passkey.sign_count, counted)
    page.get_by_text(f"Signed in as {email}").wait_for(timeout=WAIT_MS)


def ask(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def wait_idle(page: Page) -> None:
    """The turn is over: the Send button is enabled again (or the session ended)."""
    page.wait_for_function(
        "() => !document.getElementById('send').disabled || document.getElementById('killed')",
        timeout=WAIT_MS)


def approve_on_phone(lab: Lab, email: str = ALICE) -> str:
    """Approve the user's one pending push as their phone does (the scripted phone's answer:
    a passkey assertion bound to that push, where the tenant asks for one); returns what the
    push asked (its binding message). The one place to adapt when the phone changes."""
    approvals = getattr(lab.verify, "approvals", None) or lab.verify.ciba.approvals
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        pending = approvals.pending(email)
        if pending:
            push = pending[0]
            if hasattr(lab.verify, "verify_app"):  # answers are signed by the user's passkey
                phone = ScriptedPhone(lab.verify, plan=lambda _: None).start()
                try:
                    phone._answer(push, True)
                finally:
                    phone.stop()
                assert phone.answered, phone.refused
            else:
                lab.verify.ciba.answer(push.id, True)
            return str(push.binding_message)
        time.sleep(0.1)
    raise AssertionError(f"no push for {email} arrived")


def last_card(page: Page, tool: str) -> str:
    card = page.locator(f".card[data-tool={tool}]").last
    card.wait_for(timeout=WAIT_MS)
    return card.inner_text()


def chain_status(page: Page) -> dict[int, str]:
    items = page.locator("#chain li")
    return {int(items.nth(i).get_attribute("data-step") or 0):
            items.nth(i).get_attribute("data-status") or "" for i in range(items.count())}


def test_the_watched_page_fails_on_a_console_error(browser: Browser) -> None:
    """The guard the other tests rely on: a console error is caught, not ignored."""
    with pytest.raises(AssertionError, match="boom"), watched_page(browser, "console-guard") as w:
        w.page.set_content("<script>console.error('boom')</script>")


SHOWN = """() => [...document.querySelectorAll('#log > *')]
  .filter((e) => !(e.classList.contains('assistant') && !e.textContent))
  .map((e) => e.classList.contains('card') ? `card ${e.dataset.tool} ${e.dataset.outcome}`
                                           : `${e.className}: ${e.textContent}`)"""


def test_a_reload_shows_the_conversation_again(ui_lab: Lab, browser: Browser) -> None:
    """A trainer reloads the chat page (here into presenter mode): the conversation of this
    chat session comes back from the server's record of it, in order — each user line, its
    tool card with the outcome, the answer — and the page logs no error. Reads only (this runs
    before the tiers test in the same lab)."""
    with watched_page(browser, "reload", base_url=ui_lab.endpoints["chat"]) as w:
        page = w.page
        sign_in(page, ui_lab)
        for text, tool in (("list users", "list_users"), ("list groups", "list_groups")):
            ask(page, text)
            page.locator(f".card[data-tool={tool}][data-outcome=done]").wait_for(
                timeout=WAIT_MS)
            wait_idle(page)
        before = page.evaluate(SHOWN)
        assert [line.split(":")[0] for line in before] == [
            "msg user", "card list_users done", "msg assistant",
            "msg user", "card list_groups done", "msg assistant"], before
        assert before[0] == "msg user: list users" and "The tenant has" in before[2]

        page.goto("/?present=1")
        page.get_by_text(f"Signed in as {ALICE}").wait_for(timeout=WAIT_MS)
        page.locator(".card[data-tool=list_groups][data-outcome=done]").wait_for(
            timeout=WAIT_MS)
        assert "present" in (page.locator("body").get_attribute("class") or "")
        assert page.evaluate(SHOWN) == before
        card = last_card(page, "list_users")
        assert "T1 read" in card and "done" in card
        assert page.locator("#send").is_enabled()
        page.locator("#chain li[data-step='6'][data-status=ok]").wait_for(timeout=WAIT_MS)
        screenshot(page, "reload-presented")


def test_tiers_and_the_kill_as_a_person_sees_them(ui_lab: Lab, browser: Browser) -> None:
    lab = ui_lab
    ivan = lab.verify.directory.user_by_username("ivan@example.com")
    assert ivan is not None and ivan.active
    with watched_page(browser, "iia-ui", base_url=lab.endpoints["chat"]) as w:
        page = w.page
        sign_in(page, lab)

        # tier 1: a read goes straight through; its card and the seven steps, step 4 not needed
        ask(page, "list users")
        card = last_card(page, "list_users")
        page.locator(".card[data-tool=list_users][data-outcome=done]").last.wait_for(
            timeout=WAIT_MS)
        card = last_card(page, "list_users")
        assert "T1 read" in card and "done" in card and "ms" in card
        wait_idle(page)
        page.locator("#chain li[data-step='6'][data-status=ok]").wait_for(timeout=WAIT_MS)
        steps = chain_status(page)
        assert steps == {1: "ok", 2: "ok", 3: "ok", 4: "skipped", 5: "ok", 6: "ok", 7: "ok"}
        assert "authorization_details" in page.locator("#token").inner_text()
        row = page.locator("#events .row", has_text="list_users").first
        row.wait_for(timeout=WAIT_MS)
        assert ALICE in row.inner_text() and "Read SCIM users" in row.inner_text()
        screenshot(page, "tier1-read")

        # tier 2: a write waits for the phone (once per session), then goes through
        ask(page, "create user yara@example.com Yara Young")
        waiting = page.locator(".card[data-tool=create_user] .waiting")
        waiting.wait_for(timeout=WAIT_MS)
        assert "Awaiting your approval — check your phone" in waiting.inner_text()
        screenshot(page, "tier2-awaiting")
        asked = approve_on_phone(lab)
        assert "yara@example.com" in asked
        page.locator(".card[data-tool=create_user][data-outcome=done]").wait_for(
            timeout=WAIT_MS)
        card = last_card(page, "create_user")
        assert "T2 write" in card and "yara@example.com" in card
        assert page.locator(".card[data-tool=create_user] .waiting").count() == 0
        wait_idle(page)
        assert lab.verify.directory.user_by_username("yara@example.com") is not None

        # tier 3: a sensitive write waits for this call's approval; the target is named
        ask(page, "deactivate ivan@example.com")
        waiting = page.locator(".card[data-tool=deactivate_user] .waiting")
        waiting.wait_for(timeout=WAIT_MS)
        assert re.search(r"check your phone \(\d+ s left\)", waiting.inner_text())
        approve_on_phone(lab)
        page.locator(".card[data-tool=deactivate_user][data-outcome=done]").wait_for(
            timeout=WAIT_MS)
        card = last_card(page, "deactivate_user")
        assert "T3 sensitive" in card and "ivan@example.com" in card
        wait_idle(page)
        page.locator("#chain li[data-step='4'][data-status=ok]").wait_for(timeout=WAIT_MS)
        ivan = lab.verify.directory.user_by_username("ivan@example.com")
        assert ivan is not None and ivan.active is False
        # the panel names the person (iia.people: from this session's reads), never the id
        row = page.locator("#events .row", has_text="deactivate_user").first
        row.wait_for(timeout=WAIT_MS)
        assert "Ivan Ivanov <ivan@example.com>" in row.inner_text()
        assert ivan.id and ivan.id not in page.locator("#events").inner_text()

        # tier 4: refused by the IdP's policy, red, with its reason; the chain stopped at step 5
        ask(page, "delete bob@example.com")
        refused = page.locator(".card[data-tool=delete_user][data-outcome=refused]")
        refused.wait_for(timeout=WAIT_MS)
        text = refused.inner_text()
        assert "T4 blocked" in text and "access_denied" in text and "policy" in text
        wait_idle(page)
        page.locator("#chain li[data-step='5'][data-status=stopped]").wait_for(
            timeout=WAIT_MS)
        assert chain_status(page) == {1: "ok", 2: "ok", 3: "ok", 4: "skipped", 5: "stopped",
                                      6: "not_reached", 7: "ok"}
        denied = page.locator("#events .row.denied", has_text="delete_user").first
        denied.wait_for(timeout=WAIT_MS)
        assert "policy" in denied.locator(".reason").inner_text()
        assert lab.verify.directory.user_by_username("bob@example.com") is not None
        shot = screenshot(page, "tier4-refused")
        if os.environ.get("IIA_UPDATE_SCREENSHOT") == "1":
            shutil.copy(shot, project_root() / "docs" / "iia-ui.png")

        # a second tier-4 attempt crosses Antenna's anomaly rule: the session is killed, and
        # the next call is refused at step 1 with the kill message
        ask(page, "delete bob@example.com")
        page.locator(".card[data-tool=delete_user][data-outcome=refused]").nth(1).wait_for(
            timeout=WAIT_MS)
        wait_idle(page)
        deadline = time.monotonic() + WAIT_MS / 1000
        while page.locator("#killed").count() == 0 and time.monotonic() < deadline:
            if page.locator("#send").is_enabled():
                ask(page, "list users")
            wait_idle(page)
        killed = page.locator("#killed")
        assert "session was ended" in killed.inner_text()
        assert page.locator("#message").is_disabled()
        assert chain_status(page)[1] == "stopped"
        assert lab.verify.directory.user_by_username("bob@example.com") is not None


def test_a_failed_calls_row_counts_its_duration_once(ui_lab: Lab, browser: Browser) -> None:
    """A push that expired, then the call's agent:tool_error (which carries the whole call's
    duration): the row says the call's duration, not the two added (once 110112 ms for a
    55 s call)."""
    with watched_page(browser, "row-duration", base_url=ui_lab.endpoints["chat"]) as w:
        page = w.page
        page.goto("/")
        page.get_by_role("link", name="Sign in").wait_for(timeout=WAIT_MS)
        shown = page.evaluate("""() => {
          const r = rowFor("test-call");
          const at = new Date().toISOString();
          r.events = [
            {type: "agent:push_pending", outcome: "pending", durationMs: 0, timestamp: at},
            {type: "agent:hitl_expired", outcome: "expired", durationMs: 55053, timestamp: at,
             reason: "alice@example.com did not answer the push in time"},
            {type: "agent:tool_error", outcome: "error", durationMs: 55059, timestamp: at}];
          r.first = {...r.events[0], userEmail: "alice@example.com", toolName: "create_user"};
          renderRow(r);
          return r.node.querySelector(".line1 .ms").textContent;
        }""")
        assert shown == "55059 ms"


def test_the_chain_view_follows_a_call_waiting_for_approval(ui_lab: Lab,
                                                            browser: Browser) -> None:
    """While a write's push waits, the chain view shows that call at step 4, not the last call
    that ended (a walkthrough saw list_users 'went through' while create_user waited)."""
    with watched_page(browser, "chain-waiting", base_url=ui_lab.endpoints["chat"]) as w:
        page = w.page
        page.goto("/")
        page.get_by_role("link", name="Sign in").wait_for(timeout=WAIT_MS)
        page.evaluate("""() => {
          makeCard({id: "c1", phase: "start", name: "create_user", tier: 2,
                    summary: "Create user Yara Young <yara@example.com>"});
          onApproval({type: "agent:push_pending", outcome: "pending", expiresInS: 60});
        }""")
        caption = page.locator("#chain .caption").inner_text()
        assert "create_user" in caption and "waiting at step 4" in caption
        assert chain_status(page) == {1: "ok", 2: "ok", 3: "ok", 4: "waiting",
                                      5: "not_reached", 6: "not_reached", 7: "not_reached"}


def test_presenter_mode_by_query_and_toggle(ui_lab: Lab, browser: Browser) -> None:
    with watched_page(browser, "presenter", base_url=ui_lab.endpoints["chat"]) as w:
        page = w.page
        page.goto("/?present=1")
        page.get_by_role("link", name="Sign in").wait_for(timeout=WAIT_MS)
        assert "present" in (page.locator("body").get_attribute("class") or "")
        big = page.evaluate("getComputedStyle(document.body).fontSize")
        page.get_by_role("button", name="Normal view").click()
        assert "present" not in (page.locator("body").get_attribute("class") or "")
        normal = page.evaluate("getComputedStyle(document.body).fontSize")
        assert float(big.rstrip("px")) > float(normal.rstrip("px"))
        # presented, then signed in (the IdP and back to "/"): still presented
        page.get_by_role("button", name="Presenter mode").click()
        sign_in(page, ui_lab)
        page.get_by_role("button", name="Normal view").wait_for(timeout=WAIT_MS)
        assert "present" in (page.locator("body").get_attribute("class") or "")


def test_console_page_shows_every_call(ui_lab: Lab, browser: Browser) -> None:
    """The console at `/`: the same panel for everyone's calls, no chat; after the scenarios
    above (or at least after a call of its own) it shows rows and the last call's steps."""
    url = ui_lab.endpoints["console"]
    with watched_page(browser, "console", base_url=url) as w:
        page = w.page
        page.goto("/")
        page.get_by_text("IIA security console").wait_for(timeout=WAIT_MS)
        assert page.locator("#ask").is_hidden()
        page.locator("#events .row").first.wait_for(timeout=WAIT_MS)
        page.locator("#chain li").first.wait_for(timeout=WAIT_MS)
