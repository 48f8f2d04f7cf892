"""`iia-lab`: run the simulated world.

    iia-lab up [--detach]   start every service on 127.0.0.1 (foreground, or return once healthy)
    iia-lab status [--json] a table of services, endpoints and health
    iia-lab down            stop the lab and remove its processes, sockets and temp dirs
    iia-lab token USER      log USER in (code + PKCE) and print only the access token
    iia-lab approvals [--json]   pending push approvals (the user's "phone")
    iia-lab approve ID | deny ID answer one
    iia-lab delegation revoke USER | grant USER   the tenant admin withdraws or restores USER's
                            delegation to the agent (the next token exchange follows it)

`up` writes `.lab/endpoints.json` (service -> URL or unix:// socket) and `.lab/iia.env` (the IIA_*
settings that point `iia` at this lab). Only one lab runs per lab directory: `up` holds an
exclusive lock on `.lab/lab.lock` for as long as it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from harness.errors import HarnessError
from harness.health import ServiceHealth, probe_all
from harness.lab_state import (
    ENDPOINTS,
    STATE,
    STATE_FILES,
    process_alive,
    read_json,
    write_state,
)
from harness.paths import lab_dir

__all__ = ["main"]



# -- the lock that says "a lab runs here" ----------------------------------------------------

def _try_lock(directory: Path) -> IO[str] | None:
    """The lab lock, held open; None when another process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = (directory / "lab.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _running_state(directory: Path) -> dict[str, object] | None:
    lock = _try_lock(directory)
    state = read_json(directory, STATE)
    if lock is not None:
        lock.close()
        # a docker lab holds no lock: its containers outlive this command
        return state if state is not None and state.get("mode") == "docker" else None
    return state if state is not None else {"pid": None}


def _clear_state(directory: Path) -> None:
    for name in STATE_FILES:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()


# -- up ---------------------------------------------------------------------------------------

def _already_running(directory: Path, state: dict[str, object]) -> int:
    pid = state.get("pid") or "unknown"
    print(f"iia-lab: a lab is already running in {directory} (pid {pid}). "
          "Use `iia-lab status` to see it or `iia-lab down` to stop it.", file=sys.stderr)
    return 1


def cmd_up(args: argparse.Namespace) -> int:
    directory = lab_dir()
    if args.docker:
        return _up_docker(directory)
    if args.detach:
        return _up_detached(directory, args.timeout)
    lock = _try_lock(directory)
    if lock is None:
        return _already_running(directory, _running_state(directory) or {})
    # Imported late: the lab pulls in the servers; `status`/`down` stay light.
    from harness.lab import Lab

    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, request_stop)
    lab = Lab()
    try:
        began = time.monotonic()
        lab.start()
        lab.write_state(directory, os.getpid())
        print(f"iia-lab: {len(lab.endpoints)} services healthy in "
              f"{time.monotonic() - began:.2f} s", flush=True)
        _print_table(probe_all(lab.endpoints))
        print(f"iia-lab: endpoints in {directory / 'endpoints.json'}; settings for iia in "
              f"{directory / 'iia.env'}. Ctrl-C or `iia-lab down` stops the lab.", flush=True)
        while not stop_requested:
            signal.pause() if hasattr(signal, "pause") else time.sleep(0.5)
        print("iia-lab: stopping", flush=True)
        return 0
    except HarnessError as exc:
        print(f"iia-lab: the lab did not start: {exc}", file=sys.stderr)
        return 1
    finally:
        lab.stop()
        _clear_state(directory)
        lock.close()


def _up_detached(directory: Path, timeout: float) -> int:
    state = _running_state(directory)
    if state is not None:
        return _already_running(directory, state)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "lab.log"
    with log_path.open("w") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "up"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=os.getcwd())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            print(f"iia-lab: the lab exited during start-up (code {child.returncode}):\n"
                  f"{_tail(log_path)}", file=sys.stderr)
            return 1
        endpoints = _read_endpoints(directory)
        if endpoints and _state_pid(directory) == child.pid:
            health = probe_all(endpoints)
            if all(h.healthy for h in health):
                _print_table(health)
                print(f"iia-lab: running in the background (pid {child.pid}); "
                      "`iia-lab down` stops it.")
                return 0
        time.sleep(0.1)
    print(f"iia-lab: not healthy within {timeout:.0f} s; stopping it.\n{_tail(log_path)}",
          file=sys.stderr)
    _stop_pid(child.pid, directory)
    return 1


def _up_docker(directory: Path) -> int:
    from harness.docker_lab import DockerLab, DockerUnavailableError, runtime_env
    from harness.paths import project_root

    running = _running_state(directory)
    if running is not None:
        return _already_running(directory, running)
    env = {**os.environ, **runtime_env(directory)}  # Vault's root token: memory + containers
    try:
        lab = DockerLab(project_root(), directory, env)
        endpoints = lab.up()
    except DockerUnavailableError as exc:
        print(f"iia-lab: {exc}", file=sys.stderr)
        return 1
    except HarnessError as exc:
        print(f"iia-lab: the docker lab did not start: {exc}", file=sys.stderr)
        return 1
    write_state(directory, endpoints, lab.iia_env(), {"mode": "docker", "pid": None})
    _print_table(probe_all(endpoints))
    return 0


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return ""


def _read_endpoints(directory: Path) -> dict[str, str] | None:
    return read_json(directory, ENDPOINTS)


def _state_pid(directory: Path) -> int | None:
    try:
        return int((read_json(directory, STATE) or {})["pid"])
    except (KeyError, TypeError, ValueError):
        return None


# -- status -----------------------------------------------------------------------------------

def _print_table(rows: Sequence[ServiceHealth]) -> None:
    width_s = max([len("SERVICE")] + [len(r.service) for r in rows])
    width_e = max([len("ENDPOINT")] + [len(r.endpoint) for r in rows])
    print(f"{'SERVICE':<{width_s}}  {'ENDPOINT':<{width_e}}  HEALTH")
    for r in rows:
        mark = "healthy" if r.healthy else "DOWN"
        print(f"{r.service:<{width_s}}  {r.endpoint:<{width_e}}  {mark}: {r.detail}")


def cmd_status(args: argparse.Namespace) -> int:
    directory = lab_dir()
    state = _running_state(directory)
    endpoints = _read_endpoints(directory) if state is not None else None
    if not endpoints:
        if args.json:
            print(json.dumps({"running": False, "services": []}))
        else:
            print("iia-lab: no lab is running (start one with `iia-lab up --detach`).")
        return 1
    health = probe_all(endpoints)
    if args.json:
        print(json.dumps({"running": True, "pid": state.get("pid") if state else None,
                          "services": [h.__dict__ for h in health]}, indent=2))
    else:
        _print_table(health)
    return 0 if all(h.healthy for h in health) else 1


# -- down -------------------------------------------------------------------------------------

def _stop_pid(pid: int, directory: Path, grace: float = 10.0) -> None:
    """SIGTERM the lab, wait for it to exit (it removes what it made), SIGKILL it if it hangs."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.05)
    # It did not stop in time: kill it; OpenBao dies with it (parent-death signal).
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def cmd_down(args: argparse.Namespace) -> int:
    directory = lab_dir()
    state = _running_state(directory)
    if state is None:
        print("iia-lab: no lab is running.")
        _clear_state(directory)
        return 0
    if state.get("mode") == "docker":
        from harness.docker_lab import DockerLab, DockerUnavailableError
        from harness.paths import project_root

        try:
            removed = DockerLab(project_root(), directory, None).down()
        except DockerUnavailableError as exc:
            print(f"iia-lab: {exc}", file=sys.stderr)
            return 1
        _clear_state(directory)
        print(f"iia-lab: stopped the docker lab ({removed} containers removed).")
        return 0
    pid = state.get("pid")
    runtime_dir = state.get("runtime_dir")
    if not isinstance(pid, int):
        print("iia-lab: a lab holds the lock but its pid is unknown; stop it by hand.",
              file=sys.stderr)
        return 1
    _stop_pid(pid, directory)
    if isinstance(runtime_dir, str) and Path(runtime_dir).name.startswith("iia-lab-"):
        shutil.rmtree(runtime_dir, ignore_errors=True)
    _clear_state(directory)
    print(f"iia-lab: stopped (pid {pid}).")
    return 0


# -- the running lab's users and phone --------------------------------------------------------

def _running_endpoints() -> dict[str, str] | None:
    directory = lab_dir()
    if _running_state(directory) is None:
        print("iia-lab: no lab is running (start one with `iia-lab up --detach`).",
              file=sys.stderr)
        return None
    endpoints = _read_endpoints(directory)
    if not endpoints or "verify" not in endpoints:
        print("iia-lab: the running lab has no Verify tenant.", file=sys.stderr)
        return None
    return endpoints


def cmd_token(args: argparse.Namespace) -> int:
    endpoints = _running_endpoints()
    if endpoints is None:
        return 1
    from harness.verify.login import LoginError, login
    from harness.verify.tenant import OIDC_BASE

    try:
        tokens = login(endpoints["verify"] + OIDC_BASE, args.user)
    except LoginError as exc:
        print(f"iia-lab: login of {args.user} failed: {exc}", file=sys.stderr)
        return 1
    print(tokens["access_token"])
    return 0


def cmd_approvals(args: argparse.Namespace) -> int:
    endpoints = _running_endpoints()
    if endpoints is None:
        return 1
    from harness.lab_client import PhoneApi

    items = PhoneApi(endpoints["verify"]).pending(args.user or None)
    if args.json:
        keys = ("id", "user", "tier", "binding_message", "authorization_details")
        print(json.dumps([{k: item[k] for k in keys} for item in items], indent=2))
        return 0
    if not items:
        print("No pending push approvals.")
        return 0
    for item in items:
        details = item["authorization_details"][0]
        print(f"{item['id']}  tier {item['tier']}  {item['user']}  {details['type']}  "
              f"\"{item['binding_message']}\"  (expires in {item['expires_in']} s)")
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    endpoints = _running_endpoints()
    if endpoints is None:
        return 1
    from harness.lab_client import PhoneApi

    response = PhoneApi(endpoints["verify"]).answer(args.id, args.command == "approve")
    body = response.json()
    if response.status_code != 200:
        print(f"iia-lab: {body.get('error_description', response.text)}", file=sys.stderr)
        return 1
    print(f"{args.id}: {body['status']}")
    return 0


def cmd_delegation(args: argparse.Namespace) -> int:
    endpoints = _running_endpoints()
    if endpoints is None:
        return 1
    from harness.lab_client import DelegationApi

    api = DelegationApi(endpoints["verify"])
    response = api.grant(args.user) if args.action == "grant" else api.revoke(args.user)
    body = response.json()
    if response.status_code != 200:
        print(f"iia-lab: {body.get('error_description', response.text)}", file=sys.stderr)
        return 1
    state = "granted to" if body["delegated"] else "withdrawn from"
    print(f"{body['user']}: delegation {state} {body['agent']}")
    return 0


# -- entry point ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iia-lab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the lab")
    up.add_argument("--detach", action="store_true", help="return once every service is healthy")
    up.add_argument("--docker", action="store_true",
                    help="real SPIRE and Vault from docker-compose.yml (needs a Docker engine)")
    up.add_argument("--timeout", type=float, default=30.0,
                    help="seconds --detach waits for health (default 30)")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="show services and their health")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    down = sub.add_parser("down", help="stop the lab")
    down.set_defaults(func=cmd_down)
    token = sub.add_parser("token", help="print a fresh access token for USER")
    token.add_argument("user", help="the user's email, e.g. alice@example.com")
    token.set_defaults(func=cmd_token)
    approvals = sub.add_parser("approvals", help="list pending push approvals")
    approvals.add_argument("--json", action="store_true")
    approvals.add_argument("--user", help="only this user's pushes")
    approvals.set_defaults(func=cmd_approvals)
    for name in ("approve", "deny"):
        answer = sub.add_parser(name, help=f"{name} a pending push")
        answer.add_argument("id", help="the push id (from `iia-lab approvals`)")
        answer.set_defaults(func=cmd_answer)
    delegation = sub.add_parser("delegation",
                                help="withdraw or restore a user's delegation to the agent")
    delegation.add_argument("action", choices=("revoke", "grant"))
    delegation.add_argument("user", help="the user's email, e.g. alice@example.com")
    delegation.set_defaults(func=cmd_delegation)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as exc:
        # `pip install iia-lab` is the product only; the simulated world is the [lab] extra
        if (exc.name or "").split(".")[0] in {"", "iia", "harness"}:
            raise
        print(f"iia-lab: the lab's packages are not installed ({exc}); install them with "
              "pip install 'iia-lab[lab]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
