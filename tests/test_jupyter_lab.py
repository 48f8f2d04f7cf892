"""`make lab`'s JupyterLab (harness/jupyter_lab.py), run for real: the URL it prints answers, and
Ctrl-C stops it whichever process the SIGINT reaches (issue #17 item 6).

A trainer's terminal is on JupyterLab's stdin; with a terminal there, a SIGINT to the server
used to make it ask "Shutdown this Jupyter server (y/[n])?" and carry on after 5 s unanswered,
so the lab kept running. The tests give the server a pseudo-terminal as stdin to see that.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.jupyter_lab import SETTINGS, write_settings

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and ptys")


@dataclass
class RunningLab:
    wrapper: subprocess.Popen[str]
    server_pid: int
    url: str
    runtime: Path


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie (exited, not yet reaped by its parent) is gone for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _wait_gone(pid: int, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.2)
    return _gone(pid)


@pytest.fixture
def jupyter(tmp_path: Path) -> Iterator[RunningLab]:
    runtime = tmp_path / "runtime"
    # an earlier session's workspace: its tabs must not come back (nor their kernels start)
    stale = tmp_path / "lab" / "jupyterlab-workspaces" / "default-37a8.jupyterlab-workspace"
    stale.parent.mkdir(parents=True)
    stale.write_text(json.dumps({"data": {"layout-restorer:data": {"main": {"dock": {
        "type": "tab-area", "widgets": ["notebook:05_tier4_blocked.ipynb"]}}},
        "notebook:05_tier4_blocked.ipynb": {"data": {"path": "05_tier4_blocked.ipynb",
                                                     "factory": "Notebook"}}},
        "metadata": {"id": "default"}}))
    env = {**os.environ, "IIA_LAB_DIR": str(tmp_path / "lab"),
           "JUPYTER_RUNTIME_DIR": str(runtime)}
    controller, terminal = pty.openpty()
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "harness.jupyter_lab", "--port", "0", "--allow-root"],
        env=env, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    server_pid = 0
    reader: threading.Thread | None = None
    try:
        url = ""
        assert wrapper.stdout is not None
        for line in wrapper.stdout:
            if "JupyterLab is ready: open " in line:
                url = line.split("open ", 1)[1].strip()
                break
        assert url, "harness.jupyter_lab never printed its URL"
        # keep reading what JupyterLab logs: a full pipe would block it, and its shutdown
        reader = threading.Thread(target=lambda: [None for _ in wrapper.stdout or ()],
                                  daemon=True)
        reader.start()
        files = list(runtime.glob("jpserver-*.json"))
        assert len(files) == 1, files
        server_pid = int(json.loads(files[0].read_text())["pid"])
        yield RunningLab(wrapper, server_pid, url, runtime)
    finally:
        for pid in (server_pid, wrapper.pid):
            if pid and not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        wrapper.wait(timeout=30)
        if reader is not None:
            reader.join(timeout=30)  # the pipe's end: every writer has exited
        if wrapper.stdout is not None:
            wrapper.stdout.close()
        os.close(terminal)
        os.close(controller)


def test_the_printed_url_opens_jupyterlab(jupyter: RunningLab) -> None:
    page = httpx.get(jupyter.url, timeout=30)
    assert page.status_code == 200
    assert "jupyter-config-data" in page.text
    # the token is in the URL printed on the terminal; without it the page is refused
    bare = httpx.get(jupyter.url.split("?", 1)[0], timeout=30, follow_redirects=False)
    assert bare.status_code in (302, 403)


def test_an_earlier_sessions_tabs_do_not_come_back(jupyter: RunningLab) -> None:
    token = jupyter.url.split("token=", 1)[1]
    base = jupyter.url.split("/lab?", 1)[0]
    workspace = httpx.get(f"{base}/lab/api/workspaces/default", params={"token": token},
                          timeout=30)
    assert workspace.status_code == 200
    assert "05_tier4_blocked" not in workspace.text
    sessions = httpx.get(f"{base}/api/sessions", params={"token": token}, timeout=30)
    assert sessions.status_code == 200 and sessions.json() == []  # no kernel started


def test_one_sigint_to_the_server_stops_it(jupyter: RunningLab) -> None:
    os.kill(jupyter.server_pid, signal.SIGINT)
    assert _wait_gone(jupyter.server_pid), "JupyterLab is still running after one SIGINT"
    # the wrapper sees its server end and ends too
    assert jupyter.wrapper.wait(timeout=60) is not None


def test_ctrl_c_in_the_terminal_stops_the_wrapper_and_the_server(jupyter: RunningLab) -> None:
    # Ctrl-C signals the terminal's foreground process group: here, the wrapper's own group
    os.killpg(jupyter.wrapper.pid, signal.SIGINT)
    assert jupyter.wrapper.wait(timeout=60) == 0
    assert _wait_gone(jupyter.server_pid), "the wrapper exited but JupyterLab kept running"
    assert not list(jupyter.runtime.glob("jpserver-*.json"))


def test_settings_keep_what_a_person_set(tmp_path: Path) -> None:
    name = next(iter(SETTINGS))
    path = tmp_path / name
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"fetchNews": "true", "doNotDisturbMode": True}))
    write_settings(tmp_path)
    written = json.loads(path.read_text())
    assert written["doNotDisturbMode"] is True
    assert written["fetchNews"] == "false"
    # a file JupyterLab wrote with comments (not JSON) is replaced by our keys
    path.write_text("// comments\n{ }")
    write_settings(tmp_path)
    assert json.loads(path.read_text()) == SETTINGS[name]
