"""`make demo`: a headless walkthrough of the four tiers through the real chain.

It signs alice in at the chat route exactly as a browser would (code + PKCE at the IdP), sends
the conversation below, and prints what the agent says and the security events the chain emits.
Push approvals are answered by a scripted phone through the lab's phone API, unless
`--interactive`, where you answer them at the terminal. Uses the running lab (`iia-lab up`) when
there is one, else starts its own: the same process topology (a supervisor and one OS process
per zone), in a private lab directory, stopped when the demo ends. It reaches the lab only
through its endpoints and HTTP APIs (chat route, phone, console, CAEP receiver).

    tier 1  list users                                       no approval
    tier 2  create a user and add them to a group            one approval, then cached
    tier 3  deactivate a user and revoke their sessions      one approval per action
    tier 4  delete a user                                    refused at the token endpoint

It ends with continuous evaluation: a poisoned user record makes the agent try a blocked action,
then another; Antenna's anomaly rule revokes the session through CAEP, the IdP and the MCP server
drop it, and the agent's next call gets 401. The SET trail the CAEP receiver got is printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import threading
import time
from typing import Any, ClassVar

import httpx

from harness.lab_client import LabClient, PhoneApi
from harness.notebook import attach_or_start

__all__ = ["main"]

_COLOR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
_OUT = threading.Lock()


def c(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _COLOR else text


def say(text: str = "", end: str = "\n") -> None:
    with _OUT:
        print(text, end=end, flush=True)


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
            if sys.stdout.isatty():
                say("\r" + " " * 70 + "\r", end="")
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
            if self.waiting_since is not None:
                waited = time.monotonic() - self.waiting_since
                say(f"\r    {c('33', '...')} waiting for alice to answer the push on her phone "
                    f"({waited:.0f} s)", end="")
            time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()


class Phone:
    """Answers pushes through the lab's phone API: automatically, or by asking at the terminal."""

    def __init__(self, verify_url: str, interactive: bool) -> None:
        self.verify_url = verify_url
        self.interactive = interactive
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
                        say(f"\n    {c('1', 'PHONE')} ({push['user']}): "
                            f"{push['binding_message']}")
                        approve = input("    approve? [Y/n] ").strip().lower() in ("", "y", "yes")
                    else:
                        time.sleep(0.4)  # a person takes a moment
                    phone.answer(push["id"], approve)
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
        detail = f"  {c('2', str(tool.get('result', ''))[:160])}" if failed else ""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.split("\n")[0])
    parser.add_argument("--interactive", action="store_true",
                        help="answer push approvals yourself at the terminal")
    parser.add_argument("--verbose", action="store_true",
                        help="also show the passive identity events (svid_cached, secret_read)")
    args = parser.parse_args(argv)

    session = attach_or_start()
    say(c("1", "IIA Lab demo: four tiers, one identity fabric"))
    say(f"  {session.describe()}")
    if session.supervisor is not None:
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
            ("Tier 1 - read: no approval", "list users"),
            ("Tier 2 - write: approve once, then the session's consent is cached",
             f"create user {newcomer} Zoe Zimmer and add her to Engineering"),
            ("Tier 3 - sensitive: approve every single call",
             "deactivate ivan@example.com and revoke his sessions"),
            ("Tier 4 - blocked: refused at the token endpoint, nothing to approve",
             "delete ivan@example.com"),
        ]
        results = []
        for title, prompt in steps:
            say("\n" + c("1;4", title))
            results.append(converse(client, trail, prompt))
        ok = [r.get("stop") for r in results] == ["end_turn"] * 4
        # tiers 1-3: every tool the agent called did its work; tier 4: the delete was refused
        worked = all(_tools(r) and not any(failed for _, failed in _tools(r))
                     for r in results[:3])
        ok = ok and worked and ("delete_user", True) in _tools(results[3])
        events_seen = list(trail.events)
        refused = "tier4-blocked" in results[-1].get("text", "")

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
        if ok and refused and killed.get("stop") == "session_ended":
            say(c("32", "\nEvery tier behaved as designed: reads flowed, the write was approved "
                        "once, each sensitive action was approved, the delete never got a "
                        "token, and the misbehaving session was killed everywhere."))
            return 0
        say(c("31", "\nSomething did not behave as designed; see above."))
        return 1
    finally:
        trail.stop()
        phone.stop()
        client.close()
        session.close()


if __name__ == "__main__":
    sys.exit(main())
