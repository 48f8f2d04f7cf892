"""Helpers for tests that run the lab's zones as real processes: hand listening sockets to a
child the way a supervisor does (systemd socket activation), wait on conditions, stop
children."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0  # generous: the suite runs on a busy 2-core machine
# the supervisor's exec wrapper: LISTEN_PID is the pid that serves the sockets (the shell's,
# kept by exec)
WRAPPER = ["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"]


def clean_env(**settings: str) -> dict[str, str]:
    """The test process's environment without IIA_*/LISTEN_*/Vault settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("IIA_", "LISTEN_", "BAO_", "VAULT_", "SPIFFE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def _dup_to_3(fds: list[int]) -> Callable[[], None]:
    def setup() -> None:  # in the child, between fork and exec
        # first out of the way (a source may sit where another one goes), then into 3, 4, ...
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 200) for fd in fds]
        for target, fd in enumerate(moved, start=3):
            os.dup2(fd, target)  # inheritable: it crosses exec
        for fd in moved:
            os.close(fd)
    return setup


def spawn(argv: list[str], env: Mapping[str, str], log: Path,
          sockets: Mapping[str, socket.socket] | None = None,
          fds: Mapping[str, int] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` (after the interpreter) with `sockets` (or raw descriptors `fds`) handed
    over as fds 3.. named by LISTEN_FDNAMES; output to `log`."""
    named = {**{n: s.fileno() for n, s in (sockets or {}).items()}, **(fds or {})}
    full = [sys.executable, *argv]
    child_env = dict(env)
    if named:
        child_env["LISTEN_FDS"] = str(len(named))
        child_env["LISTEN_FDNAMES"] = ":".join(named)
        full = [*WRAPPER, *full]
    out: IO[bytes] = log.open("ab")
    try:
        return subprocess.Popen(full, env=child_env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, close_fds=False,
                                preexec_fn=_dup_to_3(list(named.values())))
    finally:
        out.close()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)
    return proc.returncode


def wait_for(condition: Callable[[], object], what: str, *,
             proc: subprocess.Popen[bytes] | None = None, log: Path | None = None,
             timeout: float = WAIT) -> object:
    """Poll `condition` until it returns something truthy; fail naming `what` (and the log's
    tail) when `proc` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() \
            else ""
        assert proc is None or proc.poll() is None, f"{what}: the process exited:\n{tail}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s\n{tail}"
        time.sleep(0.1)


def healthy(url: str, path: str = "/healthz") -> bool:
    return httpx.get(url + path, timeout=10).status_code == 200


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"
