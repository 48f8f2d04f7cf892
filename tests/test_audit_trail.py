"""The durable audit trail (issue #20): the journal's rotation, reading and redaction; the
security panel's history from it, mine or all (only administrators see all). The whole story
of a refused call after `iia-lab down` and `up` is in tests/test_audit_cli.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.lab import Lab
from iia.antenna.event_types import FOR_BUS_EVENT
from iia.audit_report import AuditQueryError, parse_since
from iia.audit_trail import (
    EVENTS,
    AuditJournal,
    AuditSettings,
    read_records,
    read_records_newest_first,
    record_events,
)
from iia.errors import ConfigurationError
from tests.test_chat_route import sign_in

# built at run time: test_no_secrets_at_rest refuses a JWT-shaped literal in a committed file
JWT = ".".join(["eyJhbGciOiJFUzI1NiJ9", "eyJzdWIiOiJhbGljZSJ9", "c2lnbmF0dXJlLXNpZ25hdHVyZQ"])


def test_the_journal_rotates_by_size_and_reads_back_oldest_first(tmp_path: Path) -> None:
    journal = AuditJournal(tmp_path / EVENTS, max_bytes=400, keep=2)
    try:
        for n in range(40):
            journal.append({"record": "event", "n": n, "pad": "x" * 20})
            assert journal.flush()  # one batch each: the file grows past max_bytes in steps
    finally:
        journal.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [EVENTS, EVENTS + ".1", EVENTS + ".2"]  # keep=2: older ones deleted
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in tmp_path.iterdir())
    numbers = [r["n"] for r in read_records(tmp_path, EVENTS)]
    assert numbers == sorted(numbers) and numbers[-1] == 39 and numbers[0] > 0
    assert [r["n"] for r in read_records_newest_first(tmp_path, EVENTS)] == numbers[::-1]


def test_a_torn_line_is_skipped_and_nothing_token_shaped_is_written(tmp_path: Path) -> None:
    journal = AuditJournal(tmp_path / EVENTS)
    journal.append({"record": "decision", "reason": f"bearer {JWT}",
                    "details": {"nested": [JWT]}})
    journal.close()
    with (tmp_path / EVENTS).open("a") as handle:
        handle.write('{"record": "event", "cut sho')  # a crash mid-line
    text = (tmp_path / EVENTS).read_text()
    assert JWT not in text and "[redacted]" in text
    assert [r["record"] for r in read_records(tmp_path, EVENTS)] == ["decision"]


def test_a_full_queue_is_counted_and_said_in_the_trail(tmp_path: Path) -> None:
    journal = AuditJournal(tmp_path / EVENTS, max_pending=0)
    journal.append({"record": "event"})
    journal.append({"record": "event"})
    journal.close()
    assert list(read_records(tmp_path, EVENTS)) == [{"record": "gap", "dropped": 2}]


def test_settings_are_validated_with_a_sentence() -> None:
    assert AuditSettings.from_env({}).directory is None
    assert AuditSettings.from_env({}).max_bytes == 8 * 1024 * 1024
    with pytest.raises(ConfigurationError, match="IIA_AUDIT_MAX_BYTES must be a positive"):
        AuditSettings.from_env({"IIA_AUDIT_DIR": "/x", "IIA_AUDIT_MAX_BYTES": "lots"})


@pytest.mark.parametrize("text", ["10m", "1h", "30s", "2d", "2026-12-02T20:00:00Z",
                                  "2026-12-02T20:00:00+01:00", "2026-12-02"])
def test_since_takes_durations_and_iso_times(text: str) -> None:
    assert parse_since(text).tzinfo is not None


@pytest.mark.parametrize("text", ["nonsense", "10 minutes", "-5m", ""])
def test_since_refuses_anything_else_with_a_sentence(text: str) -> None:
    with pytest.raises(AuditQueryError, match="--since takes a duration"):
        parse_since(text)


# -- the security panel's history (GET /events/history on the chat route) --------------------

@pytest.fixture
def trail(lab: Lab, tmp_path: Path) -> Iterator[AuditJournal]:
    """The lab's events recorded in a durable trail the chat route reads, as `iia.serve` wires
    it (IIA_AUDIT_DIR)."""
    journal = AuditJournal(tmp_path / EVENTS)
    stop = record_events(lab.events, journal, lab.antenna.sets_for, set_types=FOR_BUS_EVENT)
    lab.chat.audit_dir = tmp_path
    try:
        yield journal
    finally:
        lab.chat.audit_dir = None
        stop()
        journal.close()


def _chat(browser: httpx.Client, message: str) -> None:
    with browser.stream("POST", "/chat", json={"message": message},
                        timeout=httpx.Timeout(10, read=120)) as response:
        assert response.status_code == 200
        for _ in response.iter_lines():
            pass


def test_history_is_mine_unless_an_administrator_asks_for_all(lab: Lab,
                                                              trail: AuditJournal) -> None:
    alice, _ = sign_in(lab, "alice@example.com")  # a tenant administrator
    bob, _ = sign_in(lab, "bob@example.com")  # not one
    try:
        _chat(alice, "list users")
        _chat(bob, "list groups")
        assert trail.flush()
        mine = bob.get("/events/history", params={"scope": "mine"})
        assert mine.status_code == 200, mine.text
        events = mine.json()["events"]
        assert events and {e["userEmail"] for e in events} == {"bob@example.com"}
        assert any(e.get("toolName") == "list_groups" for e in events)
        assert all("record" not in e for e in events)

        everyone = bob.get("/events/history", params={"scope": "all"})
        assert everyone.status_code == 403 and everyone.json()["error"] == "forbidden"
        assert "alice@example.com" not in everyone.text

        seen = alice.get("/events/history", params={"scope": "all"}).json()["events"]
        assert {"alice@example.com", "bob@example.com"} <= {e.get("userEmail") for e in seen}
        own = alice.get("/events/history", params={"scope": "mine"}).json()["events"]
        assert {e["userEmail"] for e in own} == {"alice@example.com"}
    finally:
        alice.close()
        bob.close()


def test_history_pages_back_without_gaps_or_repeats(lab: Lab, trail: AuditJournal) -> None:
    browser, _ = sign_in(lab, "carol@example.com")
    try:
        _chat(browser, "list users")
        _chat(browser, "list groups")
        assert trail.flush()
        whole = browser.get("/events/history").json()
        assert whole["before"] is None and whole["durable"] is True
        pages, before = [], None
        while True:
            params = {"limit": "2", **({"before": before} if before else {})}
            page = browser.get("/events/history", params=params).json()
            pages.append(page["events"])
            before = page["before"]
            if before is None:
                break
        ids = [e["eventId"] for page in reversed(pages) for e in page]
        assert ids == [e["eventId"] for e in whole["events"]]  # oldest first, each once
        assert len(pages) > 1
    finally:
        browser.close()


@pytest.mark.parametrize("params", [{"before": "yesterday"}, {"before": "2026-12-02T20:00:00"},
                                    {"limit": "0"}, {"limit": "many"}, {"scope": "everyone"}])
def test_a_bad_history_request_is_400_with_a_sentence(lab: Lab, trail: AuditJournal,
                                                      params: dict[str, str]) -> None:
    browser, _ = sign_in(lab, "carol@example.com")
    try:
        response = browser.get("/events/history", params=params)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"
        assert response.json()["error_description"]
    finally:
        browser.close()
    assert httpx.get(lab.endpoints["chat"] + "/events/history").status_code == 401


def test_no_durable_trail_is_said_not_failed(lab: Lab) -> None:
    browser, _ = sign_in(lab, "carol@example.com")
    try:
        body = browser.get("/events/history").json()
        assert body == {"events": [], "before": None, "durable": False}
    finally:
        browser.close()
    assert json.dumps(body)
