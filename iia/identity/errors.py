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


class WorkloadApiError(DependencyError, code="workload_api_error", dependency="spire"):
    """The SPIFFE Workload API (SPIRE agent) did not give us a JWT-SVID."""


class WorkloadApiUnavailableError(WorkloadApiError, code="workload_api_unavailable"):
    """The agent's socket does not answer."""


class WorkloadNotAttestedError(WorkloadApiError, code="workload_not_attested", status=403):
    """The agent attested this process and found no registration entry for it."""


class VaultError(DependencyError, code="vault_error", dependency="vault"):
    """Vault did not give us the client credential."""


class VaultUnavailableError(VaultError, code="vault_unavailable"):
    """Vault does not answer."""


class VaultSealedError(VaultError, code="vault_sealed"):
    """Vault answered that it is sealed."""


class VaultLoginRefusedError(VaultError, code="vault_login_refused", status=403):
    """Vault's JWT auth refused our JWT-SVID (wrong subject or audience, expired, unknown key)."""


class VaultPermissionDeniedError(VaultError, code="vault_permission_denied", status=403):
    """Vault's policy does not let this role read the secret."""


class VaultSecretMissingError(VaultError, code="vault_secret_missing"):
    """The secret path holds no client credential."""
