"""Settings of the workload-identity chain: from arguments, else the environment.

Names follow the tools they configure: `SPIFFE_ENDPOINT_SOCKET` (the SPIFFE standard, as
py-spiffe and SPIRE use it), `IIA_VAULT_ADDR` (falling back to `VAULT_ADDR`, as hvac does), and
`IIA_*` for the rest. Only IDs, URLs, paths and ports: never a secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlparse

from iia.errors import ConfigurationError

__all__ = ["IdentitySettings", "read_env_file"]

_ENV = {
    "spiffe_socket": "SPIFFE_ENDPOINT_SOCKET",
    "spiffe_id": "IIA_SPIFFE_ID",
    "vault_addr": "IIA_VAULT_ADDR",
    "vault_audience": "IIA_VAULT_AUDIENCE",
    "vault_jwt_mount": "IIA_VAULT_JWT_MOUNT",
    "vault_role": "IIA_VAULT_ROLE",
    "vault_kv_mount": "IIA_VAULT_KV_MOUNT",
    "vault_secret_path": "IIA_VAULT_SECRET_PATH",
    "vault_ca_cert": "IIA_VAULT_CACERT",
}


def read_env_file(path: str | Path) -> dict[str, str]:
    """Parse a KEY=VALUE file such as `.lab/iia.env` (comments and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().strip('"').strip("'")
    return out


@dataclass(frozen=True)
class IdentitySettings:
    spiffe_socket: str
    vault_addr: str
    spiffe_id: str | None = None
    vault_audience: str = "vault"
    vault_jwt_mount: str = "jwt"
    vault_role: str = "mcp-server"
    vault_kv_mount: str = "ibm-verify"
    vault_secret_path: str = "mcp-server"  # noqa: S105 - a kv path, not a secret
    vault_ca_cert: str | None = None
    timeout: float = 2.0
    min_token_ttl: float = 30.0

    def __post_init__(self) -> None:
        sock = self.spiffe_socket
        if not sock or not (sock.startswith("unix:") or sock.startswith("/")):
            raise ConfigurationError(
                f"SPIFFE_ENDPOINT_SOCKET must be a unix socket (unix:///path), got {sock!r}")
        url = urlparse(self.vault_addr or "")
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigurationError(
                f"IIA_VAULT_ADDR must be an http(s) URL, got {self.vault_addr!r}")
        if self.spiffe_id is not None and not self.spiffe_id.startswith("spiffe://"):
            raise ConfigurationError(f"IIA_SPIFFE_ID must be a SPIFFE ID, got {self.spiffe_id!r}")
        for name in ("vault_audience", "vault_jwt_mount", "vault_role", "vault_kv_mount",
                     "vault_secret_path"):
            if not getattr(self, name):
                raise ConfigurationError(f"{_ENV[name]} must not be empty")
        if self.timeout <= 0 or self.min_token_ttl < 0:
            raise ConfigurationError("timeout must be positive and min_token_ttl non-negative")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 **overrides: object) -> IdentitySettings:
        """Arguments win; then `env` (default: the process environment)."""
        source = os.environ if env is None else env
        values: dict[str, object] = {}
        names = {f.name for f in fields(cls)}
        for name, var in _ENV.items():
            value = source.get(var)
            if name == "vault_addr" and not value:
                value = source.get("VAULT_ADDR")
            if value:
                values[name] = value
        for key, override in overrides.items():
            if key not in names:
                raise ConfigurationError(f"unknown identity setting {key!r}")
            values[key] = override
        if "spiffe_socket" not in values:
            raise ConfigurationError("SPIFFE_ENDPOINT_SOCKET is not set: where is the SPIFFE "
                                     "Workload API (SPIRE agent) socket?")
        if "vault_addr" not in values:
            raise ConfigurationError("IIA_VAULT_ADDR (or VAULT_ADDR) is not set: where is Vault?")
        return cls(**values)  # type: ignore[arg-type]
