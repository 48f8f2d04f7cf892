"""The running lab's state files in `.lab/`, read and written in one place.

    endpoints.json   service name -> URL or unix:// socket
    iia.env          the IIA_* settings that point `iia` at this lab (IDs and URLs only)
    lab.json         who runs it: {"pid", "mode", "runtime_dir", "started_at", "fixtures"}, and
                     for the process lab ("mode": "processes") "control" and "children"
                     (service -> pid)
    control.sock     the supervisor's control API (unix socket, 0600): `control()` talks to it
    logs/<svc>.log   each service's output (rotated to <svc>.log.1)
    audit/           the durable audit trail (iia.audit_trail): events.jsonl written by the
                     MCP server's process, decisions.jsonl by the IdP's; kept by `down`,
                     removed by `iia-lab clean`
    lab.lock         held by the process that runs the lab

Each file is replaced atomically, so a reader never sees half of one.
"""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from iia.identity.settings import read_env_file

__all__ = ["AUDIT", "CONTROL", "ENDPOINTS", "ENV", "LOCK", "LOGS", "SERVICE_ENDPOINTS", "STATE",
           "STATE_FILES", "ControlError", "control", "process_alive", "read_json", "read_state",
           "running", "try_lock", "write_json", "write_state"]

ENDPOINTS, ENV, STATE = "endpoints.json", "iia.env", "lab.json"
CONTROL, LOCK, LOGS, AUDIT = "control.sock", "lab.lock", "logs", "audit"
STATE_FILES = (ENDPOINTS, ENV, STATE, CONTROL)

# the process lab's services and the endpoints each one serves (the first is its URL)
SERVICE_ENDPOINTS: dict[str, tuple[str, ...]] = {
    "spire": ("spiffe_oidc", "spiffe_socket"),
    "vault": ("vault",),
    "verify": ("verify",),
    "model": ("model",),
    "caep_receiver": ("caep_receiver",),
    "iia": ("mcp", "chat", "antenna", "console"),
}


def try_lock(directory: Path) -> IO[str] | None:
    """The lab lock (`lab.lock`: "a lab runs here"), held open for as long as the handle is;
    None when another process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = (directory / LOCK).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def write_state(directory: Path, endpoints: Mapping[str, str], env: Mapping[str, str],
                state: Mapping[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in ((ENDPOINTS, json.dumps(dict(endpoints), indent=2) + "\n"),
                       (ENV, "".join(f"{k}={v}\n" for k, v in env.items())),
                       (STATE, json.dumps(dict(state), indent=2) + "\n")):
        tmp = directory / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(directory / name)


def write_json(directory: Path, name: str, data: Mapping[str, Any]) -> None:
    """One JSON state file, replaced atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps(dict(data), indent=2) + "\n")
    tmp.replace(directory / name)


def read_json(directory: Path, name: str) -> dict[str, Any] | None:
    """One of the JSON state files, or None when it is missing or unreadable."""
    try:
        value = json.loads((directory / name).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_state(directory: Path) -> tuple[dict[str, str], dict[str, str], dict[str, Any]] | None:
    """(endpoints, env, state) of the lab recorded in `directory`, or None when there is none."""
    endpoints, state = read_json(directory, ENDPOINTS), read_json(directory, STATE)
    if not endpoints or state is None:
        return None
    try:
        env = read_env_file(directory / ENV)
    except OSError:
        return None
    return endpoints, env, state


def process_alive(pid: int) -> bool:
    """Whether the process that wrote a state file still runs (a reaped or zombie child of
    ours counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone once reaped
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def running(pid: int) -> bool:
    """Alive and not a zombie, read from /proc without reaping anything (a detached lab is
    re-parented to PID 1; where PID 1 does not reap orphans, as in some sandboxes, an exited
    process lingers as a zombie: dead, no sockets, no memory, only a process-table entry)."""
    return _proc_state(pid) not in ("", "Z", "X")


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


# -- the supervisor's control socket ----------------------------------------------------------

class ControlError(Exception):
    """The control socket is not there or did not answer."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def control(directory: Path, method: str, path: str,
            timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one request to the supervisor's control socket in `directory`."""
    connection = _UnixConnection(str(directory / CONTROL), timeout)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = json.loads(response.read() or b"{}")
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
        raise ControlError(f"the lab's control socket {directory / CONTROL} did not answer "
                           f"({exc.__class__.__name__}: {exc})") from exc
    finally:
        connection.close()
    return response.status, body
