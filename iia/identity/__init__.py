"""The MCP server's secretless workload identity.

    SPIFFE Workload API --JWT-SVID--> Vault JWT auth --token--> kv-v2 --> Verify client credential

`WorkloadIdentity` ties the pieces together from `IdentitySettings`; `iia` imports nothing from
the lab harness, so the same code runs against a real SPIRE agent and a real Vault.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from iia.events import EventBus
from iia.identity.errors import (
    VaultError,
    VaultLoginRefusedError,
    VaultPermissionDeniedError,
    VaultSealedError,
    VaultSecretMissingError,
    VaultUnavailableError,
    WorkloadApiError,
    WorkloadApiUnavailableError,
    WorkloadNotAttestedError,
)
from iia.identity.settings import IdentitySettings, read_env_file
from iia.identity.svid import JwtSvidSource, Svid
from iia.identity.vault import ClientCredential, VaultCredentialSource

__all__ = [
    "ClientCredential",
    "IdentitySettings",
    "JwtSvidSource",
    "Svid",
    "VaultCredentialSource",
    "VaultError",
    "VaultLoginRefusedError",
    "VaultPermissionDeniedError",
    "VaultSealedError",
    "VaultSecretMissingError",
    "VaultUnavailableError",
    "WorkloadApiError",
    "WorkloadApiUnavailableError",
    "WorkloadIdentity",
    "WorkloadNotAttestedError",
    "read_env_file",
]

T = TypeVar("T")


class WorkloadIdentity:
    """JWT-SVIDs (for any audience) and the Vault-held client credential of this workload."""

    def __init__(self, settings: IdentitySettings, *, events: EventBus | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.events = events
        self.svids = JwtSvidSource(settings.spiffe_socket, spiffe_id=settings.spiffe_id,
                                   timeout=settings.timeout, events=events, clock=clock)
        self.vault = VaultCredentialSource(settings, self.svids, events=events, clock=clock)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, *, events: EventBus | None = None,
                 **overrides: object) -> WorkloadIdentity:
        return cls(IdentitySettings.from_env(env, **overrides), events=events)

    def svid(self, audience: str) -> Svid:
        """A JWT-SVID for `audience` (e.g. the IdP's issuer, for the actor token)."""
        return self.svids.get(audience)[0]

    def credential(self) -> ClientCredential:
        return self.vault.read()

    def with_credential(self, use: Callable[[ClientCredential], T]) -> T:
        return self.vault.with_credential(use)

    def close(self) -> None:
        self.svids.close()
