"""`make lab`'s JupyterLab: served on the notebooks, ready for a room, at a URL that works.

    python -m harness.jupyter_lab [--port 8888] [--allow-root]

* no news toast and no update check: the server's news feed is off (`LabApp.news_url=None`) and
  the lab's own settings directory (`<lab dir>/jupyterlab-settings`, JUPYTERLAB_SETTINGS_DIR)
  says "never fetch news";
* no tabs of an earlier session: each start has an empty workspaces directory
  (`<lab dir>/jupyterlab-workspaces`), so JupyterLab opens on its launcher;
* no kernel dialog: the default kernel is `python3` (the notebooks' kernelspec, the venv's
  ipykernel) and the notebook tracker starts the preferred kernel by itself;
* the URL: JupyterLab prints several and may move to another port when 8888 is taken; this
  reads the one the server really listens on (its runtime file, by pid), asks it for the page
  with the token, and only then prints `JupyterLab is ready: <url>`: the URL printed is the URL
  that answered.

Ctrl-C stops JupyterLab: it runs in its own session (the terminal's Ctrl-C reaches this wrapper,
which stops it), and a SIGINT sent to the server itself stops it at once too (`answer_yes`: it
does not stop to ask "Shutdown this Jupyter server?"). The token is made here, passed in the
environment, and printed only in the URL, on the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from harness.paths import lab_dir, project_root

__all__ = ["SETTINGS", "main", "write_settings"]

# JupyterLab user settings, per plugin: what a room must not see
SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings":
        {"autoStartDefaultKernel": True},
}


def write_settings(directory: Path) -> Path:
    """Put the lab's settings into a JupyterLab settings directory, keeping whatever else a
    person set there (a file JupyterLab wrote with comments is replaced by our keys)."""
    for name, values in SETTINGS.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            current = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            current = {}
        if not isinstance(current, dict):
            current = {}
        path.write_text(json.dumps({**current, **values}, indent=2) + "\n")
    return directory


def fresh_workspaces(directory: Path) -> Path:
    """An empty workspaces directory for this start: JupyterLab reopens the tabs (and starts
    the kernels) of the last session's workspace, five at once on a 2-core laptop; the room
    sees the lab open on its launcher instead."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def command(port: int, allow_root: bool, workspaces: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
            f"--port={port}", f"--ServerApp.root_dir={project_root() / 'notebooks'}",
            *([f"--LabApp.workspaces_dir={workspaces}"] if workspaces is not None else []),
            "--LabApp.news_url=None", "--MultiKernelManager.default_kernel_name=python3",
            # a SIGINT stops the server at once: with a terminal on stdin it would otherwise ask
            # "Shutdown this Jupyter server (y/[n])?" and carry on after 5 s unanswered
            "--ServerApp.answer_yes=True",
            *(["--allow-root"] if allow_root else [])]


def server_url(pid: int) -> str | None:
    """The URL the Jupyter server with this pid listens on (its runtime file), or None yet."""
    from jupyter_server.serverapp import list_running_servers

    for server in list_running_servers():
        if server.get("pid") == pid:
            return str(server["url"])
    return None


def wait_ready(proc: subprocess.Popen[bytes], token: str, timeout: float = 300.0) -> str:
    """The lab URL (with the token) once the server answers it with JupyterLab's page."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"JupyterLab exited (code {proc.returncode}); see its output above")
        url = server_url(proc.pid)
        if url is not None:
            page = f"{url.rstrip('/')}/lab?token={token}"
            try:
                response = httpx.get(page, timeout=10)
                if response.status_code == 200 and "jupyter-config-data" in response.text:
                    return page
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise SystemExit(f"JupyterLab did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.jupyter_lab",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8888,
                        help="the port to try first (0: any free port)")
    parser.add_argument("--allow-root", action="store_true",
                        help="let JupyterLab run as root (containers, CI sandboxes)")
    args = parser.parse_args(argv)
    # Ctrl-C stops us (and so JupyterLab) even where SIGINT was inherited ignored, as a shell
    # without job control does for a background command; Python then installs no handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # make's trap, a closed terminal or `kill` must stop JupyterLab too (it has its own session)
    for stop in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop, lambda *_: sys.exit(0))
    settings = write_settings(lab_dir() / "jupyterlab-settings")
    token = secrets.token_hex(24)
    env = {**os.environ, "JUPYTER_TOKEN": token, "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    print("==> starting JupyterLab on notebooks/ ...", flush=True)
    workspaces = fresh_workspaces(lab_dir() / "jupyterlab-workspaces")
    proc = subprocess.Popen(command(args.port, args.allow_root, workspaces), env=env,
                            start_new_session=True)
    try:
        url = wait_ready(proc, token)
        print(f"\n==> JupyterLab is ready: open {url}\n    (Ctrl-C stops it and the lab)\n",
              flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    sys.exit(main())
