"""`make demo` walks the four tiers through the real chain and says what happened per tier, on a
lab of its own: the process topology (one OS process per zone), as `iia-lab up` runs it, so a lab
a person runs is never touched. Interactive: the pushes are answered at the terminal (here a
piped stdin), the prompt is never drawn over, and a denial is reported as a denial."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from harness.demo import Screen, tier_verdict
from harness.lab_state import running, write_state
from harness.paths import project_root


def run_demo(tmp_path: Path, *args: str, stdin: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IIA_LAB_DIR": str(tmp_path / "no-lab"), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "harness.demo", *args], cwd=project_root(),
                          env=env, capture_output=True, text=True, timeout=540,
                          input=stdin)


def tiers(out: str) -> dict[int, tuple[str, str, list[str]]]:
    """The per-tier verdict lines: tier -> (judgement, pushes, what each tool did)."""
    found = re.findall(r"^    (as designed|NOT as designed)  tier (\d): ([^;]*); (.*)$", out,
                       re.M)
    return {int(t): (judgement, pushes, rest.split("; ")) for judgement, t, pushes, rest in found}


def own_lab(out: str) -> dict[str, str]:
    [line] = [x for x in out.splitlines() if x.startswith("  processes: ")]
    return dict(re.findall(r"(\w+) pid (\d+)", line))


@pytest.mark.timeout(600)  # a whole lab plus four tiers; on a loaded machine well over 120 s
def test_the_demo_shows_all_four_tiers(tmp_path) -> None:
    result = run_demo(tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # its own lab, the process topology: one process per zone, each its own pid
    pids = own_lab(out)
    assert set(pids) == {"spire", "vault", "verify", "model", "caep_receiver", "iia"}, out
    assert len(set(pids.values())) == 6, out
    for title in ("Tier 1", "Tier 2", "Tier 3", "Tier 4"):
        assert title in out, out
    # every write did its work, and the second rode on the session's consent
    for tool in ("create_user", "add_user_to_group", "deactivate_user", "revoke_user_sessions"):
        assert f"tool {tool}: done" in out, out
    assert "tool delete_user: refused or failed" in out, out
    assert "agent:hitl_cached" in out, out
    # one write consent + two sensitive calls, per the trail summary
    assert re.search(r"agent:hitl_approved\s+x3\b", out), out
    # tier 4 once, then the anomaly scenario's two blocked attempts
    assert re.search(r"agent:token_exchange_denied\s+x3\b", out), out
    assert "session-revoked" in out and "the next call was refused" in out
    assert "tier4-blocked" in out and "agent:token_exchange_denied" in out
    # the refusal's words are cut at a word, never mid-word ("(policy tier4-bloc")
    refusal = next(line for line in out.splitlines() if "tool delete_user: refused" in line)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", refusal)
    assert "(policy tier4-blocked)" in plain or plain.endswith(" …"), refusal
    assert "Every tier behaved as designed" in out, out
    verdict = tiers(out)
    assert verdict[1] == ("as designed", "no push", ["list_users done"]), out
    assert verdict[2][:2] == ("as designed", "pushes: 1 approved, 1 on the session's consent")
    assert {"create_user done", "add_user_to_group done"} <= set(verdict[2][2]), out
    assert verdict[3][:2] == ("as designed", "pushes: 2 approved"), out
    assert {"deactivate_user done", "revoke_user_sessions done"} <= set(verdict[3][2]), out
    assert verdict[4][:2] == ("as designed", "no push"), out
    assert "delete_user refused by policy (no token, nothing to approve)" in verdict[4][2]
    # and the demo stopped its lab: none of those processes is left
    assert [name for name, pid in pids.items() if running(int(pid))] == []



@pytest.mark.timeout(600)
def test_a_denied_push_is_reported_as_denied_and_a_running_lab_is_untouched(
        tmp_path: Path) -> None:
    """--interactive with the answers piped in: approve the write consent and the deactivation,
    deny the session revocation. The verdict names the denial; it never claims each sensitive
    action was approved. A lab recorded in the lab directory is not used (nor touched)."""
    recorded = tmp_path / "no-lab"
    write_state(recorded, {"verify": "http://127.0.0.1:9"}, {"IIA_X": "1"}, {"mode": "x"})
    before = sorted((p.name, p.read_bytes()) for p in recorded.iterdir())
    result = run_demo(tmp_path, "--interactive", stdin="y\ny\nn\n")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # each push was asked at the terminal and the answer read there
    asked = re.findall(r"PHONE \(alice@example.com\): (.*)\n    approve\? \[Y/n\] (\S+)", out)
    assert [answer for _, answer in asked] == ["y", "y", "n"], out
    assert "Revoke" in asked[2][0] or "revoke" in asked[2][0], asked
    verdict = tiers(out)
    assert verdict[3][:2] == ("as designed", "pushes: 1 approved, 1 denied"), out
    assert "deactivate_user done" in verdict[3][2]
    assert "revoke_user_sessions refused: denied on the phone, nothing changed" in verdict[3][2]
    assert [v[0] for v in verdict.values()] == ["as designed"] * 4, out
    assert "each sensitive action was approved" not in out
    assert "Every tier behaved as designed" not in out
    assert "behaved as designed for the answers given (1 denied)" in out, out
    assert re.search(r"agent:hitl_denied\s+x1\b", out), out
    assert [name for name, pid in own_lab(out).items() if running(int(pid))] == []
    assert sorted((p.name, p.read_bytes()) for p in recorded.iterdir()) == before


# -- the verdict and the screen, without a lab -------------------------------------------------

def tool(name: str, result: str = "{}", error: bool = False) -> dict[str, object]:
    return {"name": name, "result": result, "is_error": error}


def test_the_verdict_names_an_expired_push_and_an_unexplained_failure() -> None:
    expired = {"stop": "end_turn", "tools": [
        tool("deactivate_user", "{}"),
        tool("revoke_user_sessions", "[approval_timeout] nobody answered in 120 s", True)]}
    events = [{"type": "agent:hitl_approved"}, {"type": "agent:hitl_expired"}]
    ok, line = tier_verdict(3, expired, events)
    assert ok, line
    assert line == ("tier 3: pushes: 1 approved, 1 expired; deactivate_user done; "
                    "revoke_user_sessions refused: push expired, nothing changed")
    # a refusal with no push to explain it is not as designed
    ok, line = tier_verdict(3, expired, [{"type": "agent:hitl_approved"}])
    assert not ok, line
    broken = {"stop": "end_turn", "tools": [tool("create_user", "[dependency_unavailable] "
                                                 "vault is down", True)]}
    ok, line = tier_verdict(2, broken, [{"type": "agent:hitl_approved"}])
    assert not ok and "create_user FAILED: [dependency_unavailable]" in line
    # tier 4 must be refused by policy; done would be a breach
    ok, _ = tier_verdict(4, {"stop": "end_turn", "tools": [tool("delete_user")]}, [])
    assert not ok


def test_no_progress_line_is_drawn_over_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    screen = Screen()
    screen.tty = True
    out = io.StringIO()
    read, write = os.pipe()
    stdin = os.fdopen(read)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stdin", stdin)
    waiting_since = 0.5  # a wait that began before the prompt
    asker = threading.Thread(target=lambda: screen.ask("PHONE: Deactivate Ivan?",
                                                       "approve? [Y/n] "))
    asker.start()
    while not screen.prompting:
        threading.Event().wait(0.01)
    drawer = threading.Thread(target=lambda: screen.progress("... waiting (3 s)", waiting_since))
    drawer.start()  # blocks while the prompt is up
    os.write(write, b"n\n")
    os.close(write)
    asker.join(10)
    drawer.join(10)
    stdin.close()
    assert not asker.is_alive() and not drawer.is_alive()
    # the prompt was shown and answered; the wait it answered drew nothing, then or after
    assert out.getvalue().startswith("PHONE: Deactivate Ivan?\napprove? [Y/n] ")
    assert "waiting" not in out.getvalue()
