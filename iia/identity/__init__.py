"""The MCP server's secretless workload identity.

    SPIFFE Workload API --JWT-SVID--> Vault JWT auth --token--> kv-v2 --> Verify client credential

`WorkloadIdentity` ties the pieces together from `IdentitySettings`; `iia` imports nothing from
the lab harness, so the same code runs against a real SPIRE agent and a real Vault.

`WorkloadIdentity.established(audience)` is step 3 of the chain (docs/architecture.md §2): it
gets the JWT-SVID *and* reads the Vault-held credential before anyone is asked to approve
anything, so a dependency that is down fails the call first. Inside the block, the credential
it read serves the block's first `with_credential` use, so establishing costs no extra Vault read.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    "Workload",
    "WorkloadApiError",
    "WorkloadApiUnavailableError",
    "WorkloadIdentity",
    "WorkloadNotAttestedError",
    "read_env_file",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    """Who this workload is for one tool call: its JWT-SVID for the IdP (the actor token), the
    version of the client credential read from Vault (never the secret itself), and the
    milliseconds each took."""

    svid: Svid
    credential_version: int
    svid_ms: float = 0.0
    vault_ms: float = 0.0

    @property
    def spiffe_id(self) -> str:
        return self.svid.spiffe_id


class _Held:
    """The credential `owner` read while establishing, until its first use takes it."""

    __slots__ = ("credential", "owner")

    def __init__(self, owner: WorkloadIdentity, credential: ClientCredential) -> None:
        self.owner = owner
        self.credential: ClientCredential | None = credential

    def take(self, owner: WorkloadIdentity) -> ClientCredential | None:
        if owner is not self.owner:  # another identity's credential is not ours to use
            return None
        credential, self.credential = self.credential, None
        return credential


# per context (a tool call runs in one worker thread, with its own copy of the context)
_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("iia_held_credential",
                                                                    default=None)


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
        """Call `use` with the client credential: inside `established`, the first use takes the
        credential read there; every other use reads it from Vault (it rotates after each use).
        A stale one (`invalid_client`) is read again and retried once (`vault:rotation_retry`)."""
        held = _HELD.get()
        return self.vault.with_credential(use, first=held.take(self) if held else None)

    @contextlib.contextmanager
    def established(self, audience: str) -> Iterator[Workload]:
        """Step 3 of a tool call: a JWT-SVID for `audience` (SPIFFE Workload API), then the
        client credential (Vault JWT login when the token is cold, kv-v2 read). Raises the
        typed error naming SPIRE or Vault; nothing else has happened by then."""
        started = time.perf_counter()
        svid = self.svid(audience)
        fetched = time.perf_counter()
        credential = self.vault.read()
        workload = Workload(svid=svid, credential_version=credential.version,
                            svid_ms=round((fetched - started) * 1000, 2),
                            vault_ms=round((time.perf_counter() - fetched) * 1000, 2))
        token = _HELD.set(_Held(self, credential))
        try:
            yield workload
        finally:
            _HELD.reset(token)

    def close(self) -> None:
        self.svids.close()
        self.vault.close()
