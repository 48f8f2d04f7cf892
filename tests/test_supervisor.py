"""The lab as one OS process per zone (issue #14), over the real process topology: one
`harness.supervisor.Supervisor` for this module, in a private lab directory, with every service
a child process on loopback. The tests reach the simulated products only through their HTTP
APIs (Verify's /lab/decisions, the console's /events) and the processes through /proc.

No test asserts a duration: every wait is for a condition, with a generous timeout (the suite
runs on a busy 2-core machine)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from harness.errors import ServiceStartError
from harness.lab_settings import LabSettings
from harness.lab_state import CONTROL, control
from harness.lab_state import running as alive
from harness.supervisor import SERVICES, RotatingLog, ServiceStatus, Supervisor
from harness.verify.login import login
from harness.verify.tenant import OIDC_BASE
from iia.agent import McpToolClient, SessionEndedError, ToolResult

T = TypeVar("T")
WAIT = 180.0  # seconds: a condition that does not hold by then is a failure, not a slow machine

# what /proc/<pid>/cmdline shows for each zone's process
COMMANDS = {"spire": "-m harness.serve spire", "vault": "server -dev",
            "verify": "-m harness.serve verify", "model": "-m harness.serve model",
            "caep_receiver": "-m harness.serve caep-receiver",
            "iia": "-m iia.serve --console"}


@pytest.fixture(scope="module")
def sup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    supervisor = Supervisor(LabSettings.from_env(), directory=tmp_path_factory.mktemp("lab"))
    supervisor.start(timeout=600)
    yield supervisor
    supervisor.stop()


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.1)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def user_token(sup: Supervisor, email: str = "alice@example.com") -> str:
    return str(login(sup.endpoints["verify"] + OIDC_BASE, email)["access_token"])


def call(sup: Supervisor, token: str, name: str = "list_users",
         arguments: dict[str, Any] | None = None) -> ToolResult:
    async def go() -> ToolResult:
        async with McpToolClient(sup.endpoints["mcp"], lambda: token, timeout=120) as mcp:
            return await mcp.call_tool(name, arguments or {"count": 5})

    return asyncio.run(go())


def listed(result: ToolResult) -> bool:
    """A tier-1 `list_users` that ran: the tenant's users came back."""
    if result.is_error:
        return False
    body = json.loads(result.text)
    return bool(body["totalResults"] >= 5 and all(u["userName"] for u in body["users"]))


def replaced(sup: Supervisor, name: str, old_pid: int) -> ServiceStatus:
    """The service back: a new process, healthy."""
    return wait_for(lambda: (s := sup.service(name)).state == "healthy" and s.pid not in (
        None, old_pid) and s, f"{name} restarted and healthy (was pid {old_pid}); "
                              f"status: {sup.service(name)}")


def events(sup: Supervisor, token: str) -> list[dict[str, Any]]:
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    body = httpx.get(sup.endpoints["console"] + "/events", params={"after": 0, "session": sid},
                     timeout=30).json()
    return list(body["events"])


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def decisions(sup: Supervisor) -> list[dict[str, Any]]:
    return list(httpx.get(sup.endpoints["verify"] + "/lab/decisions", timeout=30).json())


# -- the topology -----------------------------------------------------------------------------

def test_one_process_per_zone(sup: Supervisor) -> None:
    statuses = {s.name: s for s in sup.status()}
    assert set(statuses) == set(SERVICES) == set(COMMANDS)
    pids = {name: s.pid for name, s in statuses.items()}
    assert all(isinstance(pid, int) for pid in pids.values()), pids
    assert len(set(pids.values())) == len(pids) and os.getpid() not in pids.values()
    for name, pid in pids.items():
        assert pid is not None and alive(pid)
        assert COMMANDS[name] in cmdline(pid), (name, cmdline(pid))
        assert statuses[name].state == "healthy" and statuses[name].restarts == 0
    # every endpoint answers on 127.0.0.1, the Workload API on a unix socket
    for key, url in sup.endpoints.items():
        assert url.startswith("unix:///" if key == "spiffe_socket" else "http://127.0.0.1:")
    assert stat.S_ISSOCK(os.stat(sup.endpoints["spiffe_socket"].removeprefix("unix://")).st_mode)


def test_secrets_stay_in_their_process(sup: Supervisor) -> None:
    """Vault's root token is in OpenBao's environment only (and the supervisor's memory);
    Verify's scoped token in Verify's only; neither in a state file or a log."""
    pids = {s.name: s.pid for s in sup.status()}
    assert all(pids.values())
    env = {name: environ(pid) for name, pid in pids.items() if pid}
    root = env["vault"]["BAO_DEV_ROOT_TOKEN_ID"]
    scoped = env["verify"]["IIA_VAULT_TOKEN"]
    assert len(root) >= 32 and len(scoped) >= 32 and root != scoped
    for name, values in env.items():
        text = "\n".join(values.values())
        assert (root in text) == (name == "vault"), name
        assert (scoped in text) == (name == "verify"), name
        assert "IIA_VAULT_ROOT_TOKEN" not in values, name
    # the scoped token may write the credential and nothing else (here: not read it back)
    layout = json.loads((sup.settings.fixtures / "vault" / "bootstrap.json").read_text())
    read = httpx.get(f"{sup.endpoints['vault']}/v1/{layout['kv_mount']}/data/"
                     f"{layout['secret_path']}", headers={"X-Vault-Token": scoped}, timeout=30)
    assert read.status_code == 403
    files = [p for p in sup.directory.rglob("*") if p.is_file() and p.name != "lab.lock"]
    assert {"endpoints.json", "iia.env", "lab.json"} <= {p.name for p in files}
    assert any(p.parent.name == "logs" for p in files)
    for path in files:
        text = path.read_text(errors="replace")
        assert root not in text and scoped not in text, path
    state = json.loads((sup.directory / "lab.json").read_text())
    assert state["mode"] == "processes" and state["pid"] == os.getpid()
    assert state["children"] == pids


def test_control_socket_is_the_owners_only(sup: Supervisor) -> None:
    path = sup.directory / CONTROL
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    code, body = control(sup.directory, "GET", "/status")
    assert code == 200 and [s["name"] for s in body["services"]] == list(SERVICES)
    assert body["endpoints"] == sup.endpoints
    code, body = control(sup.directory, "POST", "/services/nginx/restart")
    assert code == 404 and body["error"] == "unknown_service" and "vault" in \
        body["error_description"]
    code, body = control(sup.directory, "POST", "/services/vault/explode")
    assert code == 404 and body["error"] == "not_found"
    assert sup.service("vault").restarts == 0  # nothing was done


def test_a_tier1_call_runs_across_the_processes(sup: Supervisor) -> None:
    token = user_token(sup)
    before = len(decisions(sup))
    assert listed(call(sup, token))
    assert len(decisions(sup)) > before  # the exchange was decided by the Verify process
    assert "agent:token_exchange_success" in [e["type"] for e in events(sup, token)]


# -- kill -9 any one of them: the supervisor brings it back, the next call succeeds ----------

@pytest.mark.parametrize("name", ["model", "caep_receiver", "spire", "iia", "vault", "verify"])
def test_kill_9_is_followed_by_a_restart_and_a_working_call(sup: Supervisor, name: str) -> None:
    token = user_token(sup)
    assert listed(call(sup, token))
    old = sup.service(name)
    assert old.state == "healthy" and old.pid is not None
    os.kill(old.pid, signal.SIGKILL)
    new = replaced(sup, name, old.pid)
    assert new.restarts == old.restarts + 1 and new.url == old.url  # the same socket
    assert COMMANDS[name] in cmdline(new.pid or 0)
    log = (sup.directory / "logs" / f"{name}.log").read_text()
    assert f"started pid {new.pid}" in log and "killed by SIGKILL" in log
    if name == "verify":
        # the MCP server notices the fresh tenant lost its SSF stream and subscribes again;
        # between the two its calls are refused (temporarily_unavailable): wait for the stream
        wait_for(lambda: any(d["kind"] == "ssf_stream" and d["outcome"] == "created"
                             for d in decisions(sup)) and httpx.get(
            origin_of(sup.endpoints["mcp"]) + "/healthz", timeout=30).status_code == 200,
                 "the MCP server subscribed to the restarted tenant's SSF stream")
        old_token, token = token, refused_by_the_fresh_tenant(sup, token)
    result = call(sup, token)
    assert listed(result), result
    if name == "verify":
        # the new token's key made the MCP server fetch the tenant's key set again: the old
        # tenant's key is gone from it, and the old token is now 401 at the MCP server itself
        with pytest.raises(SessionEndedError):
            call(sup, old_token)


def refused_by_the_fresh_tenant(sup: Supervisor, token: str) -> str:
    """A restarted Verify is a fresh tenant with keys of its own: a token of the old one still
    checks out at the MCP server (whose cached key set holds the old key) but the IdP refuses to
    exchange it, and nothing runs. A new login works; returns its token."""
    before = len(decisions(sup))
    result = call(sup, token)
    assert result.is_error and result.text.startswith("[invalid_grant]"), result
    assert "not signed by a key of this tenant" in result.text
    # (the MCP server subscribing anew to the fresh tenant's SSF stream is its own decision)
    denied = [d for d in decisions(sup)[before:] if not d["kind"].startswith("ssf")]
    assert [(d["kind"], d["outcome"]) for d in denied] == [("token_exchange", "denied")]
    return user_token(sup)


# -- an operator stops Vault: the chain fails closed, naming it; started again, it heals -----

def test_vault_stopped_fails_closed_then_heals(sup: Supervisor) -> None:
    token = user_token(sup)
    assert listed(call(sup, token))
    pid = sup.service("vault").pid
    assert pid is not None
    sup.stop_service("vault")
    stopped = sup.service("vault")
    assert stopped.state == "stopped" and stopped.pid is None and not alive(pid)
    before = len(decisions(sup))
    result = call(sup, token)
    assert result.is_error and result.text.startswith("[vault_unavailable]"), result
    assert "Vault at http://127.0.0.1:" in result.text
    errors = [e for e in events(sup, token) if e["type"] == "agent:tool_error"]
    assert errors and errors[-1]["dependency"] == "vault"
    assert errors[-1]["error"] == "vault_unavailable"
    assert len(decisions(sup)) == before  # nothing reached the IdP: no exchange, no decision
    assert sup.service("vault").state == "stopped"  # and it stays down

    sup.start_service("vault")
    sup.wait_healthy("vault", timeout=WAIT)
    back = sup.service("vault")
    assert back.pid not in (None, pid) and back.restarts == stopped.restarts
    assert listed(call(sup, token))
    assert len(decisions(sup)) > before


@pytest.mark.parametrize("name", ["caep_receiver", "vault"])
def test_operator_restart(sup: Supervisor, name: str) -> None:
    token = user_token(sup)
    old = sup.service(name)
    assert old.pid is not None
    sup.restart(name)
    assert not alive(old.pid)
    new = replaced(sup, name, old.pid)
    assert new.restarts == old.restarts + 1 and new.url == old.url
    assert listed(call(sup, token))  # Vault: bootstrapped again, a fresh credential in it


# -- a crash loop: failed, with its log tail; not restarted until started again --------------

def test_a_crash_loop_is_failed_and_reported(sup: Supervisor) -> None:
    first = sup.service("model")
    assert first.pid is not None
    sup.restart("model")  # an operator's restart forgets earlier crashes (one in a test above)
    killed: list[int] = [first.pid]

    def next_pid() -> int | None:
        s = sup.service("model")
        if s.state == "failed":
            return -1
        return s.pid if s.pid is not None and s.pid not in killed else None

    while True:
        pid = wait_for(next_pid, f"model running again or failed; killed {killed}")
        if pid == -1:
            break
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)
        assert len(killed) <= 1 + Supervisor.MAX_RESTARTS + 1, "never marked failed"
    failed = sup.service("model")
    assert len(killed) == 1 + Supervisor.MAX_RESTARTS + 1
    assert failed.state == "failed" and failed.pid is None
    assert f"crashed {Supervisor.MAX_RESTARTS + 1} times within" in failed.detail
    assert "killed by SIGKILL" in failed.detail and "model.log" in failed.detail
    assert f"started pid {killed[-1]}" in failed.detail  # the log tail is in it
    code, body = control(sup.directory, "GET", "/status")
    assert code == 200
    assert next(s for s in body["services"] if s["name"] == "model")["state"] == "failed"
    with pytest.raises(ServiceStartError, match=r"^model is failed \(crashed 6 times"):
        sup.wait_healthy("model", timeout=WAIT)
    assert sup.service("model").state == "failed"  # not restarted meanwhile

    sup.start_service("model")
    sup.wait_healthy("model", timeout=WAIT)
    assert httpx.get(sup.endpoints["model"] + "/healthz", timeout=30).status_code == 200


def test_logs_are_bounded_and_masked(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "x.log", 1000, lambda: ["s3cr3t-value"])
    for i in range(100):
        log.write(f"line {i} with s3cr3t-value inside\n".encode())
    log.close()
    current, previous = tmp_path / "x.log", tmp_path / "x.log.1"
    assert current.stat().st_size <= 1000 and previous.stat().st_size <= 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log", "x.log.1"]
    text = previous.read_text() + current.read_text()
    assert "s3cr3t-value" not in text and "line 99 with [redacted] inside" in text
    assert log.tail(3).splitlines()[-1] == "line 99 with [redacted] inside"


def test_stop_at_interpreter_exit_leaves_nothing(tmp_path: Path) -> None:
    """A program that stops its lab from `atexit` (after CPython has shut its thread pools
    down) still stops every child and removes the runtime directory."""
    import subprocess
    import sys
    program = (
        "import atexit, json, sys\n"
        "from pathlib import Path\n"
        "from harness.lab_settings import LabSettings\n"
        "from harness.supervisor import Supervisor\n"
        f"sup = Supervisor(LabSettings.from_env(), directory=Path({str(tmp_path / 'lab')!r}))\n"
        "sup.start(timeout=600)\n"
        "print(json.dumps({'runtime': str(sup.runtime_dir),\n"
        "                  'pids': [s.pid for s in sup.status() if s.pid]}), flush=True)\n"
        "atexit.register(sup.stop)\n")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=900, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, \
        done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen["pids"]) == len(SERVICES)
    wait_for(lambda: not any(alive(pid) for pid in seen["pids"]), "every child gone")
    assert not Path(seen["runtime"]).exists(), "the runtime directory was left behind"
    assert not (tmp_path / "lab" / CONTROL).exists()


def test_a_zone_inherits_only_its_own_settings(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings in the supervisor's environment reach no zone by inheritance: an
    `ANTHROPIC_API_KEY` goes to `iia` alone (the one process that calls the model), and a stray
    `IIA_VAULT_ROOT_TOKEN` or `VAULT_TOKEN` to nobody."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "lab-test-model-key")
    monkeypatch.setenv("IIA_VAULT_ROOT_TOKEN", "lab-test-stray-root")
    monkeypatch.setenv("VAULT_TOKEN", "lab-test-stray-vault")
    lab = Supervisor(LabSettings.from_env(), directory=tmp_path / "lab")
    try:
        lab.start(timeout=600)
        envs = {s.name: environ(s.pid) for s in lab.status() if s.pid}
        assert set(envs) == set(SERVICES)
        holders = {name for name, env in envs.items() if "ANTHROPIC_API_KEY" in env}
        assert holders == {"iia"}, holders
        assert envs["iia"]["ANTHROPIC_API_KEY"] == "lab-test-model-key"
        for name, env in envs.items():
            assert "lab-test-stray-root" not in env.values(), name
            assert "lab-test-stray-vault" not in env.values(), name
    finally:
        lab.stop()
