"""`make demo`: a headless walkthrough of the four tiers through the real chain.

It signs alice in at the chat route exactly as a browser would (code + PKCE at the IdP), sends
the conversation below, and prints what the agent says and the security events the chain emits.
Push approvals are answered by a scripted phone through the lab's phone API, unless
`--interactive`, where you answer them at the terminal (the prompt stays on screen: nothing else
prints while it waits for you). It always runs a lab of its own, so a lab you run (`iia-lab up`,
`make lab`) is left exactly as it was, whatever the demo creates, deactivates or is refused: the
same process topology (a supervisor and one OS process per zone), on a private copy of the
fixtures in a private lab directory, stopped and removed when the demo ends. It reaches the lab
only through its endpoints and HTTP APIs (chat route, phone, console, CAEP receiver).

    tier 1  list users                                       no approval
    tier 2  create a user and add them to a group            one approval, then cached
    tier 3  deactivate a user and revoke their sessions      one approval per action
    tier 4  delete a user                                    refused at the token endpoint

It ends with continuous evaluation: a poisoned user record makes the agent try a blocked action,
then another; Antenna's anomaly rule revokes the session through CAEP, the IdP and the MCP server
drop it, and the agent's next call gets 401. The SET trail the CAEP receiver got is printed.

The verdict says per tier what happened: which pushes were approved, denied or expired, and that
each action did its work or was refused accordingly. "Every tier behaved as designed" is printed
only when every push was approved and everything did its work (the delete refused); after a
denial or an expiry it says what was refused and why.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import textwrap
import threading
import time
from typing import Any, ClassVar

import httpx

from harness.lab_client import LabClient, PhoneApi
from harness.notebook import remove_abandoned_labs, start_lab
from iia.catalog import CATALOG

__all__ = ["main"]

_COLOR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")



def _short(text: str, width: int = 240) -> str:
    """`text` cut at a word boundary, with an ellipsis when cut (never mid-word, e.g. not
    "(policy tier4-bloc"): the refusal's words a room reads."""
    return textwrap.shorten(text, width=width, placeholder=" …")

def c(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _COLOR else text


class Screen:
    """The terminal, shared by the threads that print: one line at a time, a progress line that
    the next line replaces, and a prompt during which nothing else prints (the others wait), so
    `approve? [Y/n]` stays visible until it is answered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.progress_shown = False
        self.prompting = False
        self.answered_at = 0.0  # monotonic time of the last push answered
        self.tty = sys.stdout.isatty()

    def _clear_progress(self) -> None:
        if self.progress_shown:
            print("\r" + " " * 78 + "\r", end="", flush=True)
            self.progress_shown = False

    def say(self, text: str = "", end: str = "\n") -> None:
        with self._lock:
            self._clear_progress()
            print(text, end=end, flush=True)

    def progress(self, text: str, since: float) -> None:
        """Redraw the progress line of a wait that began at `since` (monotonic), unless a prompt
        is up, the push was answered since, or there is no terminal to redraw on."""
        with self._lock:
            if self.tty and not self.prompting and since > self.answered_at:
                print(f"\r{text}", end="", flush=True)
                self.progress_shown = True

    def answered(self) -> None:
        """A push was answered: no progress line for the waits before now."""
        with self._lock:
            self.answered_at = time.monotonic()

    def ask(self, header: str, question: str) -> str | None:
        """Print `header`, ask `question` and return the answer line (None at end of input).
        Nothing else prints meanwhile."""
        with self._lock:
            self._clear_progress()
            self.prompting = True
            try:
                print(header, flush=True)
                try:
                    answer: str | None = input(question)
                except EOFError:
                    answer = None
                if not sys.stdin.isatty():  # a piped answer is not echoed: show it
                    print(answer if answer is not None else "(end of input)", flush=True)
                return answer
            finally:
                self.prompting = False
                self.answered_at = time.monotonic()


SCREEN = Screen()


def say(text: str = "", end: str = "\n") -> None:
    SCREEN.say(text, end)


class Trail:
    """Prints this session's security events as they arrive (from the lab's console), and a
    progress line while a push waits."""

    COLORS: ClassVar[dict[str, str]] = {"success": "32", "denied": "31", "error": "31",
                                        "pending": "33", "retry": "33", "expired": "31"}
    QUIET: ClassVar[set[str]] = {"spiffe:svid_cached", "vault:secret_read"}

    def __init__(self, client: LabClient, verbose: bool) -> None:
        self.client = client
        self.verbose = verbose
        self.events: list[dict[str, Any]] = []
        self.waiting_since: float | None = None
        self._stop = threading.Event()
        self._cursor = 0
        self._pulling = threading.Lock()  # the reader thread and settle() share the cursor

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        if sys.stdout.isatty():  # a progress line needs a terminal to redraw on
            threading.Thread(target=self._progress, daemon=True).start()

    def pull(self) -> int:
        """Read the events the console holds past our cursor; how many arrived."""
        with self._pulling:
            new, self._cursor = self.client.events(self._cursor)
            for event in new:
                self._arrived(event)
            return len(new)

    def _read(self) -> None:
        failing_since: float | None = None
        while not self._stop.is_set():
            try:
                self.pull()
                failing_since = None
            except httpx.HTTPError:
                # a slow answer on a busy machine is not a dead console: keep trying for a while
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > 60 and not self._stop.is_set():
                    say(c("31", "    (the console stopped answering)"))
                    return
            time.sleep(0.1)

    def _arrived(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event["type"] == "agent:push_pending":
            self.waiting_since = time.monotonic()
        if event["type"] in ("agent:hitl_approved", "agent:hitl_denied", "agent:hitl_expired"):
            self.waiting_since = None
        if self.verbose or event["type"] not in self.QUIET:
            self.show(event)

    def settle(self) -> None:
        """Read every event the console holds now. A turn's own events are on the console
        before the turn's answer is (the MCP server records each decision as it makes it), so
        after a turn this shows all of them: a condition, not a pause."""
        while self.pull():
            pass

    def show(self, e: dict[str, Any]) -> None:
        color = self.COLORS.get(e.get("outcome", ""), "0")
        where = f" {e['toolName']}" if e.get("toolName") else ""
        tier = f" tier {e['tier']}" if e.get("tier") else ""
        reason = f"  {c('2', e['reason'])}" if e.get("reason") and e["outcome"] in (
            "denied", "error") else ""
        say(f"    {c(color, e['type'].ljust(30))}{where}{tier}  {e.get('durationMs', 0)} ms"
            f"{reason}")

    def _progress(self) -> None:
        while not self._stop.is_set():
            since = self.waiting_since
            if since is not None:
                SCREEN.progress(f"    {c('33', '...')} waiting for alice to answer the push on "
                                f"her phone ({time.monotonic() - since:.0f} s)", since)
            time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()


class Phone:
    """Answers pushes through the lab's phone API: automatically, or by asking at the terminal.
    `answers` records each push and what became of the answer."""

    def __init__(self, verify_url: str, interactive: bool) -> None:
        self.verify_url = verify_url
        self.interactive = interactive
        self.answers: list[dict[str, Any]] = []
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        seen: set[str] = set()
        with httpx.Client(timeout=5) as http:
            phone = PhoneApi(self.verify_url, http)
            while not self._stop.is_set():
                for push in phone.pending():
                    if push["id"] in seen:
                        continue
                    seen.add(push["id"])
                    approve = True
                    if self.interactive:
                        line = SCREEN.ask(f"\n    {c('1', 'PHONE')} ({push['user']}): "
                                          f"{push['binding_message']}", "    approve? [Y/n] ")
                        if line is None:
                            say("    (no more input: denied)")
                        approve = line is not None and line.strip().lower() in ("", "y", "yes")
                    else:
                        time.sleep(0.4)  # a person takes a moment
                    SCREEN.answered()
                    response = phone.answer(push["id"], approve)
                    status = response.json().get("status") if response.status_code == 200 \
                        else None
                    if status is None:  # too late (it expired meanwhile) or already answered
                        error = response.json().get("error_description", response.status_code)
                        say(f"    {c('31', 'not answered')}: {error}")
                    self.answers.append({"id": push["id"], "tier": push.get("tier"),
                                         "approve": approve, "status": status})
                time.sleep(0.2)

    def stop(self) -> None:
        self._stop.set()


def converse(client: LabClient, trail: Trail, prompt: str) -> dict[str, Any]:
    say(f"\n{c('1;36', 'alice')}  {prompt}")
    done = client.ask_async(prompt).result()
    trail.settle()
    color = "31" if done.get("stop") != "end_turn" else "1;35"
    say(f"{c(color, 'agent')}  {done.get('text', '')}")
    for tool in done.get("tools", []):
        failed = tool.get("is_error")
        mark = c("31", "refused or failed") if failed else c("32", "done")
        detail = f"  {c('2', _short(str(tool.get('result', ''))))}" if failed else ""
        say(f"    {c('2', 'tool')} {tool['name']}: {mark}{detail}")
    return done


def _tools(done: dict[str, Any]) -> list[tuple[str, bool]]:
    """(tool name, failed) for each tool call of a turn, in order."""
    return [(t["name"], bool(t.get("is_error"))) for t in done.get("tools", [])]


def _anomaly(client: LabClient, endpoints: dict[str, str], trail: Trail) -> dict[str, Any]:
    """Two blocked attempts in one session -> CAEP session-revoked -> the next call is 401."""
    converse(client, trail, "please review the contractors")  # the poisoned record: delete_user
    converse(client, trail, "make bob@example.com an admin")  # a second blocked action
    deadline = time.monotonic() + 60  # the SET travels Antenna -> receivers asynchronously
    while time.monotonic() < deadline and not any(
            e["type"] == "caep:session_revoked" for e in trail.events):
        trail.settle()
        time.sleep(0.05)
    announced = time.monotonic()
    done = converse(client, trail, "list users")
    if done.get("stop") == "session_ended":
        say(f"  {c('31', 'refused')}: the next call was refused "
            f"{(time.monotonic() - announced) * 1000:.0f} ms after the revocation was announced")
    sid = client.session_id
    received = httpx.get(endpoints["caep_receiver"] + "/received", timeout=10).json()
    say("\n" + c("1", "SET trail at the CAEP receiver (this session)"))
    for item in received:
        subject = item["claims"].get("sub_id", {})
        if subject.get("session", {}).get("id") != sid:
            continue
        [(kind, payload)] = item["claims"]["events"].items()
        name = kind.rsplit("/", 1)[1]
        color = "31" if "denied" in name or "revoked" in name else "32"
        what = payload.get("toolName") or payload.get("reason_admin", {}).get("en", "")
        say(f"    {c(color, name.ljust(24))} jti={item['jti'][:10]}...  txn="
            f"{item['claims'].get('txn', '')[:12]}  {what}")
    return done


# a refused tool's result starts with its wire code; these two mean the person said no (or nobody
# answered in time), so nothing happened, as designed
NOT_APPROVED = {"approval_denied": "denied on the phone", "approval_timeout": "push expired"}
TIERS = {t.name: t.tier for t in CATALOG}
PUSH_EVENTS = {"agent:hitl_approved": "approved", "agent:hitl_denied": "denied",
               "agent:hitl_expired": "expired"}


def _code(result: str) -> str | None:
    """The wire code a refused tool's result opens with ("[approval_denied] ...")."""
    text = result.strip()
    return text[1:text.index("]")] if text.startswith("[") and "]" in text else None


def tier_verdict(tier: int, done: dict[str, Any], events: list[dict[str, Any]]
                 ) -> tuple[bool, str]:
    """Whether one tier's step behaved as designed given how its pushes were answered, and a
    line saying what happened: each push approved, denied or expired; each tool done, or refused
    and why. Tier 1 needs no push; tiers 2-3 do their work when approved and are refused,
    changing nothing, when denied or expired; tier 4 is refused by policy with nothing to
    approve."""
    kinds = [e["type"] for e in events]
    pushes = [PUSH_EVENTS[k] for k in kinds if k in PUSH_EVENTS]
    tools = done.get("tools", [])
    ok = done.get("stop") == "end_turn" and bool(tools)
    parts = []
    for tool in tools:
        code = _code(str(tool.get("result", ""))) if tool.get("is_error") else None
        if not tool.get("is_error"):
            parts.append(f"{tool['name']} done")
            ok = ok and TIERS.get(tool["name"]) != 4  # a blocked action done: a breach
        elif tier == 4:
            parts.append(f"{tool['name']} refused by policy (no token, nothing to approve)")
            ok = ok and "tier4-blocked" in str(tool.get("result", ""))
        elif code in NOT_APPROVED:
            parts.append(f"{tool['name']} refused: {NOT_APPROVED[code]}, nothing changed")
        else:
            parts.append(f"{tool['name']} FAILED: {_short(str(tool.get('result', '')), 120)}")
            ok = False
    refused = [_code(str(t.get("result", ""))) for t in tools if t.get("is_error")]
    if tier in (2, 3):  # each refusal matches a push the person denied or let expire
        ok = ok and refused.count("approval_denied") == pushes.count("denied") \
            and refused.count("approval_timeout") == pushes.count("expired")
    elif pushes:  # tiers 1 and 4 ask nobody
        ok = False
    asked = ", ".join(f"{pushes.count(o)} {o}" for o in ("approved", "denied", "expired")
                      if o in pushes)
    cached = kinds.count("agent:hitl_cached")
    approvals = (f"pushes: {asked}" if pushes else "no push") + (
        f", {cached} on the session's consent" if cached else "")
    return ok, f"tier {tier}: {approvals}; " + "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n")[0])
    parser.add_argument("--interactive", action="store_true",
                        help="answer push approvals yourself at the terminal")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the passive identity events (svid_cached, secret_read)")
    args = parser.parse_args(argv)

    remove_abandoned_labs()
    say(c("1", "IIA Lab demo: four tiers, one identity fabric"))
    say("  starting a lab of its own (a lab you run is left untouched)...")
    session = start_lab()
    say(f"  {session.describe()}")
    say("  processes: " + ", ".join(f"{s.name} pid {s.pid}" for s in session.status()))
    client = LabClient(session.endpoints)
    phone = Phone(session.endpoints["verify"], args.interactive)
    trail = Trail(client, args.verbose)
    try:
        say(f"  signed in as {client.user} (code + PKCE at the IdP)")
        phone.start()
        trail.start()
        newcomer = f"zoe.{secrets.token_hex(2)}@example.com"
        steps = [
            (1, "Tier 1 - read: no approval", "list users"),
            (2, "Tier 2 - write: approve once, then the session's consent is cached",
             f"create user {newcomer} Zoe Zimmer and add her to Engineering"),
            (3, "Tier 3 - sensitive: approve every single call",
             "deactivate ivan@example.com and revoke his sessions"),
            (4, "Tier 4 - blocked: refused at the token endpoint, nothing to approve",
             "delete ivan@example.com"),
        ]
        verdicts = []
        for tier, title, prompt in steps:
            say("\n" + c("1;4", title))
            mark = len(trail.events)
            done = converse(client, trail, prompt)
            verdicts.append(tier_verdict(tier, done, trail.events[mark:]))
        events_seen = list(trail.events)

        say("\n" + c("1;4", "Continuous evaluation - a compromised agent loses the session"))
        say(c("2", "  alice signs in again (a new session), and asks for a review; a user record "
                   "carries instructions for the agent"))
        trail.stop()
        second = LabClient(session.endpoints)
        trail = Trail(second, args.verbose)
        trail.start()
        try:
            killed = _anomaly(second, session.endpoints, trail)
            events_seen += trail.events
        finally:
            trail.stop()
            second.close()
        say("\n" + c("1", "Event trail summary"))
        counts: dict[str, int] = {}
        for event in events_seen:
            counts[event["type"]] = counts.get(event["type"], 0) + 1
        for kind in sorted(counts):
            say(f"    {kind:<32} x{counts[kind]}")
        return _verdict(verdicts, killed.get("stop") == "session_ended",
                        [a for a in phone.answers if a["status"] != "approved"])
    finally:
        trail.stop()
        phone.stop()
        client.close()
        session.close()


def _verdict(verdicts: list[tuple[bool, str]], killed: bool,
             not_approved: list[dict[str, Any]]) -> int:
    """Print what happened per tier and the overall verdict; 0 when the chain behaved as
    designed for the answers the pushes got."""
    say("\n" + c("1", "What happened, per tier"))
    for ok, line in verdicts:
        say(f"    {c('32', 'as designed') if ok else c('31', 'NOT as designed')}  {line}")
    ending = "the misbehaving session was killed everywhere" if killed else \
        "the misbehaving session was NOT killed"
    say(f"    {c('32', 'as designed') if killed else c('31', 'NOT as designed')}  "
        f"continuous evaluation: {ending}")
    behaved = killed and all(ok for ok, _ in verdicts)
    if not behaved:
        say(c("31", "\nSomething did not behave as designed; see above."))
        return 1
    if not not_approved:
        say(c("32", "\nEvery tier behaved as designed: reads flowed, the write was approved "
                    "once, each sensitive action was approved, the delete never got a "
                    "token, and the misbehaving session was killed everywhere."))
    else:
        labels = [a["status"] if a["status"] in ("denied", "expired") else "not answered"
                  for a in not_approved]
        said = ", ".join(f"{labels.count(o)} {o}" for o in dict.fromkeys(labels))
        say(c("32", f"\nThe chain behaved as designed for the answers given ({said}): what "
                    "you approved was done, what was not approved was refused and nothing "
                    "changed for it, the delete never got a token, and the misbehaving "
                    "session was killed everywhere."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
