"""`make demo` walks the four tiers through the real chain and says whether each behaved, on a lab
of its own: the process topology (one OS process per zone), as `iia-lab up` runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from harness.lab_state import running
from harness.paths import project_root


@pytest.mark.timeout(600)  # a whole lab plus four tiers; on a loaded machine well over 120 s
def test_the_demo_shows_all_four_tiers(tmp_path) -> None:
    env = {**os.environ, "IIA_LAB_DIR": str(tmp_path / "no-lab"), "NO_COLOR": "1"}
    result = subprocess.run([sys.executable, "-m", "harness.demo"], cwd=project_root(),
                            env=env, capture_output=True, text=True, timeout=540)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # its own lab, the process topology: one process per zone, each its own pid
    [line] = [x for x in out.splitlines() if x.startswith("  processes: ")]
    pids = dict(re.findall(r"(\w+) pid (\d+)", line))
    assert set(pids) == {"spire", "vault", "verify", "model", "caep_receiver", "iia"}, line
    assert len(set(pids.values())) == 6, line
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
    assert "Every tier behaved as designed" in out, out
    # and the demo stopped its lab: none of those processes is left
    assert [name for name, pid in pids.items() if running(int(pid))] == []

