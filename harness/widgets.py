"""The lab's notebook widgets (ipywidgets). The logic lives in `LabClient`; these only show it.

* `ChatBox`       ask the agent; the answer streams in, tool calls listed as they happen
* `PhoneCard`     the user's phone: appears when a push is pending, with the binding message,
                  what is asked, the time left and Approve / Deny (over the lab phone's API); in
                  scripted mode (`IIA_PHONE=scripted`, set by `make test`) `expect()` answers
* `EventTable`    live security events, denials in red with their reason; mine / all
* `TokenInspector` the decoded on-behalf-of token of the last call (`act`,
                  `authorization_details`, `exp`): never the token itself
* `SequenceView`  how long each step of the last call took
* `LabConsole`    all of them, with `trainer=True` for large text and collapsible explanations

Each widget also renders a static snapshot (`snapshot_html()`), so an executed notebook exported to
HTML still shows what happened.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import threading
import time
from typing import Any

import httpx
import ipywidgets as w  # type: ignore[import-untyped]  # ships no stubs and no py.typed
from IPython.display import HTML, display

from harness.lab_client import LabClient, PhoneApi, Turn
from harness.notebook import OUTCOME_COLORS

__all__ = ["ChatBox", "EventTable", "LabConsole", "PhoneCard", "SequenceView", "TokenInspector",
           "binding_table", "details_summary", "explain"]

RED, GREEN, AMBER, BLUE = "#ffebee", "#e8f5e9", "#fff8e1", "#e3f2fd"
_ROW = {**OUTCOME_COLORS, "pending": AMBER}  # a pending push stands out amber here


def _esc(value: Any) -> str:
    return html.escape(str(value))


def explain(title: str, text: str, *, open_: bool = False) -> w.Accordion:
    """A collapsible explanation (trainer mode)."""
    accordion = w.Accordion(children=[w.HTML(f"<div style='font-size:1.05em'>{text}</div>")])
    accordion.set_title(0, title)
    accordion.selected_index = 0 if open_ else None
    return accordion


class EventTable:
    QUIET = ("spiffe:svid_cached", "vault:secret_read")

    def __init__(self, client: LabClient) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        self._all: list[dict[str, Any]] = []
        self._cursor_mine = 0
        self._cursor_all = 0
        self.scope = w.ToggleButtons(options=["mine", "all"], value="mine",
                                     description="Events:")
        self.quiet = w.Checkbox(value=False, description="show passive identity events")
        self.table = w.HTML()
        self.scope.observe(lambda _: self.render(), names="value")
        self.quiet.observe(lambda _: self.render(), names="value")
        self.widget = w.VBox([w.HBox([self.scope, self.quiet]), self.table])

    def poll(self) -> None:
        new, self._cursor_mine = self.client.events(self._cursor_mine, mine=True)
        self.events.extend(new)
        everyone, self._cursor_all = self.client.events(self._cursor_all, mine=False)
        self._all.extend(everyone)
        if new or everyone:
            self.render()

    def rows(self) -> list[dict[str, Any]]:
        items = self.events if self.scope.value == "mine" else self._all
        return [e for e in items if self.quiet.value or e["type"] not in self.QUIET]

    def snapshot_html(self, limit: int = 40) -> str:
        rows = []
        for e in self.rows()[-limit:]:
            color = _ROW.get(e.get("outcome", ""), "#fff")
            rows.append(
                f"<tr style='background:{color}'><td>{_esc(e.get('timestamp', '')[11:23])}</td>"
                f"<td><b>{_esc(e['type'])}</b></td><td>{_esc(e.get('toolName', ''))}</td>"
                f"<td>{_esc(e.get('tier', ''))}</td><td>{_esc(e.get('outcome', ''))}</td>"
                f"<td>{_esc(e.get('durationMs', ''))}</td><td>{_esc(e.get('reason', ''))}</td>"
                "</tr>")
        head = "".join(f"<th>{h}</th>" for h in ("time", "event", "tool", "tier", "outcome",
                                                   "ms", "reason"))
        return (f"<table style='border-collapse:collapse;font-size:.85em'><tr>{head}</tr>"
                f"{''.join(rows) or '<tr><td colspan=7>no events yet</td></tr>'}</table>")

    def render(self) -> None:
        self.table.value = self.snapshot_html()


class TokenInspector:
    def __init__(self, client: LabClient) -> None:
        self.client = client
        self.last: dict[str, Any] | None = None
        self.widget = w.HTML()

    def refresh(self) -> None:
        calls = [c for c in self.client.calls() if c.get("obo")]
        if calls and calls[-1] != self.last:
            self.last = calls[-1]
            self.widget.value = self.snapshot_html()

    def snapshot_html(self) -> str:
        if not self.last:
            return "<i>no on-behalf-of token yet</i>"
        obo = self.last["obo"]
        shown = {k: obo[k] for k in ("sub", "email", "aud", "act", "authorization_details",
                                     "sid", "jti", "iat", "exp") if k in obo}
        left = int(obo.get("exp", 0) - time.time())
        return (f"<div><b>On-behalf-of token of <code>{_esc(self.last['tool'])}</code></b> "
                f"(decoded; expires in {left} s; the raw token is never shown)"
                f"<pre style='font-size:.8em;background:#f5f5f5;padding:.5em'>"
                f"{_esc(json.dumps(shown, indent=2))}</pre></div>")


class SequenceView:
    STEPS = (("svid", "JWT-SVID"), ("vault", "Vault credential"), ("approval", "human approval"),
             ("exchange", "token exchange"), ("admin_api", "admin API"))

    def __init__(self, client: LabClient) -> None:
        self.client = client
        self.last: dict[str, Any] | None = None
        self.widget = w.HTML()

    def refresh(self) -> None:
        calls = self.client.calls(limit=1)
        if calls and calls[-1] != self.last:
            self.last = calls[-1]
            self.widget.value = self.snapshot_html()

    def snapshot_html(self) -> str:
        if not self.last:
            return "<i>no tool call yet</i>"
        steps = self.last["steps"]
        total = max(steps.get("total", 0.0), 0.01)
        bars = []
        for key, label in self.STEPS:
            if key not in steps:
                continue
            width = max(1.0, 100 * steps[key] / total)
            bars.append(f"<div style='margin:2px 0'><span style='display:inline-block;width:14em'>"
                        f"{label}</span><span style='display:inline-block;background:#1565c0;"
                        f"height:.9em;width:{width * 3:.0f}px'></span> {steps[key]:.1f} ms</div>")
        verdict = "allowed" if self.last["ok"] else f"stopped: {_esc(self.last['code'])}"
        return (f"<div><b>Last call: <code>{_esc(self.last['tool'])}</code></b> - {verdict}, "
                f"{steps.get('total', 0):.1f} ms in the chain{''.join(bars)}</div>")


class PhoneCard:
    """The user's phone as widgets over the lab phone's API (`PhoneApi`).

    A background thread (`start()` / `stop()`; it sleeps on an Event between polls) lists the
    pending pushes of `client.user`. While one is pending the card shows who is asked, the binding
    message, what its authorization_details say, the seconds left, and Approve / Deny buttons that
    answer it at the IdP. Otherwise it shows "no pending push" and the last answers.

    Clicks reach the kernel while it is idle or while a cell *awaits*: ipykernel dispatches widget
    messages during an awaiting cell, not during a blocking one. So a notebook waits with
    `await console.phone.expect(...)`. In scripted mode (`IIA_PHONE=scripted`, CI) `expect()`
    answers the next push itself, through the same path as the buttons, and the card lists each
    push with who answered it ("scripted phone").
    """

    YOU, SCRIPTED, ELSEWHERE = "you (phone card)", "scripted phone", "elsewhere"

    def __init__(self, client: LabClient, scripted: bool | None = None, *,
                 interval: float = 0.25) -> None:
        self.phone: PhoneApi = client.phone
        self.user = client.user
        self.scripted = os.environ.get("IIA_PHONE") == "scripted" if scripted is None \
            else scripted
        self.interval = interval
        self.pending: list[dict[str, Any]] = []  # the API's view, oldest first
        self.answered: list[dict[str, Any]] = []  # every push seen leaving, with who answered
        self.error: str | None = None
        self._seen_at = 0.0  # monotonic time of the last poll (for the countdown)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._answering: set[str] = set()  # push ids a tap is answering right now
        self.approve_button = w.Button(description="Approve", button_style="success",
                                       icon="check")
        self.deny_button = w.Button(description="Deny", button_style="danger", icon="times")
        self.approve_button.on_click(lambda _: self.tap(approve=True))
        self.deny_button.on_click(lambda _: self.tap(approve=False))
        self.request = w.HTML()
        self.card = w.VBox([self.request, w.HBox([self.approve_button, self.deny_button])],
                           layout=w.Layout(border="2px solid #1565c0", padding="6px",
                                           display="none"))
        self.status = w.HTML()
        self.widget = w.VBox([self.card, self.status])
        self.render()

    # -- the poller ---------------------------------------------------------------------------

    def start(self) -> PhoneCard:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True, name="lab-phone")
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except httpx.HTTPError as exc:  # the lab went away: say so, keep trying
                with self._lock:
                    self.error = f"phone API unreachable ({exc.__class__.__name__})"
                self.render()
            self._stop.wait(self.interval)

    def poll(self) -> list[dict[str, Any]]:
        """Read the pending pushes once; pushes that left without our answer are recorded as
        answered elsewhere (the lab phone page, `iia-lab approve`) or expired."""
        pending = self.phone.pending(self.user)
        with self._changed:
            current = {p["id"] for p in pending}
            gone = [p for p in self.pending if p["id"] not in current
                    and p["id"] not in self._answering
                    and not any(a["id"] == p["id"] for a in self.answered)]
            for push in gone:
                self.answered.append(self._record(push, "gone", self.ELSEWHERE))
            self.pending = [p for p in pending if p["id"] not in self._answering]
            self._seen_at, self.error = time.monotonic(), None
            self.render()  # before waiters wake: what they read is what the card shows
            self._changed.notify_all()
        return pending

    # -- answering ----------------------------------------------------------------------------

    def tap(self, approve: bool, push_id: str | None = None, *, by: str | None = None
            ) -> dict[str, Any] | None:
        """Answer a pending push (the shown one by default) at the IdP, as a tap on the card
        would. Returns what was recorded, or None when nothing was pending."""
        with self._lock:
            push = next((p for p in self.pending if push_id in (None, p["id"])
                         and p["id"] not in self._answering), None)
            if push is None:
                return None
            self._answering.add(push["id"])  # the poller must not record it as gone meanwhile
        try:
            response = self.phone.answer(push["id"], approve)
            body = response.json()
            outcome = body.get("status", "approved" if approve else "denied") \
                if response.status_code == 200 else \
                f"not answered: {body.get('error_description')}"
        except httpx.HTTPError as exc:
            outcome = f"not answered: phone API unreachable ({exc.__class__.__name__})"
        with self._changed:
            self._answering.discard(push["id"])
            record = self._record(push, outcome, by or (self.SCRIPTED if self.scripted
                                                        else self.YOU))
            self.answered.append(record)
            self.pending = [p for p in self.pending if p["id"] != push["id"]]
            self.render()
            self._changed.notify_all()
        return record

    def wait_for_push(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next pending push (as the poller sees it); polls itself if the poller is off."""
        deadline = time.monotonic() + timeout
        while True:
            if self._thread is None:  # no poller: look ourselves
                self.poll()
            with self._changed:
                if self.pending:
                    return self.pending[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no push reached {self.user}'s phone in {timeout:.0f} s")
                self._changed.wait(min(left, self.interval))

    def wait_for_answer(self, push_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                record = next((a for a in self.answered if a["id"] == push_id), None)
                if record is not None:
                    return record
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"nobody answered push {push_id} in {timeout:.0f} s")
                self._changed.wait(left)

    def expect_now(self, approve: bool = True, timeout: float = 30.0) -> dict[str, Any]:
        """Blocking form of `expect()` for scripts and tests (a person cannot click while a
        cell blocks, so in a notebook use `await expect()`)."""
        push = self.wait_for_push(timeout)
        if self.scripted:
            record = self.tap(approve, push["id"], by=self.SCRIPTED)
            if record is not None:
                return record
        return self.wait_for_answer(push["id"], timeout)

    async def expect(self, approve: bool = True, timeout: float | None = None
                     ) -> dict[str, Any]:
        """Wait for the next push. Scripted: answer it (approve or deny). Otherwise: wait while
        the person taps `Approve` or `Deny` on the card (the cell awaits, so the tap gets through)
        and return what they answered."""
        if timeout is None:
            timeout = 30.0 if self.scripted else 300.0
        if self.scripted:
            return await asyncio.to_thread(self.expect_now, approve, timeout)
        push = await asyncio.to_thread(self.wait_for_push, timeout)
        display(HTML(f"<b>Tap {'Approve' if approve else 'Deny'} on the phone card: "
                     f"{_esc(push['binding_message'])}</b>"))
        # the card itself, here: Run All scrolls past the cell that first showed it (another
        # view of the same widget, so both show the same buttons and the same state)
        display(self.widget)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # short sleeps on the kernel loop let clicks in
            record = next((a for a in self.answered if a["id"] == push["id"]), None)
            if record is not None:
                wanted = "approved" if approve else "denied"
                if record["outcome"] != wanted:  # the other button: say what it did
                    raise AssertionError(
                        f"this step asks you to tap {'Approve' if approve else 'Deny'}, and the "
                        f"push was {record['outcome']}: {push['binding_message']} "
                        f"{'went ahead' if record['outcome'] == 'approved' else 'did not run'}."
                        " Run the cell again to retry; for a fresh tenant, "
                        "`.venv/bin/iia-lab restart verify`")
                return record
            await asyncio.sleep(0.1)
        raise TimeoutError(
            f"nobody answered push {push['id']} in {timeout:.0f} s: tap Approve or Deny on the "
            "phone card; a notebook run without a browser (nbconvert, papermill, CI) needs "
            "IIA_PHONE=scripted, so that the scripted phone answers")

    def binding_view(self, push_id: str) -> dict[str, Any]:
        """The challenge binding of a push this card answered, decoded
        (harness.verify.passkeys.answer_binding_view): what the push was, the challenge the
        tenant asked to be signed, the one in the assertion's clientDataJSON, "bound"."""
        with self._lock:
            record = next((a for a in self.answered if a["id"] == push_id), None)
        signed = self.phone.signed.get(push_id)
        if record is None or signed is None:
            raise KeyError(f"push {push_id} was not answered by this phone card")
        # imported here: attaching a notebook must not load the simulated tenant (test_fast_start)
        from harness.verify.passkeys import answer_binding_view

        return answer_binding_view(record, signed)

    # -- what it shows ------------------------------------------------------------------------

    def _record(self, push: dict[str, Any], outcome: str, by: str) -> dict[str, Any]:
        return {"id": push["id"], "user": push["user"], "tier": push.get("tier"),
                "binding_message": push["binding_message"],
                "summary": details_summary(push.get("authorization_details") or []),
                "outcome": outcome, "by": by, "at": time.strftime("%H:%M:%S")}

    def render(self) -> None:
        with self._lock:
            push = self.pending[0] if self.pending else None
            more = len(self.pending) - 1
            left = 0
            if push is not None:
                left = max(0, int(push.get("expires_in", 0) - (time.monotonic() - self._seen_at)))
            status = self.snapshot_html()
        if push is None:
            self.card.layout.display = "none"
        else:
            self.request.value = (
                f"<div><b>IBM Verify</b> - approval requested for <b>{_esc(push['user'])}</b> "
                f"(tier {_esc(push.get('tier'))})</div>"
                f"<div style='font-size:1.15em;margin:.4em 0'>{_esc(push['binding_message'])}"
                f"</div><div><code>{_esc(details_summary(push['authorization_details']))}"
                f"</code></div><div>expires in <b>{left} s</b>"
                f"{f' - {more} more waiting' if more > 0 else ''}</div>")
            self.card.layout.display = "flex"
        self.status.value = status

    def snapshot_html(self, limit: int = 6) -> str:
        """What the phone saw: "no pending push" (or the pending one) and the last answers."""
        with self._lock:
            head = ("<i>no pending push</i>" if not self.pending else
                    f"<b>{len(self.pending)} push(es) pending</b>")
            if self.error:
                head += f" <span style='color:#c62828'>{_esc(self.error)}</span>"
            rows = "".join(
                f"<tr style='background:{GREEN if a['outcome'] == 'approved' else RED}'>"
                f"<td>{_esc(a['at'])}</td><td>{_esc(a['binding_message'])}</td>"
                f"<td>{_esc(a['outcome'])}</td><td>{_esc(a['by'])}</td></tr>"
                for a in self.answered[-limit:])
        mode = " (scripted phone)" if self.scripted else ""
        table = (f"<table style='font-size:.85em'><tr><th>time</th><th>push</th><th>answer</th>"
                 f"<th>answered by</th></tr>{rows}</table>" if rows else "")
        return f"<div><b>Phone of {_esc(self.user)}</b>{mode}: {head}{table}</div>"


def binding_table(view: dict[str, Any]) -> HTML:
    """A decoded view (`PhoneCard.binding_view`) as a two-column table; "bound" green or red."""
    rows = "".join(
        f"<tr style='background:{(GREEN if value else RED) if key == 'bound' else 'none'}'>"
        f"<th style='text-align:left'>{_esc(key)}</th><td><code>{_esc(value)}</code></td></tr>"
        for key, value in view.items())
    return HTML(f"<table>{rows}</table>")


def details_summary(details: list[dict[str, Any]]) -> str:
    """One line per authorization_details object: its summary, else type and target."""
    lines = []
    for obj in details:
        text = obj.get("summary") or " ".join(str(obj[k]) for k in ("type", "target") if k in obj)
        actions = obj.get("actions")
        lines.append(f"{text} [{', '.join(map(str, actions))}]" if actions else str(text))
    return "; ".join(lines) or "(no details)"


class ChatBox:
    """The conversation, in the order it happened: for each question the user's line, then what
    the agent streamed and the tool calls it made, each where it came (a refusal in red with its
    reason), its answer last, and how the turn ended when it did not simply finish (a session
    ended by continuous evaluation, in red with the reason)."""

    def __init__(self, client: LabClient) -> None:
        self.client = client
        self.input = w.Text(placeholder="ask the agent, e.g. list users",
                            layout=w.Layout(width="70%"))
        self.send = w.Button(description="Send", button_style="primary")
        self.transcript = w.HTML()
        # {prompt, parts: [("text", str) | ("tool", call)] in arrival order, done, turn}
        self.turns: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.send.on_click(lambda _: self.ask(self.input.value))
        self.input.continuous_update = False
        self.widget = w.VBox([self.transcript, w.HBox([self.input, self.send])])

    def ask(self, prompt: str) -> Turn:
        prompt = prompt.strip()
        self.input.value = ""
        entry: dict[str, Any] = {"prompt": prompt, "parts": [], "done": None, "turn": None}
        with self._lock:
            self.turns.append(entry)
        self._render()

        def on_text(delta: str) -> None:
            with self._lock:
                parts = entry["parts"]
                if parts and parts[-1][0] == "text":
                    parts[-1] = ("text", parts[-1][1] + delta)
                else:
                    parts.append(("text", delta))
            self._render()

        def on_tool(call: dict[str, Any]) -> None:
            with self._lock:
                entry["parts"].append(("tool", call))
            self._render()

        turn = self.client.ask_async(prompt, on_text=on_text, on_tool=on_tool)
        with self._lock:
            entry["turn"] = turn

        def finish() -> None:  # the turn's end: after its last text and tool callbacks
            try:
                done = turn.result()
            except TimeoutError as exc:
                done = {"stop": "error", "text": str(exc), "reason": None}
            with self._lock:
                entry["done"] = done
            self._render()

        threading.Thread(target=finish, daemon=True, name="lab-chat-turn").start()
        return turn

    def lines(self) -> list[str]:
        """The transcript's lines as HTML, in the order a person reads them."""
        with self._lock:
            turns = [dict(t, parts=list(t["parts"])) for t in self.turns]
        out: list[str] = []
        for turn in turns:
            out.append(f"<div class='iia-chat-user'><b>you</b> {_esc(turn['prompt'])}</div>")
            done = turn["done"] or _finished(turn["turn"])
            parts = turn["parts"]
            for kind, value in parts:
                out.append(_tool_line(value) if kind == "tool" else _text_line(value))
            out.extend(_end_lines(bool(parts) and parts[-1][0] == "text", done))
        return out

    def snapshot_html(self, limit: int = 60) -> str:
        lines = self.lines()[-limit:]
        return ("<div class='iia-chat' style='line-height:1.4'>"
                f"{''.join(lines) or '<i>no question yet</i>'}</div>")

    def _render(self) -> None:
        self.transcript.value = self.snapshot_html()


def _finished(turn: Turn | None) -> dict[str, Any] | None:
    """How a turn ended, if it has (read by a snapshot taken just after `result()` returned,
    possibly before the turn's own watcher recorded it)."""
    if turn is None:
        return None
    try:
        return turn.result(timeout=0)
    except TimeoutError:
        return None


def _tool_line(call: dict[str, Any]) -> str:
    """One line per tool call: what it did, with people and groups by name (the chat route's
    card summary, e.g. "Add user Zoe Zimmer <zoe@example.com> to group Engineering"), or its
    arguments where the card has no summary."""
    summary = call.get("summary")
    if isinstance(summary, str) and summary and summary != call["name"]:
        args = "&mdash; " + _esc(summary)
    else:
        args = _esc(json.dumps(call.get("input", {})))
    name = _esc(call["name"])
    if call.get("is_error"):
        reason = _esc(str(call.get("result", "")).strip()[:400] or "refused")
        return (f"<div class='iia-chat-tool iia-chat-refused' style='background:{RED};"
                f"color:#b71c1c;border-left:4px solid #c62828;padding:2px 6px;margin:2px 0'>"
                f"&#10007; <b>{name}</b> <code>{args}</code> <b>refused</b>: {reason}</div>")
    return (f"<div class='iia-chat-tool' style='color:#2e7d32;font-family:monospace;"
            f"font-size:.85em;margin:2px 0'>&#10003; {name} {args}</div>")


def _text_line(text: str) -> str:
    return f"<div class='iia-chat-answer'><b>agent</b> {_esc(text)}</div>"


def _end_lines(answered: bool, done: dict[str, Any] | None) -> list[str]:
    """After the turn's parts: "..." while the agent works, the answer the turn ended with when
    none streamed (an error, a refused turn), and a red line for a turn that did not finish."""
    if done is None:
        return [] if answered else ["<div class='iia-chat-answer'><b>agent</b> ...</div>"]
    stop = done.get("stop")
    lines = []
    # a session ended before the agent said anything: the red line below says it all
    if not answered and stop != "session_ended" and done.get("text"):
        lines.append(_text_line(str(done["text"])))
    if stop == "session_ended":
        reason = str(done.get("reason") or done.get("text") or "the session was ended")
        reason = reason.removeprefix("the session was ended: ")  # said once, in bold, below
        lines.append(f"<div class='iia-chat-ended' style='background:{RED};color:#b71c1c;"
                     f"border:2px solid #c62828;padding:4px 6px;margin:4px 0'><b>Session "
                     f"ended</b>: {_esc(reason)}. Sign in again to continue.</div>")
    elif stop not in ("end_turn", None):
        lines.append(f"<div class='iia-chat-stopped' style='color:#b71c1c'><b>stopped</b> "
                     f"({_esc(stop)}): {_esc(done.get('reason') or done.get('text') or '')}</div>")
    return lines


# Trainer mode: what a room sees on a projector. ipywidgets size their text and controls by these
# CSS variables (13px / 28px by default); set on the console's box they apply to every widget in
# it, the HTML panels included.
TRAINER_FONT_PX = 22
TRAINER_CSS = (
    "<style>.iia-trainer{"
    f"--jp-widgets-font-size:{TRAINER_FONT_PX}px;--jp-widgets-inline-height:44px;"
    "--jp-widgets-inline-label-width:140px;--jp-widgets-inline-width:480px;"
    f"font-size:{TRAINER_FONT_PX}px;line-height:1.4}}"
    f".iia-trainer .widget-html-content{{font-size:{TRAINER_FONT_PX}px;line-height:1.4}}"
    ".iia-trainer h3{font-size:1.5em}"
    f".iia-trainer button,.iia-trainer input{{font-size:{TRAINER_FONT_PX - 2}px}}"
    "</style>")


class LabConsole:
    """The whole lab UI for one signed-in user. `trainer=True`: large type for a projector (the
    live widgets and the static snapshots)."""

    def __init__(self, endpoints: dict[str, str], user: str = "alice@example.com", *,
                 trainer: bool = False, scripted_phone: bool | None = None) -> None:
        self.client = LabClient(endpoints, user)
        self.trainer = trainer
        self.chat = ChatBox(self.client)
        self.phone = PhoneCard(self.client, scripted_phone).start()
        self.events = EventTable(self.client)
        self.inspector = TokenInspector(self.client)
        self.sequence = SequenceView(self.client)
        # where the tenant's audit trail stood when this console signed in: `decisions()` reads
        # only what came after it, for this session
        self._audit_mark = len(self.client.decisions())
        self._stop = threading.Event()
        # one refresh at a time: the poller thread and snapshot() both advance the same cursors,
        # and two polls from one cursor would append the same events twice
        self._refreshing = threading.Lock()
        self._poller = threading.Thread(target=self._poll, daemon=True, name="lab-console")
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.refresh()

    def refresh(self) -> None:
        with self._refreshing:
            try:
                self.events.poll()
                self.inspector.refresh()
                self.sequence.refresh()
            except Exception:  # noqa: S110 - a lab that is gone must not spam the notebook
                pass

    def settle(self) -> list[dict[str, Any]]:
        """Everything this session's calls have emitted so far, read after them (not on the
        poller's schedule): what a cell that counts events must look at. A failed read is an
        error here, not a silently short list."""
        with self._refreshing:
            self.events.poll()
        return list(self.events.events)

    def decisions(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The tenant's audit-trail decisions (`/lab/decisions`) this console's session caused:
        recorded after it signed in, for its session id. A notebook checks these, never the
        whole tenant's trail, so what earlier notebooks (or other people) did in the same lab
        does not count."""
        trail = self.client.decisions()
        since = trail[self._audit_mark:] if len(trail) >= self._audit_mark else trail
        return [d for d in since if d.get("sid") == self.client.session_id
                and (kind is None or d["kind"] == kind)]

    def ask(self, prompt: str) -> Turn:
        """Ask in the chat box; returns at once (answer pushes on the phone card meanwhile)."""
        return self.chat.ask(prompt)

    def widget(self) -> w.Widget:
        style = TRAINER_CSS if self.trainer else ""
        left = w.VBox([w.HTML(f"{style}<h3>Chat</h3>"), self.chat.widget,
                       w.HTML("<h3>Phone</h3>"), self.phone.widget])
        right = w.VBox([w.HTML("<h3>Last call</h3>"), self.sequence.widget,
                        self.inspector.widget])
        box = w.VBox([w.HBox([left, right]), w.HTML("<h3>Security events</h3>"),
                      self.events.widget])
        if self.trainer:
            box.add_class("iia-trainer")
        return box

    def show(self) -> None:
        display(self.widget())

    def snapshot(self) -> None:
        """A static picture of the panels, kept in the notebook's output."""
        self.settle()
        self.refresh()
        display(HTML(self.snapshot_html()))

    def snapshot_html(self) -> str:
        size = f"font-size:{TRAINER_FONT_PX}px;line-height:1.4;" if self.trainer else ""
        return (f"<div class='iia-snapshot' style='{size}border:1px solid #ddd;padding:.5em'>"
                f"<h4>Chat</h4>{self.chat.snapshot_html()}{self.phone.snapshot_html()}"
                f"{self.sequence.snapshot_html()}{self.inspector.snapshot_html()}"
                f"<h4>Security events (this session)</h4>{self.events.snapshot_html()}"
                "</div>")

    def close(self) -> None:
        self._stop.set()
        self._poller.join(timeout=5)
        self.phone.stop()
        self.client.close()
