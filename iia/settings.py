"""Settings of the MCP server, the agent loop and the chat route: arguments first, then `IIA_*`
environment variables. IDs, URLs and numbers only; the one secret that may come from the
environment is the Anthropic API key, read from `ANTHROPIC_API_KEY` and never written anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

from iia.errors import ConfigurationError

__all__ = ["AgentSettings", "ChatSettings", "McpSettings"]

S = TypeVar("S")


def _url(name: str, value: str) -> str:
    parsed = urlparse(value or "")
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigurationError(f"{name} must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


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
class McpSettings:
    issuer: str
    resource: str  # this server's URL: the audience of user tokens (RFC 8707)
    admin_api_url: str
    admin_group_id: str = ""
    approval_timeout: float = 120.0
    consent_ttl: float = 1800.0

    ENV: ClassVar[dict[str, str]] = {"issuer": "IIA_VERIFY_ISSUER", "resource": "IIA_MCP_RESOURCE",
           "admin_api_url": "IIA_ADMIN_API_URL", "admin_group_id": "IIA_ADMIN_GROUP_ID",
           "approval_timeout": "IIA_APPROVAL_TIMEOUT", "consent_ttl": "IIA_CONSENT_TTL"}

    def __post_init__(self) -> None:
        for name in ("issuer", "resource", "admin_api_url"):
            object.__setattr__(self, name, _url(self.ENV[name], getattr(self, name)))
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

    ENV: ClassVar[dict[str, str]] = {"issuer": "IIA_VERIFY_ISSUER", "client_id": "IIA_UI_CLIENT_ID",
           "session_ttl": "IIA_CHAT_SESSION_TTL"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "issuer", _url("IIA_VERIFY_ISSUER", self.issuer))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ChatSettings:
        return _load(cls, cls.ENV, env, overrides)
