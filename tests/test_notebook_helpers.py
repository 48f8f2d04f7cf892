"""harness.notebook: a recorded lab that is down is an error (not a silent second lab), a
policy edited from a notebook always comes back, and a lab a notebook starts is the process
topology (one OS process per zone under a supervisor, in a private lab directory) that leaves no
process behind: not when the kernel exits without closing it, not when the kernel is killed.

The lab tests run the kernel's part in a child interpreter (as a Jupyter kernel is one) and look
at its processes through /proc. No test asserts a duration: every wait is for a condition, with
a generous timeout."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.lab_state import running, write_state
from harness.notebook import (
    OWNER,
    LabSession,
    LabUnhealthyError,
    attach_or_start,
    remove_abandoned_labs,
    restore_policy_backup,
)
from harness.paths import project_root

WAIT = 600.0  # seconds: a lab start or a stop that has not happened by then is hung, not slow
# what /proc/<pid>/cmdline shows for each zone's process (as tests/test_supervisor.py)
COMMANDS = {"spire": "-m harness.serve spire", "vault": "server -dev",
            "verify": "-m harness.serve verify", "model": "-m harness.serve model",
            "caep_receiver": "-m harness.serve caep-receiver",
            "iia": "-m iia.serve --console"}
# the kernel's part: start a lab as a notebook does, say what it started, then wait for a line:
# "exit" returns without closing the session (interpreter exit must stop the lab)
KERNEL = textwrap.dedent("""
    import json, sys
    from harness.notebook import attach_or_start
    session = attach_or_start()
    print(json.dumps({"children": {s.name: s.pid for s in session.status()},
                      "private": str(session._private),
                      "runtime_dir": str(session.supervisor.runtime_dir),
                      "fixtures": str(session.fixtures),
                      "lab_directory": str(session.lab_directory),
                      "attached": session.attached}), flush=True)
    sys.stdin.readline()
    """)


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


# -- a lab started for a notebook: the process topology, and nothing left behind ---------------

def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def wait_until(condition: Any, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.1)


class Kernel:
    """The KERNEL script in a child interpreter with its own temp directory (short: the
    Workload API socket lives in it) and an empty lab directory (no `iia-lab up` there)."""

    def __init__(self, tmp: Path, lab_dir: Path) -> None:
        self.tmp, self.lab_dir = tmp, lab_dir
        env = {**os.environ, "IIA_LAB_DIR": str(lab_dir), "TMPDIR": str(tmp)}
        self.stderr = tmp / "kernel.err"
        with self.stderr.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", KERNEL], cwd=project_root(),
                                         env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._lines.put(line)
        self._lines.put("")

    def started(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"the kernel did not start a lab within {WAIT:.0f} s") from None
        if not line:
            self.proc.wait(timeout=WAIT)
            raise AssertionError(f"the kernel exited ({self.proc.returncode}) without a lab:\n"
                                 + self.errors())
        report: dict[str, Any] = json.loads(line)
        return report

    def exit(self) -> int:
        """Let the script end (the interpreter exits without `session.close()`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("exit\n")
        self.proc.stdin.close()
        return self.proc.wait(timeout=WAIT)

    def errors(self) -> str:
        return self.stderr.read_text()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()


@pytest.fixture
def kernel_dirs() -> Iterator[tuple[Path, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="nbk-", dir="/tmp"))
    try:
        yield tmp, tmp / "no-lab"
    finally:
        remove_abandoned_labs(tmp)  # whatever a failed assertion left
        shutil.rmtree(tmp, ignore_errors=True)


def assert_process_topology(report: dict[str, Any], kernel_pid: int) -> None:
    children = report["children"]
    assert set(children) == set(COMMANDS)
    assert len(set(children.values())) == len(COMMANDS) and kernel_pid not in children.values()
    for name, pid in children.items():
        assert running(pid) and COMMANDS[name] in cmdline(pid), (name, cmdline(pid))
    # the Verify process reads the notebook's private fixtures (where its policy edits go)
    private = Path(report["private"])
    assert Path(report["fixtures"]) == private / "fixtures"
    assert environ(children["verify"])["IIA_FIXTURES_DIR"] == report["fixtures"]
    # its own lab directory, never the person's `.lab/` (IIA_LAB_DIR here)
    assert report["attached"] is False and Path(report["lab_directory"]) == private / "lab"
    assert (private / "lab" / "lab.json").exists()


def test_a_notebooks_lab_is_one_process_per_zone_and_exit_leaves_nothing(
        kernel_dirs: tuple[Path, Path]) -> None:
    """The kernel exits without `session.close()`: the lab is stopped at interpreter exit
    (every child gone, the private and runtime directories removed), without an error."""
    tmp, lab_dir = kernel_dirs
    kernel = Kernel(tmp, lab_dir)
    try:
        report = kernel.started()
        assert_process_topology(report, kernel.proc.pid)
        assert not lab_dir.exists() or not list(lab_dir.iterdir())  # nothing in `.lab/`
        code = kernel.exit()
    finally:
        kernel.kill()
    err = kernel.errors()
    assert code == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert [n for n, pid in report["children"].items() if running(pid)] == []
    assert not Path(report["private"]).exists() and not Path(report["runtime_dir"]).exists()
    assert list(tmp.glob("iia-*")) == []  # no other directory of the lab's either


def test_a_killed_kernel_leaves_no_child_and_its_files_are_swept(
        kernel_dirs: tuple[Path, Path]) -> None:
    """kill -9 of the kernel: every zone process dies with it (the supervisor's parent-death
    signal); the next `attach_or_start()` sweeps the directories it left, and only those."""
    tmp, lab_dir = kernel_dirs
    kernel = Kernel(tmp, lab_dir)
    try:
        report = kernel.started()
        assert_process_topology(report, kernel.proc.pid)
        children = report["children"]
        kernel.proc.send_signal(signal.SIGKILL)
        kernel.proc.wait(timeout=WAIT)
        wait_until(lambda: not [p for p in children.values() if running(p)],
                   f"every child of the killed kernel gone: {children}")
    finally:
        kernel.kill()
    private, runtime_dir = Path(report["private"]), Path(report["runtime_dir"])
    assert private.is_dir() and runtime_dir.is_dir()  # what a killed process cannot remove
    # a live kernel's directory and one that is not a notebook's stay
    alive = tmp / "iia-notebook-alive"
    alive.mkdir()
    (alive / OWNER).write_text(json.dumps({"pid": os.getpid(), "start_time": Path(
        "/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]}))
    unowned = tmp / "iia-notebook-unowned"
    unowned.mkdir()
    assert sorted(remove_abandoned_labs(tmp)) == sorted([private, runtime_dir])
    assert not private.exists() and not runtime_dir.exists()
    assert alive.is_dir() and unowned.is_dir()
