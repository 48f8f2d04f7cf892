"""`iia-lab up --docker`: the lab with real SPIRE and a real Vault, from docker-compose.yml,
driven through the Docker SDK (no `docker compose` binary needed).

The compose file holds no secret. At start we generate what the run needs (`runtime_env`):
Vault's root token (a compose variable, in the containers' environment only) and the SSF push
authorization headers (the file's top-level `secrets`, each read from the variable its
`environment:` names, as Docker Compose does, and copied as a file into the containers that
declare it, with the uid and mode they declare; never written to the host, never in a
container's environment). Then the services start in
`depends_on` order, each waited for (`service_healthy`, `service_completed_successfully`,
`service_started`), and `.lab/endpoints.json` is written with the same keys as the in-process
lab, so the notebooks run unchanged.

The lab directory is mounted at its own absolute path (`IIA_LAB_DIR`), and the SPIRE agent's
socket directory `<lab dir>/spire-agent` too, so the Workload API socket has one path on the host
and in every container, like the URLs on 127.0.0.1 (host networking).
"""

from __future__ import annotations

import io
import re
import secrets
import shutil
import tarfile
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml

from harness.authenticator import FILE_NAME
from harness.errors import HarnessError
from harness.paths import project_root

__all__ = [
    "HTTP_ENDPOINTS",
    "SOCKET_DIR",
    "DockerLab",
    "DockerUnavailableError",
    "container_options",
    "endpoints",
    "iia_env",
    "interpolate",
    "load_compose",
    "plan",
    "runtime_env",
    "secret_archive",
    "secret_values",
    "secret_variables",
]

PROJECT = "iia-lab"
LABEL = {"org.iia.lab": PROJECT}
SOCKET_DIR = "spire-agent"  # under the lab directory: the SPIRE agent's Workload API socket
AUTHENTICATOR_FILE = FILE_NAME  # under the lab directory: the verify service writes it

# where each HTTP service answers on 127.0.0.1 (host networking); `jupyter` is extra
HTTP_ENDPOINTS = {
    "spiffe_oidc": "http://127.0.0.1:18084",
    "vault": "http://127.0.0.1:18200",
    "verify": "http://127.0.0.1:18300",
    "model": "http://127.0.0.1:18310",
    "caep_receiver": "http://127.0.0.1:18320",
    "mcp": "http://127.0.0.1:18400/mcp",
    "chat": "http://127.0.0.1:18401",
    "antenna": "http://127.0.0.1:18402",
    "console": "http://127.0.0.1:18403",
    "jupyter": "http://127.0.0.1:18888",
}

# settings of the `iia` service that are not for `.lab/iia.env` (a secret, from the caller)
_NOT_SETTINGS = ("ANTHROPIC_API_KEY",)


class DockerUnavailableError(HarnessError):
    """No Docker engine answers: `--docker` needs one (the in-process lab does not)."""


def load_compose(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "docker-compose.yml").read_text())


def endpoints(lab_dir: Path) -> dict[str, str]:
    """`.lab/endpoints.json` of the docker lab: the in-process lab's keys (and `jupyter`)."""
    socket = lab_dir.resolve() / SOCKET_DIR / "agent.sock"
    return {"spiffe_socket": f"unix://{socket}", **HTTP_ENDPOINTS}


def secret_variables(compose: Mapping[str, Any]) -> dict[str, str]:
    """Each top-level secret of the compose file -> the variable its `environment:` names."""
    named: dict[str, str] = {}
    for name, spec in (compose.get("secrets") or {}).items():
        variable = (spec or {}).get("environment")
        if not isinstance(variable, str) or not variable:
            raise HarnessError(f"docker-compose.yml: secret {name} names no `environment:` "
                               "variable (iia-lab generates every secret into one)")
        named[name] = variable
    return named


def secret_values(compose: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Each secret's value from the variable it names, as `docker compose up` reads it; a
    secret whose variable is unset or empty is an error naming both."""
    values: dict[str, str] = {}
    for name, variable in secret_variables(compose).items():
        value = env.get(variable)
        if not value:
            raise HarnessError(f"{variable} (the value of secret {name}) is not set")
        values[name] = value
    return values


def runtime_env(lab_dir: Path, root: Path | None = None) -> dict[str, str]:
    """The compose file's variables for one run: the lab directory (absolute, as the containers
    mount it), Vault's root token and each secret's value (an SSF push Authorization header),
    all generated now and never written."""
    declared = (load_compose(root or project_root()).get("secrets") or {}).values()
    # a secret naming no variable is refused, by name, where the lab reads them (secret_values)
    headers = {spec["environment"]: "Bearer " + secrets.token_urlsafe(24)
               for spec in declared if isinstance((spec or {}).get("environment"), str)}
    return {"IIA_LAB_DIR": str(lab_dir.resolve()),
            "IIA_VAULT_ROOT_TOKEN": secrets.token_urlsafe(32), **headers}


def iia_env(compose: Mapping[str, Any]) -> dict[str, str]:
    """`.lab/iia.env` of the docker lab: the (interpolated) `iia` service's settings, which hold
    IDs, URLs and paths valid on the host too; never a secret."""
    env = compose["services"]["iia"]["environment"]
    return {k: str(v) for k, v in env.items() if k not in _NOT_SETTINGS}


def secret_archive(files: list[tuple[str, bytes, int, int]]) -> bytes:
    """A tar of (absolute target, content, uid, mode) for `put_archive` at `/`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in sorted({str(Path(t).parent).lstrip("/") for t, *_ in files}):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for target, data, uid, mode in files:
            info = tarfile.TarInfo(target.lstrip("/"))
            info.size, info.uid, info.gid, info.mode = len(data), uid, uid, mode
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose interpolation: ${VAR}, ${VAR-default}, ${VAR:-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        current = env.get(name)
        if op in (":?", "?") and (current is None or (op == ":?" and current == "")):
            raise HarnessError(f"{name}: {arg}")
        if op in (":-", "-") and (current is None or (op == ":-" and current == "")):
            return arg or ""
        return current or ""

    return _VAR.sub(replace, value)


def plan(compose: Mapping[str, Any]) -> list[str]:
    """Services in an order where every dependency comes first (Kahn's algorithm)."""
    services = compose["services"]
    deps = {name: set((spec.get("depends_on") or {}).keys()) for name, spec in services.items()}
    order: list[str] = []
    ready = sorted(n for n, d in deps.items() if not d)
    while ready:
        name = ready.pop(0)
        order.append(name)
        for other, d in deps.items():
            if name in d:
                d.discard(name)
                if not d and other not in order and other not in ready:
                    ready.append(other)
    if len(order) != len(services):
        raise HarnessError("docker-compose.yml has a dependency cycle")
    return order


def _duration_ns(text: str) -> int:
    match = re.fullmatch(r"(\d+)(ms|s|m)", text)
    if match is None:
        raise HarnessError(f"unsupported duration {text!r}")
    value, unit = int(match.group(1)), match.group(2)
    return value * {"ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000}[unit]


def _is_bind(source: str) -> bool:
    """A host path (bind mount); anything else names a volume of this project."""
    return source.startswith((".", "/"))


def container_options(name: str, spec: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """The Docker SDK's `containers.create` keyword arguments for one (interpolated) service."""
    volumes: dict[str, dict[str, str]] = {}
    for entry in spec.get("volumes") or []:
        source, target, *mode = entry.split(":")
        key = str((root / source).resolve()) if _is_bind(source) else f"{PROJECT}_{source}"
        volumes[key] = {"bind": target, "mode": mode[0] if mode else "rw"}
    options: dict[str, Any] = {
        "image": spec["image"], "name": f"{PROJECT}-{name}",
        "labels": {**LABEL, "org.iia.lab.service": name},
        "network_mode": spec.get("network_mode", "host"), "volumes": volumes,
        "environment": dict(spec.get("environment") or {}),
    }
    for key, option in (("command", "command"), ("entrypoint", "entrypoint"), ("user", "user"),
                        ("cap_add", "cap_add")):
        if key in spec:
            options[option] = spec[key]
    if spec.get("pid") == "host":
        options["pid_mode"] = "host"
    if "healthcheck" in spec:
        check = spec["healthcheck"]
        options["healthcheck"] = {"test": check["test"],
                                  "interval": _duration_ns(check.get("interval", "5s")),
                                  "timeout": _duration_ns(check.get("timeout", "5s")),
                                  "retries": int(check.get("retries", 3))}
    return options


class DockerLab:
    def __init__(self, root: Path, lab_dir: Path, env: Mapping[str, str] | None) -> None:
        """`env` fills the compose file's variables (None: only stopping, nothing to fill)."""
        try:
            import docker
            from docker.errors import DockerException
        except ImportError as exc:  # pragma: no cover - docker is a dependency
            raise DockerUnavailableError("the docker Python package is missing") from exc
        try:
            self.client = docker.from_env()
            self.client.ping()
        except DockerException as exc:
            raise DockerUnavailableError(
                f"no Docker engine is reachable ({exc.__class__.__name__}). `iia-lab up "
                "--docker` needs one; `iia-lab up` runs the same lab in-process without it.") \
                from exc
        self.root = root
        self.lab_dir = lab_dir
        raw = load_compose(root)
        self.compose = interpolate(raw, env) if env is not None else raw
        # the SSF push authorization headers: from the run's environment (runtime_env), then
        # files in the containers only
        self._secrets = secret_values(raw, env) if env is not None else {}

    def up(self, timeout: float = 300.0) -> dict[str, str]:
        services = self.compose["services"]
        # the agent's socket directory exists before Docker would create it (owned by root)
        (self.lab_dir / SOCKET_DIR).mkdir(mode=0o755, parents=True, exist_ok=True)
        built = False
        for name in plan(self.compose):
            spec = services[name]
            if "build" in spec and not built:
                self.client.images.build(path=str(self.root),
                                         dockerfile=spec["build"]["dockerfile"],
                                         tag=spec["image"], rm=True)
                built = True
            elif "build" not in spec:
                self.client.images.pull(spec["image"])
            for entry in spec.get("volumes") or []:
                source = entry.split(":")[0]
                if not _is_bind(source):
                    self.client.volumes.create(name=f"{PROJECT}_{source}", labels=LABEL)
            for dependency, condition in (spec.get("depends_on") or {}).items():
                self._wait(dependency, condition["condition"], timeout)
            container = self.client.containers.create(**container_options(name, spec,
                                                                          self.root))
            files = [(s["target"], self._secrets[s["source"]].encode(), int(s.get("uid", 0)),
                      int(s.get("mode", 0o400))) for s in spec.get("secrets") or []]
            if files:
                container.put_archive("/", secret_archive(files))
            container.start()
        return endpoints(self.lab_dir)

    def iia_env(self) -> dict[str, str]:
        return iia_env(self.compose)

    def _wait(self, name: str, condition: str, timeout: float) -> None:
        container = self.client.containers.get(f"{PROJECT}-{name}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            container.reload()
            state = container.attrs["State"]
            if condition == "service_started" and state["Running"]:
                return
            if condition == "service_healthy" and state.get("Health", {}).get(
                    "Status") == "healthy":
                return
            if condition == "service_completed_successfully" and state["Status"] == "exited":
                if state["ExitCode"] == 0:
                    return
                raise HarnessError(f"{name} exited with {state['ExitCode']}: "
                                   f"{container.logs(tail=20).decode(errors='replace')}")
            time.sleep(1)
        raise HarnessError(f"{name} did not reach {condition} within {timeout:.0f} s")

    def down(self) -> int:
        removed = 0
        for container in self.client.containers.list(all=True, filters={"label": "org.iia.lab"}):
            container.remove(force=True)
            removed += 1
        for volume in self.client.volumes.list(filters={"label": "org.iia.lab"}):
            volume.remove(force=True)
        shutil.rmtree(self.lab_dir / SOCKET_DIR, ignore_errors=True)
        # the demo users' passkeys the verify container saved (as the process lab's supervisor
        # removes them): nobody signs with a stopped lab's keys
        for name in (AUTHENTICATOR_FILE, AUTHENTICATOR_FILE + ".lock"):
            with suppress(FileNotFoundError):
                (self.lab_dir / name).unlink()
        return removed
