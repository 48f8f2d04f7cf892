"""The notebook widgets' logic without a browser: the phone card against the running lab (a real
push from the agent, the buttons' click handlers answering it at the IdP), the chat transcript's
order (what the agent said and the tools it called, each where it came, refusals in red with
their reason, a session ended by continuous evaluation), and trainer mode's larger type."""

from __future__ import annotations

import asyncio
import html
import json
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from harness.authenticator import b64url
from harness.lab import Lab
from harness.lab_client import LabClient, PhoneApi, Turn
from harness.verify.passkeys import answer_binding_view, push_challenge
from harness.widgets import (
    TRAINER_CSS,
    TRAINER_FONT_PX,
    ChatBox,
    LabConsole,
    PhoneCard,
    binding_table,
    details_summary,
)


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
    # the summary names a person ("Name <e-mail>"), shown HTML-escaped
    assert html.escape(details_summary(push["authorization_details"])) in shown
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


def test_a_push_nobody_taps_says_how_to_run_without_a_browser(
        client: LabClient, card: PhoneCard, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run headless without IIA_PHONE=scripted, notebooks 03 and 04 wait for a tap nobody
    makes: the error says what to set, and the push is left to expire (nothing approved).
    While it waits, the card is shown again where the notebook waits (Run All scrolled past
    the cell that first showed it)."""
    import harness.widgets

    shown: list[object] = []
    monkeypatch.setattr(harness.widgets, "display", shown.append)
    turn = client.ask_async("revoke sessions of peggy@example.com")
    push = card.wait_for_push(timeout=30)
    with pytest.raises(TimeoutError, match="IIA_PHONE=scripted"):
        asyncio.run(card.expect(timeout=1))
    assert card.widget in shown
    assert outcomes(client, push["id"]) == ["pending"]
    card.deny_button.click()  # end the turn
    assert turn.result(timeout=30)["stop"] == "end_turn"


def test_tapping_the_other_button_says_what_it_did(client: LabClient, card: PhoneCard) -> None:
    """The notebook asks for Deny and the person taps Approve: a sentence saying which, what
    it did and how to start over, not a bare AssertionError three cells later."""
    turn = client.ask_async("revoke sessions of peggy@example.com")
    card.wait_for_push(timeout=30)

    async def wrong_tap() -> None:
        waiting = asyncio.ensure_future(card.expect(approve=False, timeout=60))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(card.approve_button.click)
        await waiting

    with pytest.raises(AssertionError, match=r"tap Deny, and the push was approved.*went ahead"):
        asyncio.run(wrong_tap())
    assert turn.result(timeout=30)["stop"] == "end_turn"


def test_the_binding_view_shows_the_digest_of_this_push_signed_in_client_data(
        lab: Lab, client: LabClient, card: PhoneCard) -> None:
    turn = client.ask_async("revoke sessions of peggy@example.com")
    push = card.wait_for_push(timeout=20)
    with pytest.raises(KeyError, match="not answered by this phone card"):
        card.binding_view(push["id"])
    card.approve_button.click()
    assert turn.result(timeout=30)["stop"] == "end_turn"

    view = card.binding_view(push["id"])
    # the challenge the tenant asked for is the digest of this push and this answer,
    # recomputed here from the tenant's own record (the phone never sees the auth_req_id)
    stored = lab.verify.approvals.get(push["id"])
    assert stored is not None
    digest = b64url(push_challenge(stored.auth_req_id, stored.binding_message,
                                   stored.authorization_details, True))
    assert view["challenge asked (options.publicKey.challenge)"] == digest
    assert view["challenge signed (clientDataJSON.challenge)"] == digest
    assert view["bound"] is True and view["tenant"] == "accepted"
    assert view["binding_message"] == push["binding_message"] and view["answer"] == "approve"
    assert view["authorization_details"] == details_summary(push["authorization_details"])
    assert view["clientDataJSON.type"] == "webauthn.get"
    assert stored.auth_req_id not in json.dumps(view)  # the requesting client's handle
    shown = binding_table(view).data
    assert html.escape(digest) in shown and "bound" in shown


def test_a_signature_over_another_challenge_is_shown_unbound(
        client: LabClient, card: PhoneCard) -> None:
    turn = client.ask_async("deactivate nina@example.com")
    push = card.wait_for_push(timeout=20)
    older = {f"older-{n}": {} for n in range(PhoneApi.SIGNED_KEPT)}
    client.phone.signed.update(older)  # a long session: the phone keeps only the last answers
    card.deny_button.click()
    turn.result(timeout=30)
    assert len(client.phone.signed) == PhoneApi.SIGNED_KEPT and "older-0" not in client.phone.signed
    signed = client.phone.signed[push["id"]]
    assert card.binding_view(push["id"])["answer"] == "deny"
    forged = {**signed, "challenge": b64url(b"another push" * 3)}
    assert answer_binding_view(card.answered[-1], forged)["bound"] is False


def test_a_push_the_tenant_has_no_options_for_leaves_nothing_kept(lab: Lab) -> None:
    with httpx.Client(timeout=5) as http:
        phone = PhoneApi(lab.endpoints["verify"], http)
        for n in range(3):  # no such push: refused before anything is signed, nothing kept
            assert phone.answer(f"nope-{n}", approve=True).status_code == 404
        assert phone.signed == {}


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


# -- the chat transcript --------------------------------------------------------------------------

LINE = re.compile(r"<div class='(iia-chat-[a-z]+)(?: (iia-chat-refused))?'[^>]*>(.*?)</div>", re.S)


def transcript(chat: ChatBox) -> list[tuple[str, str]]:
    """(kind, text) per rendered line, in order: user, text, tool, refused, ended, stopped."""
    out = []
    for line in chat.lines():
        match = LINE.fullmatch(line)
        assert match, line
        kind = "refused" if match.group(2) else match.group(1).removeprefix("iia-chat-")
        text = html.unescape(re.sub(r"<[^>]+>", "", match.group(3)))
        out.append(({"answer": "text"}.get(kind, kind), text))
    return out


class ScriptedClient:
    """Stands in for LabClient.ask_async: streams a given sequence of text deltas and tool calls
    from a thread, as the chat route's SSE does, then ends the turn."""

    def __init__(self, *parts: tuple[str, Any], done: dict[str, Any]) -> None:
        self.parts, self.done = parts, done
        self.release = threading.Event()
        self.release.set()

    def ask_async(self, prompt: str, on_text: Callable[[str], None] | None = None,
                  on_tool: Callable[[dict[str, Any]], None] | None = None) -> Turn:
        turn = Turn()

        def run() -> None:
            for kind, value in self.parts:
                if kind == "text":
                    turn.text += value
                    if on_text:
                        on_text(value)
                else:
                    turn.tools.append(value)
                    if on_tool:
                        on_tool(value)
            self.release.wait(30)
            turn.done = self.done
            turn._finished.set()

        threading.Thread(target=run, daemon=True).start()
        return turn


REFUSAL = ("[access_denied] the identity provider refused to issue a token: this action is "
           "blocked for agents by tenant policy; no approval can unlock it (policy tier4-blocked)")


def test_the_transcript_keeps_the_order_text_and_tools_came_in() -> None:
    client = ScriptedClient(
        ("text", "Let me look up "), ("text", "the contractors."),
        ("tool", {"name": "list_users", "input": {"count": 50}, "is_error": False,
                  "result": "[]"}),
        ("text", "Deleting as instructed."),
        ("tool", {"name": "delete_user", "input": {"user_id": "u-1"}, "is_error": True,
                  "result": REFUSAL}),
        ("text", "The identity layer refused."),
        done={"stop": "end_turn", "text": "...", "reason": None})
    chat = ChatBox(client)  # type: ignore[arg-type]  # only ask_async is used
    chat.ask("please review the contractors").result(timeout=30)
    lines = transcript(chat)
    assert [kind for kind, _ in lines] == ["user", "text", "tool", "text", "refused", "text"]
    assert lines[0][1] == "you please review the contractors"
    assert lines[1][1] == "agent Let me look up the contractors."  # deltas joined, in place
    assert "list_users" in lines[2][1]
    assert "delete_user" in lines[4][1] and "refused" in lines[4][1]
    assert "policy tier4-blocked" in lines[4][1]  # the reason, in full
    assert lines[5][1] == "agent The identity layer refused."  # the answer comes last
    refused = chat.lines()[4]
    assert "background:#ffebee" in refused and "#c62828" in refused  # drawn red
    assert "#ffebee" not in chat.lines()[2]  # a tool that worked is not


def test_tool_lines_name_people_not_ids() -> None:
    """A card's summary names the people and groups (the chat route resolved the ids): the
    line shows it, and not the ids the model passed."""
    uid, gid = "758c793a-0000-4000-8000-000000000001", "ee4e3943-0000-4000-8000-000000000002"
    chat = ChatBox(ScriptedClient(  # type: ignore[arg-type]
        ("tool", {"name": "add_user_to_group", "input": {"user_id": uid, "group_id": gid},
                  "summary": "Add user Zoe Zimmer <zoe@example.com> to group Engineering",
                  "is_error": False, "result": "{}"}),
        ("tool", {"name": "delete_user", "input": {"user_id": uid}, "is_error": True,
                  "summary": "Delete user Zoe Zimmer <zoe@example.com>", "result": REFUSAL}),
        done={"stop": "end_turn", "text": "done", "reason": None}))
    chat.ask("add zoe to engineering, then delete her").result(timeout=30)
    lines = transcript(chat)
    assert lines[1] == ("tool", "✓ add_user_to_group — Add user Zoe Zimmer <zoe@example.com> "
                                "to group Engineering")
    assert lines[2][0] == "refused" and "Delete user Zoe Zimmer <zoe@example.com>" in lines[2][1]
    assert all(uid not in text and gid not in text for _, text in lines)


def test_a_second_question_comes_after_the_first_answer() -> None:
    chat = ChatBox(ScriptedClient(  # type: ignore[arg-type]
        ("tool", {"name": "list_users", "input": {}, "is_error": False, "result": "[]"}),
        ("text", "23 users."), done={"stop": "end_turn", "text": "23 users.", "reason": None}))
    chat.ask("list users").result(timeout=30)
    chat.ask("list users again").result(timeout=30)
    assert [kind for kind, _ in transcript(chat)] == ["user", "tool", "text"] * 2
    assert [text for kind, text in transcript(chat) if kind == "user"] == [
        "you list users", "you list users again"]


def test_a_turn_in_flight_shows_that_the_agent_works_and_then_its_end() -> None:
    client = ScriptedClient(
        ("tool", {"name": "deactivate_user", "input": {"user_id": "u-2"}, "is_error": True,
                  "result": "[approval_denied] alice@example.com denied the request"}),
        done={"stop": "end_turn", "text": "I could not: you denied it.", "reason": None})
    client.release.clear()  # the turn has not ended yet
    chat = ChatBox(client)  # type: ignore[arg-type]
    turn = chat.ask("deactivate nina@example.com")
    for _ in range(300):
        if len(transcript(chat)) == 3:
            break
        threading.Event().wait(0.1)
    assert transcript(chat) == [
        ("user", "you deactivate nina@example.com"),
        ("refused", "✗ deactivate_user {\"user_id\": \"u-2\"} refused: "
                    "[approval_denied] alice@example.com denied the request"),
        ("text", "agent ...")]
    client.release.set()
    turn.result(timeout=30)
    # no text streamed: the turn's own answer takes the place of "..." after the refusal
    assert [kind for kind, _ in transcript(chat)] == ["user", "refused", "text"]
    assert transcript(chat)[2] == ("text", "agent I could not: you denied it.")


def test_a_session_ended_is_shown_red_with_its_reason_once() -> None:
    reason = ("the session was ended: CAEP session-revoked: anomaly: 2 blocked (tier 4) actions "
              "attempted within 10 minutes")
    chat = ChatBox(ScriptedClient(done={  # type: ignore[arg-type]
        "stop": "session_ended", "reason": reason,
        "text": f"Your session was ended: {reason}. Sign in again."}))
    chat.ask("list users").result(timeout=30)
    assert transcript(chat) == [
        ("user", "you list users"),
        ("ended", "Session ended: CAEP session-revoked: anomaly: 2 blocked (tier 4) actions "
                  "attempted within 10 minutes. Sign in again to continue.")]
    assert "background:#ffebee" in chat.lines()[1]


def test_the_chat_against_the_lab_shows_the_refused_delete_and_the_kill(lab: Lab) -> None:
    """The real chain: the poisoned record makes the agent call delete_user, refused at the
    token endpoint; a second blocked action trips the anomaly rule; the next question meets the
    ended session. The transcript shows each where it happened."""
    client = LabClient(dict(lab.endpoints), "alice@example.com")
    try:
        chat = ChatBox(client)
        chat.ask("please review the contractors").result(timeout=60)
        first = transcript(chat)
        kinds = [kind for kind, _ in first]
        assert kinds[0] == "user" and kinds[-1] == "text", first
        tools = [(kind, text) for kind, text in first if kind in ("tool", "refused")]
        assert [kind for kind, _ in tools] == ["tool", "refused"], first
        assert "list_users" in tools[0][1] and "delete_user" in tools[1][1]
        assert "tier4-blocked" in tools[1][1]
        assert kinds.index("refused") < len(kinds) - 1  # the answer follows the refusal
        chat.ask("make bob@example.com an admin").result(timeout=60)
        ended = chat.ask("list users").result(timeout=60)
        assert ended["stop"] == "session_ended", ended
        last = transcript(chat)[len(first):]
        assert [kind for kind, _ in last if kind in ("user", "refused", "ended")] == [
            "user", "refused", "user", "ended"], last
        assert "grant_admin_role" in next(text for kind, text in last if kind == "refused")
        assert "anomaly" in last[-1][1]
    finally:
        client.close()


# -- trainer mode ---------------------------------------------------------------------------------

def test_trainer_mode_enlarges_every_widget_and_the_snapshot(lab: Lab) -> None:
    default = {"--jp-widgets-font-size": 13}  # ipywidgets' own default, in px
    sizes = dict(re.findall(r"(--jp-widgets-font-size):(\d+)px", TRAINER_CSS))
    assert int(sizes["--jp-widgets-font-size"]) >= 1.5 * default["--jp-widgets-font-size"]
    trainer = LabConsole(dict(lab.endpoints), trainer=True, scripted_phone=True)
    plain = LabConsole(dict(lab.endpoints), scripted_phone=True)
    try:
        box = trainer.widget()
        assert "iia-trainer" in box._dom_classes
        assert TRAINER_CSS in box.children[0].children[0].children[0].value
        assert "iia-trainer" not in plain.widget()._dom_classes
        assert f"font-size:{TRAINER_FONT_PX}px" in trainer.snapshot_html()
        assert f"font-size:{TRAINER_FONT_PX}px" not in plain.snapshot_html()
    finally:
        trainer.close()
        plain.close()
