"""Typed failures of the workload-identity chain. Each names its dependency and fails closed:
there is no fallback credential anywhere in `iia`."""

from __future__ import annotations

from iia.errors import DependencyError

__all__ = [
    "VaultError",
    "VaultLoginRefusedError",
    "VaultPermissionDeniedError",
    "VaultSealedError",
    "VaultSecretMissingError",
    "VaultUnavailableError",
    "WorkloadApiError",
    "WorkloadApiUnavailableError",
    "WorkloadNotAttestedError",
]


class WorkloadApiError(DependencyError):
    """The SPIFFE Workload API (SPIRE agent) did not give us a JWT-SVID."""

    code = "workload_api_error"

    def __init__(self, description: str, *, upstream_code: str | None = None) -> None:
        super().__init__(description, dependency="spire", upstream_code=upstream_code)


class WorkloadApiUnavailableError(WorkloadApiError):
    code = "workload_api_unavailable"


class WorkloadNotAttestedError(WorkloadApiError):
    """The agent attested this process and found no registration entry for it."""

    code = "workload_not_attested"
    status = 403


class VaultError(DependencyError):
    code = "vault_error"

    def __init__(self, description: str, *, upstream_code: str | None = None) -> None:
        super().__init__(description, dependency="vault", upstream_code=upstream_code)


class VaultUnavailableError(VaultError):
    code = "vault_unavailable"


class VaultSealedError(VaultError):
    code = "vault_sealed"


class VaultLoginRefusedError(VaultError):
    """Vault's JWT auth refused our JWT-SVID (wrong subject or audience, expired, unknown key)."""

    code = "vault_login_refused"
    status = 403


class VaultPermissionDeniedError(VaultError):
    code = "vault_permission_denied"
    status = 403


class VaultSecretMissingError(VaultError):
    code = "vault_secret_missing"
