"""`iia-lab up --detach | status | logs | restart | stop | start | down` as a person runs them:
real processes (one per zone, under the supervisor), real ports. No test asserts a duration;
every wait is for a condition, with a generous timeout."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.health import probe_all
from harness.lab_state import running

WAIT = 600.0  # seconds: a command that has not finished by then is hung, not slow


def run(lab_dir: Path, *args: str, timeout: float = WAIT,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IIA_LAB_DIR": str(lab_dir), **(env or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "lab"
    yield directory
    run(directory, "down")  # never leave a lab behind, even when an assertion failed


def test_up_status_down_leaves_nothing_behind(lab_dir: Path) -> None:
    up = run(lab_dir, "up", "--detach")
    assert up.returncode == 0, up.stderr
    # progress as each service came up, then the process table
    for service in ("spire", "vault", "verify", "model", "caep_receiver", "iia"):
        assert f"iia-lab: {service} healthy (pid " in up.stdout, up.stdout
    assert "6 services healthy" in up.stdout
    endpoints = json.loads((lab_dir / "endpoints.json").read_text())
    assert set(endpoints) >= {"spiffe_socket", "spiffe_oidc", "vault", "verify"}
    assert endpoints["spiffe_socket"].startswith("unix:///")
    for key, url in endpoints.items():
        if key != "spiffe_socket":
            assert url.startswith("http://127.0.0.1:"), (key, url)
    # `up --detach` returned once every service was healthy (how long it took: `make bench`)
    assert all(h.healthy for h in probe_all(endpoints))
    env = (lab_dir / "iia.env").read_text()
    assert "SPIFFE_ENDPOINT_SOCKET=unix:///" in env and "IIA_VAULT_ADDR=http://127.0.0.1:" in env

    status = run(lab_dir, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    for service in endpoints:
        assert service in status.stdout
    assert "DOWN" not in status.stdout

    state = json.loads((lab_dir / "lab.json").read_text())
    assert state["mode"] == "processes"
    children = state["children"]
    assert set(children) == {"spire", "vault", "verify", "model", "caep_receiver", "iia"}
    assert len(set(children.values())) == 6 and all(running(p) for p in children.values())
    runtime_dir = Path(state["runtime_dir"])
    socket_path = Path(endpoints["spiffe_socket"].removeprefix("unix://"))
    control = lab_dir / "control.sock"
    assert socket_path.exists() and runtime_dir.is_dir() and control.exists()
    assert processes_mentioning(str(runtime_dir)), "OpenBao should be running"

    again = run(lab_dir, "up", "--detach")
    assert again.returncode != 0 and "already running" in again.stderr
    assert json.loads((lab_dir / "lab.json").read_text())["pid"] == state["pid"]

    down = run(lab_dir, "down")
    assert down.returncode == 0, down.stderr
    assert not socket_path.exists() and not runtime_dir.exists() and not control.exists()
    assert not processes_mentioning(str(runtime_dir)), "OpenBao outlived the lab"
    assert not [name for name, pid in children.items() if running(pid)], "a child outlived it"
    assert not running(state["pid"])
    assert not (lab_dir / "endpoints.json").exists() and not (lab_dir / "iia.env").exists()
    assert not (lab_dir / "lab.json").exists()
    after = run(lab_dir, "status")
    assert after.returncode == 1 and "no lab is running" in after.stdout
    # the logs stay, for a post-mortem
    assert "started pid" in (lab_dir / "logs" / "verify.log").read_text()


def test_status_logs_stop_start_restart(lab_dir: Path) -> None:
    assert run(lab_dir, "up", "--detach").returncode == 0
    status = json.loads(run(lab_dir, "status", "--json").stdout)
    assert status["running"] and status["mode"] == "processes" and status["healthy"]
    services = {s["name"]: s for s in status["services"]}
    assert list(services) == ["spire", "vault", "verify", "model", "caep_receiver", "iia"]
    for s in services.values():
        assert s["state"] == "healthy" and isinstance(s["pid"], int) and s["restarts"] == 0
        assert s["uptime"] >= 0 and s["url"].startswith("http://127.0.0.1:")
        assert s["health"] and all(h["healthy"] for h in s["health"].values()), s
    assert set(services["iia"]["health"]) == {"mcp", "chat", "antenna", "console"}

    logs = run(lab_dir, "logs", "verify")
    assert logs.returncode == 0 and f"started pid {services['verify']['pid']}" in logs.stdout
    unknown = run(lab_dir, "logs", "nginx")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr

    # a trainer takes the IdP down: it stays down, status says so
    stop = run(lab_dir, "stop", "verify")
    assert stop.returncode == 0 and "stays down" in stop.stdout, stop.stderr
    assert not running(services["verify"]["pid"])
    down = run(lab_dir, "status", "--json")
    assert down.returncode == 1
    verify = next(s for s in json.loads(down.stdout)["services"] if s["name"] == "verify")
    assert verify["state"] == "stopped" and verify["pid"] is None
    assert not verify["health"]["verify"]["healthy"]
    token = run(lab_dir, "token", "alice@example.com")
    assert token.returncode != 0
    # ... and brings it back
    start = run(lab_dir, "start", "verify")
    assert start.returncode == 0 and "verify healthy (pid" in start.stdout, start.stderr
    assert run(lab_dir, "token", "alice@example.com").returncode == 0

    # `logs -f` follows a restart
    env = {**os.environ, "IIA_LAB_DIR": str(lab_dir)}
    follow = subprocess.Popen([sys.executable, "-m", "harness.cli", "logs", "model", "-f",
                               "-n", "1"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        restart = run(lab_dir, "restart", "model")
        assert restart.returncode == 0 and "model healthy (pid" in restart.stdout
        new_pid = int(restart.stdout.rsplit("(pid ", 1)[1].split(")")[0])
        assert new_pid != services["model"]["pid"]
        assert follow.stdout is not None
        seen = ""
        while f"started pid {new_pid}" not in seen:
            line = follow.stdout.readline()
            assert line, f"logs -f ended: {seen}"
            seen += line
    finally:
        follow.terminate()
        follow.wait(timeout=WAIT)
        if follow.stdout:
            follow.stdout.close()
    after = {s["name"]: s for s in json.loads(run(lab_dir, "status", "--json").stdout)[
        "services"]}
    assert after["model"]["restarts"] == 1 and after["model"]["pid"] == new_pid


def test_up_detach_fails_on_a_crash_loop_and_leaves_nothing(lab_dir: Path,
                                                           tmp_path: Path) -> None:
    from harness.paths import fixtures_dir

    fixtures = tmp_path / "fixtures"
    shutil.copytree(fixtures_dir(), fixtures)
    (fixtures / "scripts" / "claude.json").write_text("{ not json")  # the model cannot start
    tmp = tmp_path / "tmp"  # the lab's runtime directory is made here
    tmp.mkdir()
    up = run(lab_dir, "up", "--detach", env={"IIA_FIXTURES_DIR": str(fixtures),
                                             "TMPDIR": str(tmp)})
    assert up.returncode == 1
    assert "model" in up.stderr and "crashed 6 times" in up.stderr, up.stderr
    assert "claude.json" in up.stderr or "JSONDecodeError" in up.stderr  # its log tail
    assert not processes_mentioning(str(fixtures)), "a child outlived the failed start"
    assert not (lab_dir / "control.sock").exists() and not (lab_dir / "lab.json").exists()
    assert list(tmp.iterdir()) == []  # no runtime directory left
    log = (lab_dir / "logs" / "model.log").read_text()
    assert log.count("started pid") == 6


def test_down_when_nothing_runs_is_harmless(lab_dir: Path) -> None:
    result = run(lab_dir, "down")
    assert result.returncode == 0 and "no lab is running" in result.stdout


def test_foreground_up_stops_cleanly_on_sigterm(lab_dir: Path) -> None:
    env = {**os.environ, "IIA_LAB_DIR": str(lab_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "up"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while not (lab_dir / "endpoints.json").exists():  # written once all are healthy
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the lab never became healthy"
            time.sleep(0.05)
        state = json.loads((lab_dir / "lab.json").read_text())
        runtime_dir, children = state["runtime_dir"], state["children"]
        assert all(running(pid) for pid in children.values())
        proc.terminate()
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()
    assert not Path(runtime_dir).exists()
    assert not processes_mentioning(runtime_dir)
    assert not [name for name, pid in children.items() if running(pid)]
    assert not (lab_dir / "control.sock").exists()


def test_children_die_with_a_killed_supervisor(lab_dir: Path) -> None:
    """kill -9 of the supervisor itself: no child outlives it (parent-death signal); `down`
    then clears what it left (runtime directory, control socket, state files)."""
    env = {**os.environ, "IIA_LAB_DIR": str(lab_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "up"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT
        while not (lab_dir / "endpoints.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        state = json.loads((lab_dir / "lab.json").read_text())
        children = state["children"]
        assert all(running(pid) for pid in children.values())
        proc.kill()
        proc.wait(timeout=WAIT)
        while [pid for pid in children.values() if running(pid)]:
            assert time.monotonic() < deadline, "children outlived their supervisor"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    down = run(lab_dir, "down")
    assert down.returncode == 0 and "no lab is running" in down.stdout
    assert state["runtime_dir"] in down.stdout  # what it removed
    assert not Path(state["runtime_dir"]).exists() and not (lab_dir / "control.sock").exists()
    assert not (lab_dir / "lab.json").exists()


def test_lab_settings_come_from_the_environment() -> None:
    from harness.errors import HarnessError
    from harness.lab_settings import LabSettings

    s = LabSettings.from_env({"IIA_LAB_SVID_TTL": "120", "IIA_LAB_SPIFFE_KEY_ROTATION": "600",
                              "IIA_LAB_SECRET_GRACE": "0"})
    assert (s.svid_ttl, s.spiffe_key_rotation, s.secret_grace_seconds) == (120, 600, 0)
    with pytest.raises(HarnessError, match="IIA_LAB_SVID_TTL"):
        LabSettings.from_env({"IIA_LAB_SVID_TTL": "five minutes"})
    with pytest.raises(HarnessError, match="positive"):
        LabSettings.from_env({"IIA_LAB_SPIFFE_KEY_ROTATION": "0"})


def test_token_and_phone_commands_against_a_running_lab(lab_dir: Path) -> None:
    import jwt

    from iia.catalog import tool
    from iia.identity import IdentitySettings, WorkloadIdentity, read_env_file
    from iia.rar import authorization_details
    from tests.helpers import as_mcp_server

    assert run(lab_dir, "up", "--detach").returncode == 0
    token = run(lab_dir, "token", "alice@example.com")
    assert token.returncode == 0, token.stderr
    lines = token.stdout.strip().splitlines()
    assert len(lines) == 1  # only the access token
    claims = jwt.decode(lines[0], options={"verify_signature": False})
    assert claims["email"] == "alice@example.com" and jwt.get_unverified_header(
        lines[0])["typ"] == "at+jwt"
    unknown = run(lab_dir, "token", "nobody@example.com")
    assert unknown.returncode == 1 and "login_required" in unknown.stderr

    # a trainer's browser holds no demo passkey: `enroll` prints a one-time link for one
    enroll = run(lab_dir, "enroll", "alice@example.com")
    assert enroll.returncode == 0, enroll.stderr
    link = enroll.stdout.strip().splitlines()[-1]
    assert "Alice" in enroll.stdout and "/lab/enroll?code=" in link
    assert link.startswith("http://localhost:")  # WebAuthn refuses IP addresses as RP IDs
    nobody = run(lab_dir, "enroll", "nobody@example.com")
    assert nobody.returncode == 1 and "no active user" in nobody.stderr and "http" not in \
        nobody.stdout

    env = read_env_file(lab_dir / "iia.env")
    identity = WorkloadIdentity(IdentitySettings.from_env(env))
    issuer = env["IIA_VERIFY_ISSUER"]
    admin = env["IIA_ADMIN_API_URL"]
    pushed = []
    for target in ("u-1", "u-2"):
        # the object the MCP server would build (the summary is not part of the digest)
        details = {**authorization_details(tool("deactivate_user"), {"user_id": target}, admin),
                   "summary": f"Deactivate {target}"}
        response = as_mcp_server(identity, f"{issuer}/bc-authorize", {
            "scope": "openid", "login_hint": "alice@example.com",
            "binding_message": f"Deactivate {target}?",
            "authorization_details": json.dumps([details]),
            "client_notification_token": secrets.token_urlsafe(32)})  # CIBA ping client
        assert response.status_code == 200, response.text
        pushed.append(response.json()["auth_req_id"])
    identity.close()

    listed = run(lab_dir, "approvals", "--json")
    items = json.loads(listed.stdout)
    assert [i["binding_message"] for i in items] == ["Deactivate u-1?", "Deactivate u-2?"]
    assert set(items[0]) == {"id", "user", "tier", "binding_message", "authorization_details"}
    table = run(lab_dir, "approvals")
    assert items[0]["id"] in table.stdout and "verify_deactivate_user" in table.stdout
    assert run(lab_dir, "approve", items[0]["id"]).stdout.strip().endswith("approved")
    assert run(lab_dir, "deny", items[1]["id"]).stdout.strip().endswith("denied")
    twice = run(lab_dir, "approve", items[0]["id"])
    assert twice.returncode == 1 and "already approved" in twice.stderr
    assert json.loads(run(lab_dir, "approvals", "--json").stdout) == []
