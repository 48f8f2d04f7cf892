"""The root of every error `iia` raises.

Each error carries a wire code (`code`), a sentence a person understands (`description`), and,
when a dependency is at fault, the dependency's name and its own upstream code. Errors render
themselves as the JSON body that crosses the wire, so the code that raises decides what the
caller sees, once.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ConfigurationError",
    "DependencyError",
    "IIAError",
]


class IIAError(Exception):
    """Base class: `code` is the wire code; `status` the HTTP status it maps to."""

    code: ClassVar[str] = "server_error"
    status: ClassVar[int] = 500

    def __init__(
        self,
        description: str,
        *,
        dependency: str | None = None,
        upstream_code: str | None = None,
    ) -> None:
        super().__init__(description)
        self.description = description
        self.dependency = dependency
        self.upstream_code = upstream_code

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "error_description": self.description}
        if self.dependency:
            body["dependency"] = self.dependency
        if self.upstream_code:
            body["upstream_code"] = self.upstream_code
        return body

    def __str__(self) -> str:
        where = f" [{self.dependency}]" if self.dependency else ""
        return f"{self.code}{where}: {self.description}"


class ConfigurationError(IIAError):
    """A setting is missing or malformed; raised on construction, before any I/O."""

    code = "invalid_configuration"


class DependencyError(IIAError):
    """A dependency is down, sealed, or refused us. We fail closed and name it."""

    code = "dependency_unavailable"
    status = 503
