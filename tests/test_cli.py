"""`iia-lab up --detach | status | down` as a person runs them: real processes, real ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.health import probe_all


def run(lab_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IIA_LAB_DIR": str(lab_dir)}
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


def running(pid: int) -> bool:
    """Alive and not a zombie. (A detached lab is re-parented to PID 1; where PID 1 does not
    reap orphans, as in some sandboxes, the exited process lingers as a zombie: dead, no
    sockets, no memory, only a process-table entry.)"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def lab_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "lab"
    yield directory
    run(directory, "down")  # never leave a lab behind, even when an assertion failed


def test_up_status_down_leaves_nothing_behind(lab_dir: Path) -> None:
    up = run(lab_dir, "up", "--detach")
    assert up.returncode == 0, up.stderr
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
    assert status.returncode == 0
    for service in endpoints:
        assert service in status.stdout
    assert "DOWN" not in status.stdout

    state = json.loads((lab_dir / "lab.json").read_text())
    runtime_dir = Path(state["runtime_dir"])
    socket_path = Path(endpoints["spiffe_socket"].removeprefix("unix://"))
    assert socket_path.exists() and runtime_dir.is_dir()
    assert processes_mentioning(str(runtime_dir)), "OpenBao should be running"

    again = run(lab_dir, "up", "--detach")
    assert again.returncode != 0 and "already running" in again.stderr
    assert json.loads((lab_dir / "lab.json").read_text())["pid"] == state["pid"]

    down = run(lab_dir, "down")
    assert down.returncode == 0, down.stderr
    assert not socket_path.exists() and not runtime_dir.exists()
    assert not processes_mentioning(str(runtime_dir)), "OpenBao outlived the lab"
    assert not running(state["pid"])
    assert not (lab_dir / "endpoints.json").exists() and not (lab_dir / "iia.env").exists()
    after = run(lab_dir, "status")
    assert after.returncode == 1 and "no lab is running" in after.stdout


def test_down_when_nothing_runs_is_harmless(lab_dir: Path) -> None:
    result = run(lab_dir, "down")
    assert result.returncode == 0 and "no lab is running" in result.stdout


def test_foreground_up_stops_cleanly_on_sigterm(lab_dir: Path) -> None:
    env = {**os.environ, "IIA_LAB_DIR": str(lab_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "up"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (lab_dir / "lab.json").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.05)
        runtime_dir = json.loads((lab_dir / "lab.json").read_text())["runtime_dir"]
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()
    assert not Path(runtime_dir).exists()
    assert not processes_mentioning(runtime_dir)


def test_lab_settings_come_from_the_environment() -> None:
    from harness.errors import HarnessError
    from harness.lab import LabSettings

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
            "authorization_details": json.dumps([details])})
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
