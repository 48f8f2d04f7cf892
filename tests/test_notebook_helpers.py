"""harness.notebook: a recorded lab that is down is an error (not a silent second lab), and a
policy edited from a notebook always comes back."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from harness.lab_state import write_state
from harness.notebook import LabSession, LabUnhealthyError, attach_or_start, restore_policy_backup


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unhealthy_recorded_lab_is_an_error_naming_the_services(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IIA_LAB_DIR", str(tmp_path))
    write_state(tmp_path, {"verify": dead_url()}, {"IIA_X": "1"}, {"mode": "docker"})
    with pytest.raises(LabUnhealthyError) as caught:
        attach_or_start()
    assert "verify (unreachable" in str(caught.value) and "iia-lab down" in str(caught.value)


def test_a_partial_lab_state_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IIA_LAB_DIR", str(tmp_path))
    (tmp_path / "endpoints.json").write_text(json.dumps({"verify": dead_url()}))
    with pytest.raises(LabUnhealthyError, match="partial lab state"):
        attach_or_start()


def test_edited_policy_is_restored_when_the_block_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IIA_LAB_DIR", str(tmp_path / "lab"))
    fixtures = tmp_path / "fixtures"
    (fixtures / "policy").mkdir(parents=True)
    session = LabSession(endpoints={}, env={}, fixtures=fixtures)
    session.policy_file.write_text("original")
    with pytest.raises(AssertionError), session.edited_policy("edited") as policy:
        assert policy.read_text() == "edited"
        assert list((tmp_path / "lab").glob("policy-backup.*.json"))
        raise AssertionError("a failing notebook cell")
    assert session.policy_file.read_text() == "original"
    assert not list((tmp_path / "lab").glob("policy-backup.*.json"))


def test_a_killed_kernels_edit_is_undone_next_time(tmp_path: Path) -> None:
    policy = tmp_path / "token_exchange.cedar"
    policy.write_text("edited by a kernel that was killed")
    dead_pid = 2**22 + 7  # above the default pid_max: no such process
    (tmp_path / f"policy-backup.{dead_pid}.json").write_text(
        json.dumps({"path": str(policy), "text": "original"}))
    assert restore_policy_backup(tmp_path) == [policy]
    assert policy.read_text() == "original"
    assert list(tmp_path.glob("policy-backup.*")) == []
