"""`iia-lab up --docker`: the lab with real SPIRE and a real Vault, from docker-compose.yml,
driven through the Docker SDK (no `docker compose` binary needed).

The compose file holds no secret. At start we generate what the run needs (Vault's root token,
the SSF push authorization headers) and pass it in the containers' environment only; then the
services start in `depends_on` order, each waited for (`service_healthy`,
`service_completed_successfully`, `service_started`), and `.lab/endpoints.json` is written with the
same keys as the in-process lab, so the notebooks run unchanged.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError

__all__ = [
    "ENDPOINTS",
    "DockerLab",
    "DockerUnavailableError",
    "interpolate",
    "load_compose",
    "plan",
    "runtime_env",
]

PROJECT = "iia-lab"
LABEL = {"org.iia.lab": PROJECT}

# where each service answers on 127.0.0.1 (host networking): the same keys as the lab's
ENDPOINTS = {
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


class DockerUnavailableError(HarnessError):
    """No Docker engine answers: `--docker` needs one (the in-process lab does not)."""


def load_compose(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "docker-compose.yml").read_text())


def runtime_env() -> dict[str, str]:
    """The run's secrets and the receivers Antenna subscribes: generated now, never written."""
    auth = {name: "Bearer " + secrets.token_urlsafe(24) for name in ("verify", "caep", "mcp")}
    session_revoked = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
    receivers = [
        {"name": "verify", "endpoint_url": "http://127.0.0.1:18300/v1.0/ssf/events",
         "aud": "http://127.0.0.1:18300/oidc/endpoint/default", "events": [session_revoked],
         "authorization_header": auth["verify"]},
        {"name": "mcp", "endpoint_url": "http://127.0.0.1:18400/ssf/events",
         "aud": "http://127.0.0.1:18400/mcp", "events": [session_revoked],
         "authorization_header": auth["mcp"]},
        {"name": "caep_receiver", "endpoint_url": "http://127.0.0.1:18320/events",
         "aud": "http://127.0.0.1:18320/events", "events": "ALL",
         "authorization_header": auth["caep"]},
    ]
    return {"IIA_VAULT_ROOT_TOKEN": secrets.token_urlsafe(32),
            "IIA_SSF_AUTH_VERIFY": auth["verify"], "IIA_SSF_AUTH_CAEP": auth["caep"],
            "IIA_SSF_RECEIVERS": json.dumps(receivers)}


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


def container_options(name: str, spec: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """The Docker SDK's `containers.run` keyword arguments for one (interpolated) service."""
    volumes: dict[str, dict[str, str]] = {}
    for entry in spec.get("volumes") or []:
        source, target, *mode = entry.split(":")
        key = str((root / source).resolve()) if source.startswith(".") else f"{PROJECT}_{source}"
        volumes[key] = {"bind": target, "mode": mode[0] if mode else "rw"}
    options: dict[str, Any] = {
        "image": spec["image"], "name": f"{PROJECT}-{name}", "detach": True,
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
    def __init__(self, root: Path, env: Mapping[str, str] | None) -> None:
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
        raw = load_compose(root)
        self.compose = interpolate(raw, env) if env is not None else raw

    def up(self, timeout: float = 300.0) -> dict[str, str]:
        services = self.compose["services"]
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
                if not source.startswith("."):
                    self.client.volumes.create(name=f"{PROJECT}_{source}", labels=LABEL)
            for dependency, condition in (spec.get("depends_on") or {}).items():
                self._wait(dependency, condition["condition"], timeout)
            self.client.containers.run(**container_options(name, spec, self.root))
        return dict(ENDPOINTS)

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
        return removed
