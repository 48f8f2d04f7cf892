"""Shared Playwright helpers for the browser tests: Debian's Chromium, headless, driven through
Playwright's sync API (never a downloaded browser), with every page watched for console errors.

    requires_chromium                  skip marker when /usr/bin/chromium is missing
    launch()                           context manager: a headless Chromium Browser
    watched_page(browser, name)        context manager: a fresh context and page; on a normal
                                       exit it saves `<name>.png` and fails on any console error
                                       or uncaught exception the page logged; on a failure it
                                       saves `<name>-failed.png` and lets the failure through
    screenshot(page, name)             a PNG under ARTIFACTS (tests/artifacts/browser/, git-ignored)
    add_virtual_authenticator(page)    a CDP virtual platform authenticator (CTAP2, internal,
                                       resident keys, user verification that succeeds), for
                                       passkey sign-in and push approval
    add_passkey(page, id, ...)         import an enrolled passkey into it (WebAuthn.addCredential)
    sign_counts(page, id)              its credentials' counters (WebAuthn.getCredentials)

A test module typically has::

    @pytest.fixture(scope="module")
    def browser() -> Iterator[Browser]:
        with launch() as b:
            yield b

    @requires_chromium
    def test_x(browser: Browser) -> None:
        with watched_page(browser, "x", base_url=url) as w:
            w.page.goto("/")
            ...
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.paths import project_root

if TYPE_CHECKING:
    from playwright.sync_api import Browser, CDPSession, ConsoleMessage, Page

__all__ = ["ARTIFACTS", "CHROMIUM", "Watched", "add_passkey", "add_virtual_authenticator",
           "launch", "requires_chromium", "screenshot", "sign_counts", "watched_page"]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = project_root() / "tests" / "artifacts" / "browser"
requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium (/usr/bin/chromium) is not installed: `apt-get install chromium` "
           "enables the browser tests (.ci/run installs it); Playwright never downloads one")


@contextmanager
def launch(*, slow_mo: float = 0) -> Iterator[Browser]:
    """A headless Chromium from /usr/bin/chromium; `--no-sandbox` when running as root (Chromium
    refuses to start its sandbox as root)."""
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args,
                                     slow_mo=slow_mo)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    """A page and what it logged as an error so far (console errors and uncaught exceptions)."""
    page: Page
    errors: list[str] = field(default_factory=list)

    def assert_no_console_errors(self) -> None:
        assert not self.errors, "the page logged errors:\n" + "\n".join(self.errors)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "page"


def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    """Save what the page shows now as ARTIFACTS/<name>.png (kept after the run, not committed)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{_safe(name)}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


@contextmanager
def watched_page(browser: Browser, name: str, *, base_url: str | None = None,
                 width: int = 1440, height: int = 900,
                 tolerate: tuple[str, ...] = ()) -> Iterator[Watched]:
    """A new browser context (its own cookies) and page, watched for console errors. `tolerate`:
    regular expressions of errors a test names and explains (keep it empty; each entry is a
    known defect of a page the test does not own)."""
    context = browser.new_context(base_url=base_url, viewport={"width": width, "height": height})
    page = context.new_page()
    watched = Watched(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            where = message.location.get("url", "")
            line = f"console error: {message.text} ({where})"
            if not any(re.search(t, line) for t in tolerate):
                watched.errors.append(line)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: watched.errors.append(f"uncaught exception: {exc}"))
    try:
        try:
            yield watched
        except BaseException:
            with suppress(Exception):  # the page may be gone; keep the original failure
                screenshot(page, f"{name}-failed")
            raise
        screenshot(page, name)
        watched.assert_no_console_errors()
    finally:
        context.close()


def _cdp(page: Page) -> CDPSession:
    cdp: CDPSession | None = getattr(page, "_iia_webauthn_cdp", None)
    if cdp is None:
        cdp = page.context.new_cdp_session(page)
        setattr(page, "_iia_webauthn_cdp", cdp)  # noqa: B010 - keep it alive with the page
    return cdp


def add_virtual_authenticator(page: Page) -> str:
    """Give the page's browser a CDP virtual authenticator that behaves like a platform passkey
    (WebAuthn.addVirtualAuthenticator: ctap2, internal transport, resident keys, user
    verification, the user verified); returns its authenticatorId. It lives as long as the
    page's CDP session, which is kept on the page."""
    cdp = _cdp(page)
    cdp.send("WebAuthn.enable")
    added = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True}})
    return str(added["authenticatorId"])


def add_passkey(page: Page, authenticator_id: str, *, credential_id: bytes, rp_id: str,
                user_handle: bytes, private_key_pkcs8: bytes, sign_count: int = 0) -> None:
    """Put an existing passkey (a resident credential: its id, RP ID, user handle, PKCS#8 DER
    private key and counter) into the virtual authenticator (WebAuthn.addCredential), so the
    browser can answer a ceremony with a key another authenticator enrolled."""
    b64 = base64.b64encode
    _cdp(page).send("WebAuthn.addCredential", {"authenticatorId": authenticator_id, "credential": {
        "credentialId": b64(credential_id).decode(), "isResidentCredential": True,
        "rpId": rp_id, "privateKey": b64(private_key_pkcs8).decode(),
        "userHandle": b64(user_handle).decode(), "signCount": sign_count}})


def sign_counts(page: Page, authenticator_id: str) -> dict[bytes, int]:
    """Each credential's counter in the virtual authenticator (WebAuthn.getCredentials): after
    the browser signed, the passkey's other holder must move its counter past these."""
    got = _cdp(page).send("WebAuthn.getCredentials", {"authenticatorId": authenticator_id})
    return {base64.b64decode(c["credentialId"]): int(c["signCount"])
            for c in got["credentials"]}
