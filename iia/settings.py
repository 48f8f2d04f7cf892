"""Settings of the MCP server, the agent loop and the chat route: arguments first, then `IIA_*`
environment variables (optionally read from an env file: `load_env`). IDs, URLs and numbers
only; the one secret that may come from the environment is the Anthropic API key, read from
`ANTHROPIC_API_KEY` and never written anywhere. The SSF receivers' bearer credentials are read
from files the configuration names (`SsfReceiver.authorization_file`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

from iia.errors import ConfigurationError
from iia.identity.settings import read_env_file

__all__ = ["AgentSettings", "AntennaBounds", "ChatSettings", "McpSettings", "SsfReceiver",
           "client_ids", "load_env", "read_authorization_file", "ssf_receivers", "web_origin"]

S = TypeVar("S")


def _url(name: str, value: str) -> str:
    parsed = urlparse(value or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigurationError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


_CLIENT_ID = re.compile(r"[A-Za-z0-9._~:/@+-]+")


def _items(name: str, value: str | tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated setting (or the tuple it became): its stripped items, none empty."""
    raw = value.split(",") if isinstance(value, str) else list(value)
    items = tuple(str(item).strip() for item in raw)
    if not items or any(not item for item in items):
        raise ConfigurationError(f"{name} must be a comma-separated list with no empty item, "
                                 f"got {value!r}")
    return items


def client_ids(name: str, value: str | tuple[str, ...]) -> tuple[str, ...]:
    """OAuth client IDs (RFC 6749 §2.2), one or more; white space, quotes and commas are
    refused so that every ID is one exact string (a typo is an error, not a silent mismatch)."""
    items = _items(name, value)
    bad = [item for item in items if not _CLIENT_ID.fullmatch(item)]
    if bad:
        raise ConfigurationError(f"{name}: {bad[0]!r} is not a client ID (letters, digits and "
                                 "._~:/@+- only)")
    return items


def web_origin(name: str, value: str) -> str:
    """An origin as browsers send it in `Origin` (RFC 6454 §6.1): scheme://host[:port],
    lower case, without a default port, a path, a query or a fragment."""
    parsed = urlparse(value.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname \
            or parsed.path not in ("", "/") or parsed.query or parsed.fragment \
            or parsed.username or parsed.password:
        raise ConfigurationError(f"{name}: {value.strip()!r} is not an origin "
                                 "(scheme://host[:port], nothing after it)")
    try:
        port = parsed.port
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {value.strip()!r} has an invalid port") from exc
    host = parsed.hostname if ":" not in parsed.hostname else f"[{parsed.hostname}]"
    default = {"http": 80, "https": 443}[parsed.scheme]
    return f"{parsed.scheme}://{host}" + (f":{port}" if port and port != default else "")


def _load(cls: type[S], env_names: Mapping[str, str], env: Mapping[str, str] | None,
          overrides: Mapping[str, Any]) -> S:
    source = os.environ if env is None else env
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for name, var in env_names.items():
        if source.get(var):
            kind = names[name].type
            raw = source[var]
            try:
                values[name] = float(raw) if kind == "float" else int(raw) if kind == "int" \
                    else raw
            except ValueError as exc:
                raise ConfigurationError(f"{var} must be a number, got {raw!r}") from exc
    for key, value in overrides.items():
        if key not in names:
            raise ConfigurationError(f"unknown setting {key!r} for {cls.__name__}")
        values[key] = value
    missing = [env_names.get(n, n) for n, f in names.items()
               if n not in values and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigurationError(f"{cls.__name__} needs {', '.join(missing)}")
    return cls(**values)


@dataclass(frozen=True)
class AntennaBounds:
    """What Antenna keeps (issue #20, bounded state): a SET that reached an end (delivered,
    refused, dropped) stays `keep_delivered_seconds` and at most the newest
    `keep_delivered_sets` of them (pending SETs are never pruned); the anomaly detector forgets
    a session idle for `anomaly_idle_seconds` (or ended)."""

    keep_delivered_seconds: float = 3600.0
    keep_delivered_sets: int = 2000
    anomaly_idle_seconds: float = 3600.0

    ENV: ClassVar[dict[str, str]] = {
        "keep_delivered_seconds": "IIA_ANTENNA_KEEP_DELIVERED_SECONDS",
        "keep_delivered_sets": "IIA_ANTENNA_KEEP_DELIVERED_SETS",
        "anomaly_idle_seconds": "IIA_ANOMALY_IDLE_SECONDS"}

    def __post_init__(self) -> None:
        if self.keep_delivered_seconds <= 0 or self.keep_delivered_sets < 1 \
                or self.anomaly_idle_seconds <= 0:
            raise ConfigurationError("IIA_ANTENNA_KEEP_DELIVERED_SECONDS and "
                                     "IIA_ANOMALY_IDLE_SECONDS must be positive, "
                                     "IIA_ANTENNA_KEEP_DELIVERED_SETS at least 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AntennaBounds:
        return _load(cls, cls.ENV, env, overrides)


@dataclass(frozen=True)
class McpSettings:
    issuer: str
    resource: str  # this server's URL: the audience of user tokens (RFC 8707)
    admin_api_url: str
    admin_group_id: str = ""
    # seconds a push may wait for the person: under the 60 s most MCP clients wait for an
    # answer by default (TypeScript SDK request timeout, the Inspector's total), so the call
    # ends and the push expires before such a client gives up (README, "Long tool calls")
    approval_timeout: float = 55.0
    consent_ttl: float = 1800.0
    # the OAuth clients whose user tokens may call this server (RFC 9068 §2.2 `client_id`)
    allowed_clients: tuple[str, ...] | str = ("iia-ui",)
    # the web origins whose pages may call the MCP endpoint and read its metadata (CORS,
    # iia.mcp_server.cors); empty: none, no CORS header is ever sent
    cors_origins: tuple[str, ...] | str = ()

    ENV: ClassVar[dict[str, str]] = {"issuer": "IIA_VERIFY_ISSUER", "resource": "IIA_MCP_RESOURCE",
           "admin_api_url": "IIA_ADMIN_API_URL", "admin_group_id": "IIA_ADMIN_GROUP_ID",
           "approval_timeout": "IIA_APPROVAL_TIMEOUT", "consent_ttl": "IIA_CONSENT_TTL",
           "allowed_clients": "IIA_MCP_ALLOWED_CLIENTS", "cors_origins": "IIA_CORS_ORIGINS"}

    def __post_init__(self) -> None:
        for name in ("issuer", "resource", "admin_api_url"):
            object.__setattr__(self, name, _url(self.ENV[name], getattr(self, name)))
        object.__setattr__(self, "allowed_clients",
                           client_ids("IIA_MCP_ALLOWED_CLIENTS", self.allowed_clients))
        if self.cors_origins != ():
            object.__setattr__(self, "cors_origins", tuple(
                web_origin("IIA_CORS_ORIGINS", o) for o in _items("IIA_CORS_ORIGINS",
                                                                  self.cors_origins)))
        if self.approval_timeout <= 0 or self.consent_ttl <= 0:
            raise ConfigurationError("approval_timeout and consent_ttl must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> McpSettings:
        return _load(cls, cls.ENV, env, overrides)


@dataclass(frozen=True)
class AgentSettings:
    mcp_url: str
    model: str = "claude-sonnet-4-6"
    anthropic_base_url: str = ""  # empty: the real Claude (needs ANTHROPIC_API_KEY)
    max_steps: int = 10
    max_tokens: int = 1024

    ENV: ClassVar[dict[str, str]] = {"mcp_url": "IIA_MCP_RESOURCE", "model": "IIA_MODEL",
           "anthropic_base_url": "IIA_ANTHROPIC_BASE_URL", "max_steps": "IIA_MAX_STEPS",
           "max_tokens": "IIA_MAX_TOKENS"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "mcp_url", _url("IIA_MCP_RESOURCE", self.mcp_url))
        if self.anthropic_base_url:
            object.__setattr__(self, "anthropic_base_url",
                               _url("IIA_ANTHROPIC_BASE_URL", self.anthropic_base_url))
        if not 1 <= self.max_steps <= 50:
            raise ConfigurationError("IIA_MAX_STEPS must be between 1 and 50")

    @property
    def uses_real_claude(self) -> bool:
        return not self.anthropic_base_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AgentSettings:
        return _load(cls, cls.ENV, env, overrides)


@dataclass(frozen=True)
class ChatSettings:
    issuer: str
    client_id: str = "iia-ui"
    session_ttl: float = 8 * 3600.0
    # the tenant administrators: members (the IdP's `groups` claim) see everyone's events;
    # empty: nobody does
    admin_group_id: str = ""
    # the chat page's public origins; empty: the origin the browser addressed (Host)
    origins: tuple[str, ...] | str = ()

    ENV: ClassVar[dict[str, str]] = {"issuer": "IIA_VERIFY_ISSUER", "client_id": "IIA_UI_CLIENT_ID",
           "session_ttl": "IIA_CHAT_SESSION_TTL", "admin_group_id": "IIA_ADMIN_GROUP_ID",
           "origins": "IIA_CHAT_ORIGINS"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "issuer", _url("IIA_VERIFY_ISSUER", self.issuer))
        if self.origins != ():
            object.__setattr__(self, "origins", tuple(
                web_origin("IIA_CHAT_ORIGINS", o) for o in _items("IIA_CHAT_ORIGINS",
                                                                  self.origins)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ChatSettings:
        return _load(cls, cls.ENV, env, overrides)


# -- one settings surface: the environment over an env file -----------------------------------

_SECRET_NAME = re.compile(r"(?:^|_)(?:SECRET|PASSWORD|TOKEN|API_KEY|PRIVATE_KEY)$")


def load_env(env_file: str | Path | None = None,
             environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings `iia` runs with: `environ` (default: the process environment) over the env
    file `env_file`, else `IIA_ENV_FILE`, else none (the format of `.lab/iia.env`).

    The file is configuration: IDs, URLs, paths and ports. A name that looks like a secret
    (`*_TOKEN`, `*_SECRET`, `*_PASSWORD`, `*_API_KEY`, `*_PRIVATE_KEY`) is refused there; secrets
    come from the environment (`ANTHROPIC_API_KEY`), Vault, or files a secret store provides.
    """
    source = dict(os.environ if environ is None else environ)
    path = env_file or source.get("IIA_ENV_FILE")
    if not path:
        return source
    try:
        values = read_env_file(path)
    except OSError as exc:
        raise ConfigurationError(f"env file {path}: {exc.strerror or exc}") from exc
    secret = sorted(k for k in values if _SECRET_NAME.search(k))
    if secret:
        raise ConfigurationError(
            f"env file {path} sets {', '.join(secret)}: an env file holds IDs and URLs only; "
            "pass secrets in the environment or from a secret store")
    return {**values, **source}


# -- the SSF receivers Antenna pushes to (IIA_SSF_RECEIVERS) ----------------------------------

@dataclass(frozen=True)
class SsfReceiver:
    """One receiver of Antenna's push streams (RFC 8935). IDs and URLs only: the Authorization
    header the receiver demands is read from `authorization_file` (a file a secret store
    provides: a Docker or Kubernetes secret, a Vault Agent template), never from configuration.
    `events` is a list of event-type URIs, or "ALL"."""

    name: str
    endpoint_url: str
    aud: str
    events: tuple[str, ...] | str
    authorization_file: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoint_url",
                           _url(f"IIA_SSF_RECEIVERS[{self.name}].endpoint_url",
                                self.endpoint_url))
        if self.events != "ALL":
            if isinstance(self.events, str) or not all(isinstance(e, str) for e in self.events):
                raise ConfigurationError(
                    f"IIA_SSF_RECEIVERS[{self.name}].events must be a list of URIs or \"ALL\"")
            object.__setattr__(self, "events", tuple(self.events))

    def authorization_header(self) -> str | None:
        """The header value from `authorization_file`, read when the stream is configured."""
        if not self.authorization_file:
            return None
        return read_authorization_file(self.authorization_file,
                                       f"IIA_SSF_RECEIVERS[{self.name}].authorization_file")


def read_authorization_file(path: str, setting: str) -> str:
    """An HTTP Authorization header value kept in a file (a credential never sits in
    configuration). An unreadable or empty file is an error: a receiver that demands a header
    must never be configured as one that demands none."""
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{setting} {path}: {exc.strerror or exc}") from exc
    if not value:
        raise ConfigurationError(f"{setting} {path} is empty")
    return value


_RECEIVER_KEYS = {f.name for f in fields(SsfReceiver)}


def ssf_receivers(env: Mapping[str, str] | None = None) -> list[SsfReceiver]:
    """`IIA_SSF_RECEIVERS`: a JSON list of {name, endpoint_url, aud, events,
    authorization_file?}."""
    raw = (os.environ if env is None else env).get("IIA_SSF_RECEIVERS") or "[]"
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"IIA_SSF_RECEIVERS is not JSON: {exc}") from exc
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ConfigurationError("IIA_SSF_RECEIVERS must be a JSON list of objects")
    receivers = []
    for item in items:
        name = item.get("name", "?")
        if "authorization_header" in item:
            raise ConfigurationError(
                f"IIA_SSF_RECEIVERS[{name}] carries authorization_header: a bearer credential "
                "is a secret, not configuration; put it in a file and name the file in "
                "authorization_file")
        unknown = set(item) - _RECEIVER_KEYS
        missing = {"name", "endpoint_url", "aud", "events"} - set(item)
        if unknown or missing:
            raise ConfigurationError(f"IIA_SSF_RECEIVERS[{name}]: unknown {sorted(unknown)}, "
                                     f"missing {sorted(missing)}")
        receivers.append(SsfReceiver(**item))
    return receivers
