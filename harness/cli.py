"""`iia-lab`: run the simulated world.

    iia-lab up [--detach]   start every service on 127.0.0.1, one process per zone, supervised
                            (foreground, or in the background: returns once all are healthy)
    iia-lab status [--json] services (pid, state, uptime, restarts, URL) and endpoint health
    iia-lab logs SERVICE [-f]   a service's output (logs/<service>.log), -f follows it
    iia-lab restart|stop|start SERVICE   e.g. take Vault or the IdP down live, then back
    iia-lab down            stop the lab and remove its processes, sockets and temp dirs
    iia-lab token USER      log USER in (code + PKCE) and print only the access token
    iia-lab approvals [--json]   pending push approvals (the user's "phone")
    iia-lab approve ID | deny ID answer one
    iia-lab enroll USER     a one-time link that enrolls a passkey for USER in your browser
                            (Touch ID, Windows Hello, a phone over hybrid), to sign in as USER
    iia-lab delegation revoke USER | grant USER   the tenant admin withdraws or restores USER's
                            delegation to the agent (the next token exchange follows it)
    iia-lab audit [--user E] [--session S] [--call C] [--since T] [--jsonl]   the durable
                            audit trail, one record per tool call (event, IdP decision, OBO
                            jti, SET jtis); it outlives `down`
    iia-lab clean           remove what `down` keeps: the audit trail, the logs, the passkeys

Services: spire, vault, verify, model, caep_receiver, iia (harness/supervisor.py). `up` writes
`.lab/endpoints.json` (endpoint -> URL or unix:// socket), `.lab/iia.env` (the IIA_* settings that
point `iia` at this lab) and `.lab/logs/`; the running supervisor answers `status`, `restart`,
`stop` and `start` on `.lab/control.sock`. Only one lab runs per lab directory: the supervisor
holds an exclusive lock on `.lab/lab.lock` for as long as it runs.
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import IO, Any

from harness.errors import HarnessError, LabAlreadyRunningError
from harness.health import ServiceHealth, probe_all
from harness.lab_state import (
    AUDIT,
    CONTROL,
    ENDPOINTS,
    LOGS,
    SERVICE_ENDPOINTS,
    STATE,
    STATE_FILES,
    ControlError,
    control,
    process_alive,
    read_json,
    try_lock,
    write_state,
)
from harness.paths import lab_dir

__all__ = ["main"]


# -- the lock that says "a lab runs here" ----------------------------------------------------

def _running_state(directory: Path) -> dict[str, object] | None:
    lock = try_lock(directory)
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


class _StopRequested(Exception):
    """SIGTERM, SIGINT or SIGHUP while the lab was starting."""


def cmd_up(args: argparse.Namespace) -> int:
    directory = lab_dir()
    if args.docker:
        return _up_docker(directory)
    if args.detach:
        return _up_detached(directory, args.timeout)
    running = _running_state(directory)
    if running is not None:
        return _already_running(directory, running)
    # Imported late: `status`, `logs` and `down` stay light.
    from harness.lab_settings import LabSettings
    from harness.supervisor import Supervisor

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("iia-lab: %(message)s"))
    supervisor_log = logging.getLogger("harness.supervisor")
    supervisor_log.addHandler(handler)
    supervisor_log.setLevel(logging.INFO)
    supervisor_log.propagate = False
    started = False
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True
        if not started:
            raise _StopRequested

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, request_stop)
    supervisor: Supervisor | None = None
    try:
        began = time.monotonic()
        supervisor = Supervisor(LabSettings.from_env(), directory=directory)
        supervisor.start(timeout=args.timeout)
        started = True
        print(f"iia-lab: {len(supervisor.status())} services, one process each, healthy in "
              f"{time.monotonic() - began:.2f} s", flush=True)
        _print_services(supervisor.endpoints, [s.to_dict() for s in supervisor.status()],
                        probe_all(supervisor.endpoints))
        print(f"iia-lab: endpoints in {directory / 'endpoints.json'}; settings for iia in "
              f"{directory / 'iia.env'}; logs in {directory / LOGS}. Ctrl-C or `iia-lab "
              "down` stops the lab.", flush=True)
        while not stop_requested:
            signal.pause() if hasattr(signal, "pause") else time.sleep(0.5)
        print("iia-lab: stopping", flush=True)
        return 0
    except _StopRequested:  # asked to stop before it was up: done, cleanly
        print("iia-lab: stopping (it was still starting)", flush=True)
        return 0
    except LabAlreadyRunningError:
        return _already_running(directory, _running_state(directory) or {})
    except HarnessError as exc:
        print(f"iia-lab: the lab did not start: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        started = True  # a signal from here on only asks for what is happening anyway
        if supervisor is not None:
            supervisor.stop()


def _up_detached(directory: Path, timeout: float | None) -> int:
    """Start `iia-lab up` in the background and follow its start through the control socket:
    a line per service that comes up or goes down; done when all are healthy. No budget by
    default: it fails when a service has failed (crash loop) or the lab exited, with the log
    tail (or after --timeout seconds, if given)."""
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
    began = time.monotonic()
    seen: dict[str, str] = {}
    while True:
        if child.poll() is not None:
            print(f"iia-lab: the lab exited during start-up (code {child.returncode}):\n"
                  f"{_failure(log_path)}", file=sys.stderr)
            return 1
        body = _control_status(directory) if _state_pid(directory) == child.pid else None
        if body is not None:
            services = body["services"]
            _progress(services, seen, began)
            failed = [s for s in services if s["state"] == "failed"]
            if failed:
                print(f"iia-lab: {failed[0]['name']} failed: {failed[0]['detail']}\n"
                      "iia-lab: stopping the lab.", file=sys.stderr)
                _stop_pid(child.pid, directory)
                _wait_cleaned(directory)
                return 1
            if all(s["state"] == "healthy" for s in services) and \
                    _read_endpoints(directory) is not None:
                print(f"iia-lab: {len(services)} services healthy in "
                      f"{time.monotonic() - began:.2f} s")
                _print_services(body["endpoints"], services, probe_all(body["endpoints"]))
                print(f"iia-lab: running in the background (pid {child.pid}); logs in "
                      f"{directory / LOGS}; `iia-lab down` stops it.")
                return 0
        if timeout is not None and time.monotonic() - began > timeout:
            waiting = ", ".join(f"{n} {st}" for n, st in seen.items() if st != "healthy")
            print(f"iia-lab: not healthy within {timeout:.0f} s ({waiting or 'starting'}); "
                  f"stopping it.\n{_tail(log_path)}", file=sys.stderr)
            _stop_pid(child.pid, directory)
            return 1
        time.sleep(0.2)


def _control_status(directory: Path) -> dict[str, Any] | None:
    if not (directory / CONTROL).exists():
        return None
    try:
        code, body = control(directory, "GET", "/status", timeout=30)
    except ControlError:
        return None
    return body if code == 200 else None


def _progress(services: list[dict[str, Any]], seen: dict[str, str], began: float) -> None:
    """One line per change of a service's state (healthy, restarting, failed...)."""
    healthy = sum(state == "healthy" for state in seen.values())
    for s in services:
        if seen.get(s["name"]) == s["state"]:
            continue
        seen[s["name"]] = s["state"]
        if s["state"] == "healthy":
            healthy += 1
            print(f"iia-lab: {s['name']} healthy (pid {s['pid']}, "
                  f"{time.monotonic() - began:.1f} s; {healthy}/{len(services)})", flush=True)
        elif s["state"] in ("restarting", "stopped"):
            print(f"iia-lab: {s['name']} {s['state']}: {s['detail']}", flush=True)


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


def _failure(log_path: Path) -> str:
    """What the lab said when it gave up (its error and the failed service's log tail), else
    the end of its log."""
    try:
        text = log_path.read_text()
    except OSError:
        return ""
    marker = text.rfind("iia-lab: the lab did not start")
    return text[marker:].rstrip() if marker >= 0 else _tail(log_path)


def _read_endpoints(directory: Path) -> dict[str, str] | None:
    return read_json(directory, ENDPOINTS)


def _state_pid(directory: Path) -> int | None:
    try:
        return int((read_json(directory, STATE) or {})["pid"])
    except (KeyError, TypeError, ValueError):
        return None


# -- status -----------------------------------------------------------------------------------

def _print_table(rows: Sequence[ServiceHealth]) -> None:
    width_s = max([len("ENDPOINT")] + [len(r.service) for r in rows])
    width_e = max([len("URL")] + [len(r.endpoint) for r in rows])
    print(f"{'ENDPOINT':<{width_s}}  {'URL':<{width_e}}  HEALTH")
    for r in rows:
        mark = "healthy" if r.healthy else "DOWN"
        print(f"{r.service:<{width_s}}  {r.endpoint:<{width_e}}  {mark}: {r.detail}")


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _print_services(endpoints: dict[str, str], services: list[dict[str, Any]],
                    health: Sequence[ServiceHealth]) -> None:
    """The process table (one row per service), then every endpoint and its live health."""
    rows = [(s["name"], str(s["pid"] or "-"), s["state"], _uptime(s["uptime"]),
             str(s["restarts"]), s["url"]) for s in services]
    head = ("SERVICE", "PID", "STATE", "UPTIME", "RESTARTS", "URL")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    for row in (head, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for s in services:
        if s["state"] != "healthy" and s["detail"]:
            print(f"  {s['name']}: {s['detail']}")
    print()
    _print_table(health)


def cmd_status(args: argparse.Namespace) -> int:
    directory = lab_dir()
    state = _running_state(directory)
    if state is not None and state.get("mode") != "docker":
        return _status_processes(directory, state, args.json)
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
                          "mode": "docker", "endpoints": endpoints,
                          "health": [h.__dict__ for h in health]}, indent=2))
    else:
        _print_table(health)
    return 0 if all(h.healthy for h in health) else 1


def _status_processes(directory: Path, state: dict[str, Any], as_json: bool) -> int:
    try:
        _code, body = control(directory, "GET", "/status", timeout=30)
    except ControlError as exc:
        print(f"iia-lab: the lab (pid {state.get('pid')}) holds the lock but {exc}",
              file=sys.stderr)
        return 1
    endpoints, services = body["endpoints"], body["services"]
    health = probe_all(endpoints)
    by_key = {h.service: h for h in health}
    ok = all(s["state"] == "healthy" for s in services) and all(h.healthy for h in health)
    if as_json:
        for s in services:
            s["health"] = {key: {"healthy": by_key[key].healthy, "detail": by_key[key].detail}
                           for key in SERVICE_ENDPOINTS[s["name"]] if key in by_key}
        print(json.dumps({"running": True, "pid": body["pid"], "mode": "processes",
                          "started_at": body["started_at"], "healthy": ok,
                          "endpoints": endpoints, "services": services}, indent=2))
    else:
        _print_services(endpoints, services, health)
    return 0 if ok else 1


# -- logs, restart, stop, start ---------------------------------------------------------------

def cmd_logs(args: argparse.Namespace) -> int:
    path = lab_dir() / LOGS / f"{args.service}.log"
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        print(f"iia-lab: no log of {args.service} in {path.parent} (has the lab run here?)",
              file=sys.stderr)
        return 1
    with handle:
        sys.stdout.write(_last_lines(handle, args.lines))
        sys.stdout.flush()
        if not args.follow:
            return 0
        with contextlib.suppress(KeyboardInterrupt):
            _follow(path, handle)
    return 0


def _last_lines(handle: IO[bytes], count: int) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(max(0, size - 256 * 1024))
    text = handle.read().decode(errors="replace")
    lines = text.splitlines(keepends=True)[-count:] if count else []
    return "".join(lines)


def _follow(path: Path, handle: IO[bytes]) -> None:
    """Print what is appended, like `tail -F`: a rotated log (renamed to .1, a new file in its
    place) is followed into the new file."""
    current = handle
    try:
        while True:
            chunk = current.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
                continue
            try:
                replaced = path.stat().st_ino != os.fstat(current.fileno()).st_ino
            except FileNotFoundError:
                replaced = False
            if replaced:
                rest = current.read()
                if rest:
                    sys.stdout.write(rest.decode(errors="replace"))
                if current is not handle:
                    current.close()
                current = path.open("rb")
                continue
            time.sleep(0.2)
    finally:
        if current is not handle:
            current.close()


def cmd_service(args: argparse.Namespace) -> int:
    """`restart`, `stop` or `start` one service of the running process lab."""
    directory = lab_dir()
    state = _running_state(directory)
    if state is None or state.get("mode") == "docker":
        print("iia-lab: no process lab is running (start one with `iia-lab up --detach`; a "
              "docker lab's services are containers: use docker).", file=sys.stderr)
        return 1
    name, action = args.service, args.command
    try:
        code, body = control(directory, "POST", f"/services/{name}/{action}")
    except ControlError as exc:
        print(f"iia-lab: {exc}", file=sys.stderr)
        return 1
    if code != 200:
        print(f"iia-lab: {body.get('error_description', body)}", file=sys.stderr)
        return 1
    if action == "stop":
        print(f"iia-lab: {name} stopped; it stays down until `iia-lab start {name}`.")
        return 0
    print(f"iia-lab: {name} {'restarting' if action == 'restart' else 'starting'}", flush=True)
    while True:
        status = _control_status(directory)
        if status is None:
            print("iia-lab: the lab stopped answering on its control socket", file=sys.stderr)
            return 1
        service = next(s for s in status["services"] if s["name"] == name)
        if service["state"] == "healthy":
            print(f"iia-lab: {name} healthy (pid {service['pid']})")
            return 0
        if service["state"] in ("failed", "stopped"):
            print(f"iia-lab: {name} is {service['state']}: {service['detail']}",
                  file=sys.stderr)
            return 1
        time.sleep(0.2)


# -- down -------------------------------------------------------------------------------------

def _wait_cleaned(directory: Path, timeout: float = 30.0) -> None:
    """Return once the stopped lab's state files are gone (it removes them as it exits), so
    that a failed `up` leaves nothing behind when it returns, not a moment later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
            (directory / name).exists() for name in STATE_FILES):
        time.sleep(0.05)


def _stop_pid(pid: int, directory: Path, grace: float = 60.0) -> None:
    """SIGTERM the lab, wait for it to exit (it stops its children and removes what it made),
    SIGKILL it if it hangs (its children die with it: parent-death signal)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _lab_child(pid: int) -> bool:
    """Whether `pid` is still one of the lab's children (and not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return process_alive(pid) and any(m in cmdline for m in (
        "harness.serve", "iia.serve", "bao", "server -dev"))


def cmd_down(args: argparse.Namespace) -> int:
    directory = lab_dir()
    state = _running_state(directory)
    if state is None:
        left = _remove_leftovers(read_json(directory, STATE) or {})
        print("iia-lab: no lab is running." + (f" Removed what a lab that was killed left: "
                                               f"{', '.join(left)}." if left else ""))
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
    if not isinstance(pid, int):
        print("iia-lab: a lab holds the lock but its pid is unknown; stop it by hand.",
              file=sys.stderr)
        return 1
    _stop_pid(pid, directory)
    _remove_leftovers(state)
    _clear_state(directory)
    print(f"iia-lab: stopped (pid {pid}).")
    return 0


def _remove_leftovers(state: dict[str, Any]) -> list[str]:
    """What a supervisor that is gone (stopped, or killed) may have left: a child that outlived
    it (it should not: parent-death signal) and its runtime directory."""
    left = []
    children = state.get("children")
    for name, child in (children.items() if isinstance(children, dict) else ()):
        if isinstance(child, int) and _lab_child(child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            left.append(f"{name} (pid {child})")
    runtime_dir = state.get("runtime_dir")
    if isinstance(runtime_dir, str) and Path(runtime_dir).name.startswith("iia-lab-") \
            and Path(runtime_dir).is_dir():
        shutil.rmtree(runtime_dir, ignore_errors=True)
        left.append(runtime_dir)
    return left


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


def cmd_enroll(args: argparse.Namespace) -> int:
    endpoints = _running_endpoints()
    if endpoints is None:
        return 1
    from harness.lab_client import PhoneApi

    response = PhoneApi(endpoints["verify"]).enrollment_link(args.user)
    body = response.json()
    if response.status_code != 200:
        print(f"iia-lab: no enrollment link for {args.user}: "
              f"{body.get('error_description', response.text)}", file=sys.stderr)
        return 1
    print(f"Open this link in your browser within {body['expires_in']} s to enroll a passkey "
          f"for {body['user']} (once; then sign in to the chat page and the phone with it):")
    print(body["url"])
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


# -- the audit trail ---------------------------------------------------------------------------

def cmd_audit(args: argparse.Namespace) -> int:
    """One record per call from `<lab dir>/audit/` (it needs no running lab)."""
    from iia.audit_report import AuditQueryError, CallFilter, calls, parse_since, render

    try:
        since = parse_since(args.since) if args.since else None
        records = calls(lab_dir() / AUDIT, CallFilter(user=args.user, session=args.session,
                                                      call=args.call, since=since))
    except AuditQueryError as exc:
        print(f"iia-lab: {exc}", file=sys.stderr)
        return 1
    if args.jsonl:
        for record in records:
            print(json.dumps(record, ensure_ascii=False))
        return 0
    if not records:
        print("No calls match.")
        return 0
    print(render(records))
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    """Remove what outlives `down` in the lab directory; refused while a lab runs."""
    directory = lab_dir()
    if _running_state(directory) is not None:
        print(f"iia-lab: a lab is running in {directory}; `iia-lab down` first, then clean.",
              file=sys.stderr)
        return 1
    removed = []
    for name in (AUDIT, LOGS):
        if (directory / name).is_dir():
            shutil.rmtree(directory / name)
            removed.append(name + "/")
    for name in ("lab.log", "authenticator.json", "authenticator.json.lock"):
        if (directory / name).exists():
            (directory / name).unlink()
            removed.append(name)
    print(f"iia-lab: removed {', '.join(removed)} from {directory}." if removed else
          f"iia-lab: nothing to remove in {directory}.")
    return 0


# -- entry point ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iia-lab", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the lab")
    up.add_argument("--detach", action="store_true", help="return once every service is healthy")
    up.add_argument("--docker", action="store_true",
                    help="real SPIRE and Vault from docker-compose.yml (needs a Docker engine)")
    up.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                    help="give up when not every service is healthy by then (default: no "
                         "limit; a service that crash-loops or a lab that exits fails at once)")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="show services and their health")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    services = list(SERVICE_ENDPOINTS)
    logs = sub.add_parser("logs", help="show a service's log")
    logs.add_argument("service", choices=services)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing what it logs")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines to show (default 50)")
    logs.set_defaults(func=cmd_logs)
    for name, text in (("restart", "restart a service (also a failed one)"),
                       ("stop", "stop a service; it stays down until `start`"),
                       ("start", "start a stopped or failed service")):
        action = sub.add_parser(name, help=text)
        action.add_argument("service", choices=services)
        action.set_defaults(func=cmd_service)
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
    enroll = sub.add_parser("enroll", help="a link that enrolls a passkey for USER in your "
                            "browser (to sign in as USER)")
    enroll.add_argument("user", help="the user's email, e.g. alice@example.com")
    enroll.set_defaults(func=cmd_enroll)
    delegation = sub.add_parser("delegation",
                                help="withdraw or restore a user's delegation to the agent")
    delegation.add_argument("action", choices=("revoke", "grant"))
    delegation.add_argument("user", help="the user's email, e.g. alice@example.com")
    delegation.set_defaults(func=cmd_delegation)
    audit = sub.add_parser("audit", help="the durable audit trail, one record per tool call")
    audit.add_argument("--user", metavar="E", help="only this person's calls (e-mail)")
    audit.add_argument("--session", metavar="S", help="only this session's calls")
    audit.add_argument("--call", metavar="C", help="only this call (its callId)")
    audit.add_argument("--since", metavar="T",
                       help="only calls since T: 10m, 1h, 2d, or an ISO time (UTC unless it "
                            "names an offset)")
    audit.add_argument("--jsonl", action="store_true", help="one JSON record per line")
    audit.set_defaults(func=cmd_audit)
    clean = sub.add_parser("clean", help="remove the audit trail, logs and passkeys `down` "
                           "keeps (no lab may run)")
    clean.set_defaults(func=cmd_clean)
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
