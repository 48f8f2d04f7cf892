"""The phone card's logic without a browser: the widget against the running lab, a real push from
the agent, and the buttons' click handlers answering it at the IdP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from harness.lab import Lab
from harness.lab_client import LabClient
from harness.widgets import PhoneCard, details_summary


@pytest.fixture
def client(lab: Lab) -> Iterator[LabClient]:
    client = LabClient(dict(lab.endpoints), "alice@example.com")
    yield client
    client.close()


@pytest.fixture
def card(client: LabClient) -> Iterator[PhoneCard]:
    card = PhoneCard(client, scripted=False, interval=0.1).start()
    yield card
    card.stop()


def outcomes(client: LabClient, push_id: str) -> list[str]:
    return [d["outcome"] for d in client.decisions("ciba") if d.get("approval_id") == push_id]


def test_the_card_is_hidden_while_nothing_is_pending(card: PhoneCard) -> None:
    card.poll()
    assert card.pending == []
    assert card.card.layout.display == "none"
    assert "no pending push" in card.status.value


def test_a_pending_push_appears_and_approve_answers_it_at_the_idp(
        client: LabClient, card: PhoneCard) -> None:
    turn = client.ask_async("revoke sessions of peggy@example.com")
    push = card.wait_for_push(timeout=20)
    assert push["user"] == "alice@example.com" and push["tier"] == 3
    assert card.card.layout.display == "flex"
    shown = card.request.value
    assert "Revoke all sessions of user" in shown and "expires in" in shown
    assert details_summary(push["authorization_details"]) in shown
    assert outcomes(client, push["id"]) == ["pending"]

    card.approve_button.click()  # what a tap on Approve runs

    assert outcomes(client, push["id"]) == ["pending", "approved"]
    assert turn.result(timeout=30)["stop"] == "end_turn"
    assert card.answered[-1] | {"at": None} == {
        "id": push["id"], "user": "alice@example.com", "tier": 3,
        "binding_message": push["binding_message"], "summary": card.answered[-1]["summary"],
        "outcome": "approved", "by": PhoneCard.YOU, "at": None}
    card.poll()
    assert card.card.layout.display == "none"
    assert "no pending push" in card.status.value and "approved" in card.status.value


def test_deny_refuses_it_and_the_agent_gets_no_token(client: LabClient, card: PhoneCard) -> None:
    turn = client.ask_async("deactivate nina@example.com")
    push = card.wait_for_push(timeout=20)
    card.deny_button.click()
    assert outcomes(client, push["id"]) == ["pending", "denied"]
    assert "approval_denied" in turn.result(timeout=30)["text"]
    assert card.answered[-1]["outcome"] == "denied"


def test_a_push_answered_elsewhere_is_recorded_and_scripted_mode_answers(
        client: LabClient, card: PhoneCard) -> None:
    turn = client.ask_async("revoke sessions of peggy@example.com")
    push = card.wait_for_push(timeout=20)
    client.phone.answer(push["id"], approve=False)  # as `iia-lab deny` would
    record = card.wait_for_answer(push["id"], timeout=10)
    assert record["by"] == PhoneCard.ELSEWHERE
    turn.result(timeout=30)

    card.scripted = True
    turn = client.ask_async("revoke sessions of peggy@example.com")
    record = asyncio.run(card.expect(approve=True, timeout=20))
    assert record["by"] == PhoneCard.SCRIPTED and record["outcome"] == "approved"
    assert outcomes(client, record["id"]) == ["pending", "approved"]
    assert turn.result(timeout=30)["stop"] == "end_turn"
    assert "scripted phone" in card.snapshot_html()


def test_stop_ends_the_poller(card: PhoneCard) -> None:
    thread = card._thread
    assert thread is not None and thread.is_alive()
    card.stop()
    assert not thread.is_alive()
