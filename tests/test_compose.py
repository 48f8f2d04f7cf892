"""docker-compose.yml without a Docker engine: it validates against the Compose Specification
schema, its services use the lab's names, its Vault init is the harness's own bootstrap, and
`iia-lab up --docker` fails clearly where no engine runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import hvac
import jsonschema
import pytest

from harness.docker_lab import (
    ENDPOINTS,
    container_options,
    interpolate,
    load_compose,
    plan,
    runtime_env,
)
from harness.errors import HarnessError
from harness.lab import Lab
from harness.openbao import OpenBaoServer
from harness.paths import fixtures_dir, project_root
from iia.identity.settings import _ENV as IDENTITY_ENV
from iia.settings import AgentSettings, ChatSettings, McpSettings

ROOT = project_root()
COMPOSE = load_compose(ROOT)
SERVICES = COMPOSE["services"]


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((fixtures_dir() / "compose" / "compose-spec.json").read_text())
    errors = list(jsonschema.Draft201909Validator(schema).iter_errors(COMPOSE))
    assert errors == []
    assert {"spire-server", "spire-agent", "spire-oidc", "vault", "vault-init", "verify",
            "caep-receiver", "iia", "jupyter"} <= set(SERVICES)


def test_a_schema_violation_is_caught() -> None:
    schema = json.loads((fixtures_dir() / "compose" / "compose-spec.json").read_text())
    broken = {"services": {"x": {"image": "a", "depends_on": {"y": {"condition": "maybe"}}}}}
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(broken))


def test_every_dependency_is_a_service_and_starts_first() -> None:
    order = plan(COMPOSE)
    for name, spec in SERVICES.items():
        for dependency, condition in (spec.get("depends_on") or {}).items():
            assert dependency in SERVICES
            assert order.index(dependency) < order.index(name)
            assert condition["condition"] in ("service_started", "service_healthy",
                                              "service_completed_successfully")
    assert order.index("vault-init") < order.index("iia")
    for waited_healthy in {d for s in SERVICES.values() for d, c in (
            s.get("depends_on") or {}).items() if c["condition"] == "service_healthy"}:
        assert "healthcheck" in SERVICES[waited_healthy], waited_healthy


def test_no_secret_in_the_file_and_every_secret_comes_from_the_run() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    needed = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    assert needed == set(runtime_env())  # iia-lab generates exactly what is required
    with pytest.raises(HarnessError, match="IIA_VAULT_ROOT_TOKEN"):
        interpolate(COMPOSE, {})
    filled = interpolate(COMPOSE, runtime_env())
    assert filled["services"]["vault"]["environment"]["VAULT_DEV_ROOT_TOKEN_ID"]


def test_the_iia_service_is_configured_with_the_lab_names() -> None:
    env = SERVICES["iia"]["environment"]
    known = set(IDENTITY_ENV.values()) | set(McpSettings.ENV.values()) | \
        set(AgentSettings.ENV.values()) | set(ChatSettings.ENV.values()) | {
        "IIA_BIND", "IIA_MCP_PORT", "IIA_CHAT_PORT", "IIA_ANTENNA_PORT", "IIA_CONSOLE_PORT",
        "IIA_ANTENNA_URL", "IIA_ANTENNA_DB", "IIA_ANOMALY_RULES", "IIA_SSF_RECEIVERS",
        "ANTHROPIC_API_KEY"}
    assert set(env) <= known, set(env) - known
    layout = json.loads((fixtures_dir() / "vault" / "bootstrap.json").read_text())
    assert env["IIA_SPIFFE_ID"] == layout["role"]["bound_subject"]
    assert env["IIA_VAULT_ROLE"] == layout["role"]["name"]
    assert env["IIA_VAULT_AUDIENCE"] == layout["role"]["bound_audiences"][0]
    assert env["IIA_VAULT_JWT_MOUNT"] == layout["jwt_mount"]
    assert env["IIA_VAULT_KV_MOUNT"] == layout["kv_mount"]
    assert env["IIA_VAULT_SECRET_PATH"] == layout["secret_path"]
    assert env["SPIFFE_ENDPOINT_SOCKET"] == "unix:///run/spire/sockets/agent.sock"
    assert env["IIA_MCP_RESOURCE"] == ENDPOINTS["mcp"]
    assert env["IIA_ADMIN_GROUP_ID"] == json.loads(
        (fixtures_dir() / "policy" / "rar_types.json").read_text())["admin_group"]
    # the agent socket volume is shared between the SPIRE agent and iia
    agent_mounts = {v.split(":")[0] for v in SERVICES["spire-agent"]["volumes"]}
    iia_mounts = {v.split(":")[0] for v in SERVICES["iia"]["volumes"]}
    assert "spire-sockets" in agent_mounts & iia_mounts
    # and the SPIFFE ID SPIRE registers is the one Vault's role is bound to
    init = (ROOT / "deploy" / "spire" / "init.sh").read_text()
    assert f"-spiffeID {layout['role']['bound_subject']}" in init
    entries = json.loads((fixtures_dir() / "spire" / "entries.json").read_text())
    assert entries["entries"][0]["spiffe_id"] == layout["role"]["bound_subject"]


def test_container_options_from_a_service() -> None:
    spec = interpolate(SERVICES["iia"], runtime_env())
    options = container_options("iia", {**spec, "image": "iia-lab:dev"}, ROOT)
    assert options["network_mode"] == "host" and options["pid_mode"] == "host"
    assert options["volumes"]["iia-lab_spire-sockets"] == {"bind": "/run/spire/sockets",
                                                          "mode": "ro"}
    assert options["healthcheck"]["interval"] == 2_000_000_000
    assert options["labels"]["org.iia.lab.service"] == "iia"


def test_vault_init_is_the_harness_bootstrap(lab: Lab, tmp_path: Path) -> None:
    """Run the compose file's vault-init command against a fresh OpenBao: it leaves the same
    role, policy and secret path as the lab's own bootstrap."""
    command = SERVICES["vault-init"]["command"]
    assert command == ["python", "-m", "harness.serve", "vault-init"]
    server = OpenBaoServer(tmp_path / "bao")
    server.start()
    try:
        env = {**os.environ, "IIA_VAULT_ADDR": server.url,
               "IIA_VAULT_ROOT_TOKEN": server._root_token,
               "IIA_SPIFFE_OIDC_URL": lab.endpoints["spiffe_oidc"]}
        result = subprocess.run([sys.executable, *command[1:]], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        fresh: hvac.Client = server.root_client()
        ours: hvac.Client = lab.openbao.root_client()
        for client in (fresh, ours):
            assert client.read("auth/jwt/role/mcp-server") is not None
        role = fresh.read("auth/jwt/role/mcp-server")["data"]
        same = ours.read("auth/jwt/role/mcp-server")["data"]
        for key in ("bound_subject", "bound_audiences", "user_claim", "token_ttl",
                    "token_policies", "token_no_default_policy"):
            assert role[key] == same[key], key
        assert fresh.sys.read_policy("mcp-server-verify-credential")["data"]["rules"] == \
            ours.sys.read_policy("mcp-server-verify-credential")["data"]["rules"]
        secret = fresh.secrets.kv.v2.read_secret_version(
            path="mcp-server", mount_point="ibm-verify", raise_on_deleted_version=True)
        assert secret["data"]["data"]["client_id"] == "iia-mcp-server"
    finally:
        server.stop()


def test_up_docker_without_an_engine_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
           "IIA_LAB_DIR": str(tmp_path / "lab")}
    result = subprocess.run([sys.executable, "-m", "harness.cli", "up", "--docker"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "no Docker engine is reachable" in result.stderr
    assert not (tmp_path / "lab" / "endpoints.json").exists()


def test_a_standalone_harness_service_starts_and_stops(tmp_path: Path) -> None:
    """The containers run `python -m harness.serve <service>`: the model, for instance."""
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "IIA_BIND": "127.0.0.1", "IIA_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.serve", "model"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
