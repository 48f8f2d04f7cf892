"""The one error tree of `iia`: every error it raises is an `IIAError`.

An error carries a wire code (`code`), the HTTP status it maps to (`status`), a sentence a person
understands (`description`) and, when a dependency is at fault, the dependency's name and its own
upstream code. It renders itself as the JSON body that crosses the wire (`to_dict`), so the code
that raises decides what the caller sees, once. A subclass states its code, status and
dependency as class keywords and adds nothing else unless it carries more than that:

    class VaultSealedError(VaultError, code="vault_sealed"):
        "Vault answered that it is sealed."

The tree (module in brackets; `code` and `status` beside each; leaves are one line each):

    IIAError                          server_error 500
    +-- ConfigurationError            invalid_configuration 500
    +-- DependencyError               dependency_unavailable 503 (names `dependency`)
    |   +-- WorkloadApiError          [iia.identity] spire: unavailable, not attested (403)
    |   +-- VaultError                [iia.identity] vault: unavailable, sealed, login refused
    |   |                             (403), permission denied (403), secret missing
    |   +-- IdpUnavailableError       [iia.oauth] idp
    |   |   +-- IdpBusyError          [iia.oauth] idp_busy (503 + Retry-After, past the budget)
    |   +-- JwksUnavailableError      [iia.jwks] idp (or the transmitter)
    |   +-- AdminApiUnavailableError  [iia.admin_api] admin_api
    |   +-- McpUnavailableError       [iia.agent] mcp
    |   +-- ModelUnavailableError     [iia.agent] model
    +-- OAuthError                    [iia.oauth] the IdP's RFC 6749 §5.2 error, 400:
    |                                 invalid_request, invalid_client (401), invalid_grant,
    |                                 access_denied (403), invalid_target; `session_ended`
    |                                 when the IdP says so
    +-- InvalidTokenError             [iia.resource_server] invalid_token 401 (RFC 6750 §3.1)
    +-- ApprovalError                 [iia.hitl] 403: approval_denied, approval_timeout,
    |                                 approval_refused, approval_unverified
    +-- InvalidIdTokenError           [iia.oauth] invalid_id_token 403 (a CIBA answer's ID Token)
    +-- CallCancelledError            [iia.cancellation] call_cancelled 409 (the client
    |                                 cancelled the call; nothing was done)
    +-- AdminApiError                 [iia.admin_api] admin_api_error (carries the HTTP status)
    +-- SessionEndedError             [iia.agent] session_ended 401
    +-- SetRefused                    [iia.ssf] RFC 8935 §2.4 `err`, 400: invalid_request,
    |                                 invalid_key, invalid_issuer, invalid_audience,
    |                                 authentication_failed (401), access_denied (403),
    |                                 duplicate (202), transmitter keys unavailable (503)
    +-- StreamError                   [iia.antenna] invalid_request (SSF §8.1 status)
    +-- CaepEventError                [iia.antenna] invalid_event 400
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

__all__ = [
    "ConfigurationError",
    "DependencyError",
    "ErrorBody",
    "IIAError",
]


class ErrorBody(TypedDict):
    """The JSON body of an error on the wire (RFC 6749 §5.2 names, which MCP and SCIM callers of
    `iia` read too)."""

    error: str
    error_description: str
    dependency: NotRequired[str]
    upstream_code: NotRequired[str]


class IIAError(Exception):
    """Base class: `code` is the wire code, `status` the HTTP status it maps to, `dependency`
    the dependency at fault (None: `iia` itself). A subclass sets them as class keywords."""

    code: str = "server_error"
    status: int = 500
    dependency: str | None = None

    def __init_subclass__(cls, *, code: str | None = None, status: int | None = None,
                          dependency: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if status is not None:
            cls.status = status
        if dependency is not None:
            cls.dependency = dependency

    def __init__(self, description: str, *, dependency: str | None = None,
                 upstream_code: str | None = None, status: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.dependency = dependency or self.dependency
        self.upstream_code = upstream_code
        if status is not None:
            self.status = status

    def to_dict(self) -> ErrorBody:
        body: ErrorBody = {"error": self.code, "error_description": self.description}
        if self.dependency:
            body["dependency"] = self.dependency
        if self.upstream_code:
            body["upstream_code"] = self.upstream_code
        return body

    def __str__(self) -> str:
        where = f" [{self.dependency}]" if self.dependency else ""
        return f"{self.code}{where}: {self.description}"


class ConfigurationError(IIAError, code="invalid_configuration"):
    """A setting is missing or malformed; raised on construction, before any I/O."""


class DependencyError(IIAError, code="dependency_unavailable", status=503):
    """A dependency is down, sealed, or refused us. We fail closed and name it."""
