"""The lab's notebook widgets (ipywidgets). The logic lives in `LabClient`; these only show it.

* `ChatBox`       ask the agent; the answer streams in, tool calls listed as they happen
* `PhoneCard`     the user's phone: pending pushes with Approve / Deny and the binding message
                  (the lab phone page, which works even while a cell is running); in scripted
                  mode (`IIA_PHONE=scripted`, set by `make test`) `expect()` answers for you
* `EventTable`    live security events, denials in red with their reason; mine / all
* `TokenInspector` the decoded on-behalf-of token of the last call (`act`,
                  `authorization_details`, `exp`): never the token itself
* `SequenceView`  how long each step of the last call took
* `LabConsole`    all of them, with `trainer=True` for large text and collapsible explanations

Each widget also renders a static snapshot (`snapshot_html()`), so an executed notebook exported to
HTML still shows what happened.
"""

from __future__ import annotations

import html
import json
import os
import threading
import time
from typing import Any

import ipywidgets as w
from IPython.display import HTML, display

from harness.lab_client import LabClient, Turn

__all__ = ["ChatBox", "EventTable", "LabConsole", "PhoneCard", "SequenceView", "TokenInspector",
           "explain"]

RED, GREEN, AMBER, BLUE = "#ffebee", "#e8f5e9", "#fff8e1", "#e3f2fd"
_ROW = {"denied": RED, "error": RED, "success": GREEN, "pending": AMBER, "retry": AMBER}


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
    STEPS = (("svid", "JWT-SVID"), ("approval", "human approval"), ("exchange",
             "token exchange (incl. Vault read)"), ("admin_api", "admin API"))

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
    def __init__(self, client: LabClient, scripted: bool | None = None) -> None:
        self.client = client
        self.scripted = os.environ.get("IIA_PHONE") == "scripted" if scripted is None \
            else scripted
        page = client.endpoints["verify"] + "/lab/phone"
        self.widget = w.HTML(
            f"<iframe src='{_esc(page)}' style='width:100%;height:260px;border:1px solid #ccc;"
            f"border-radius:12px'></iframe>" if not self.scripted else
            "<i>scripted phone: pushes are answered by the notebook</i>")
        self.answered: list[dict[str, Any]] = []

    def expect(self, approve: bool = True, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the next push. Scripted: answer it (approve or deny). Otherwise: wait for
        the person to tap it on the phone card, and return what they answered."""
        push = self.client.wait_for_push(timeout=timeout if not self.scripted else 30)
        if self.scripted:
            time.sleep(0.2)
            answered = self.client.answer(push["id"], approve)
        else:
            display(HTML(f"<b>Tap {'Approve' if approve else 'Deny'} on the phone: "
                         f"{_esc(push['binding_message'])}</b>"))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(
                    p["id"] == push["id"] for p in self.client.pending_pushes()):
                time.sleep(0.3)
            answered = {**push, "status": "answered"}
        self.answered.append(answered)
        return answered


class ChatBox:
    def __init__(self, client: LabClient) -> None:
        self.client = client
        self.input = w.Text(placeholder="ask the agent, e.g. list users",
                            layout=w.Layout(width="70%"))
        self.send = w.Button(description="Send", button_style="primary")
        self.transcript = w.HTML()
        self._lines: list[str] = []
        self.send.on_click(lambda _: self.ask(self.input.value))
        self.input.continuous_update = False
        self.widget = w.VBox([self.transcript, w.HBox([self.input, self.send])])

    def ask(self, prompt: str) -> Turn:
        prompt = prompt.strip()
        self.input.value = ""
        self._lines.append(f"<div><b>you</b> {_esc(prompt)}</div>")
        answer_at = len(self._lines)
        self._lines.append("<div><b>agent</b> ...</div>")
        self._render()
        text: list[str] = []

        def on_text(delta: str) -> None:
            text.append(delta)
            self._lines[answer_at] = f"<div><b>agent</b> {_esc(''.join(text))}</div>"
            self._render()

        def on_tool(call: dict[str, Any]) -> None:
            color = "#c62828" if call.get("is_error") else "#555"
            self._lines.insert(answer_at, f"<div style='color:{color};font-family:monospace;"
                               f"font-size:.85em'>tool {_esc(call['name'])}"
                               f"({_esc(json.dumps(call.get('input', {})))})</div>")
            self._render()

        turn = self.client.ask_async(prompt, on_text=on_text, on_tool=on_tool)
        return turn

    def _render(self) -> None:
        self.transcript.value = "".join(self._lines[-60:])


class LabConsole:
    """The whole lab UI for one signed-in user."""

    def __init__(self, endpoints: dict[str, str], user: str = "alice@example.com", *,
                 trainer: bool = False, scripted_phone: bool | None = None) -> None:
        self.client = LabClient(endpoints, user)
        self.trainer = trainer
        self.chat = ChatBox(self.client)
        self.phone = PhoneCard(self.client, scripted_phone)
        self.events = EventTable(self.client)
        self.inspector = TokenInspector(self.client)
        self.sequence = SequenceView(self.client)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True, name="lab-console")
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.5):
            self.refresh()

    def refresh(self) -> None:
        try:
            self.events.poll()
            self.inspector.refresh()
            self.sequence.refresh()
        except Exception:  # noqa: S110 - a lab that is gone must not spam the notebook
            pass

    def ask(self, prompt: str) -> Turn:
        """Ask in the chat box; returns at once (answer pushes on the phone card meanwhile)."""
        return self.chat.ask(prompt)

    def widget(self) -> w.Widget:
        style = "<style>.iia-trainer{font-size:1.35em}</style>" if self.trainer else ""
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
        self.refresh()
        display(HTML("<div style='border:1px solid #ddd;padding:.5em'>"
                     f"{self.sequence.snapshot_html()}{self.inspector.snapshot_html()}"
                     f"<h4>Security events (this session)</h4>{self.events.snapshot_html()}"
                     "</div>"))

    def close(self) -> None:
        self._stop.set()
        self._poller.join(timeout=5)
        self.client.close()
