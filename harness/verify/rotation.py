"""The rotating client secret of the Verify API client `iia-mcp-server`, kept in Vault.

This models IBM Verify's Vault secrets engine: the secret lives only in Vault (kv-v2
`ibm-verify/mcp-server`, fields `client_id`, `client_secret`), and every successful use rotates
it: Verify writes a fresh secret to Vault at once. The secret just used stays valid for a short
grace window (default 30 s) so that concurrent calls that read it before the rotation are not
serialized behind each other; after that it is stale and client authentication fails with
`invalid_client`. Only SHA-256 digests of secrets are kept here.

`rotate()` is the operator's rotation (the lab's `POST /lab/credential/rotate`, after Vault lost
its memory): a fresh secret goes to Vault and the previous one is refused at once. All Verify
needs of Vault is to write that one kv-v2 path (`create` and `update` on
`<mount>/data/<path>`, see `harness.openbao.create_rotator_token`); it never reads it back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import hvac
import hvac.exceptions
import requests

from harness.errors import HarnessError
from harness.expiring import ExpiringSet

__all__ = ["CredentialStoreError", "RotatingClientSecret", "RotationStats"]


class CredentialStoreError(HarnessError):
    """Vault did not take the new secret (unreachable, sealed, or it refused the token); the
    message names Vault and why. The secret that was current stays current."""


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass
class RotationStats:
    rotations: int = 0
    accepted_in_grace: int = 0
    refused: int = 0


class RotatingClientSecret:
    def __init__(
        self,
        vault: hvac.Client,
        *,
        client_id: str,
        kv_mount: str,
        path: str,
        grace_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.kv_mount = kv_mount
        self.path = path
        self.grace_seconds = grace_seconds
        self._vault = vault
        self._clock = clock
        self._lock = threading.Lock()
        self._current: bytes = b""
        self._used = ExpiringSet(clock)  # digests of secrets in their grace period
        self.version = 0
        self.stats = RotationStats()

    def initialize(self) -> None:
        """Write the first secret (called once the kv mount exists)."""
        with self._lock:
            self._write_new_secret()

    def rotate(self) -> int:
        """Write a fresh secret to Vault now and refuse the previous one from now on (no grace:
        whoever needs the secret reads it from Vault); returns the new kv-v2 version. Raises
        CredentialStoreError, with nothing changed, when Vault does not take it."""
        with self._lock:
            self._write_new_secret()
            self.stats.rotations += 1
            return self.version

    @property
    def location(self) -> str:
        """Where the secret lives: the kv-v2 data path in Vault."""
        return f"{self.kv_mount}/data/{self.path}"

    def _write_new_secret(self) -> None:
        secret = secrets.token_urlsafe(32)
        try:
            resp = self._vault.secrets.kv.v2.create_or_update_secret(
                path=self.path, mount_point=self.kv_mount,
                secret={"client_id": self.client_id, "client_secret": secret})
        except hvac.exceptions.VaultError as exc:
            raise CredentialStoreError(
                f"Vault at {self._vault.url} refused the new secret of {self.client_id} at "
                f"{self.location}: {type(exc).__name__}: {exc}") from exc
        except requests.RequestException as exc:
            raise CredentialStoreError(
                f"Vault at {self._vault.url} is unreachable; the secret of {self.client_id} "
                f"was not rotated: {type(exc).__name__}") from exc
        self._current = _digest(secret)
        self.version = int(resp["data"]["version"])

    def authenticate(self, client_secret: str) -> bool:
        """True when `client_secret` is the current secret (which then rotates) or a secret used
        less than `grace_seconds` ago. Anything else is stale or wrong."""
        presented = _digest(client_secret)
        with self._lock:
            now = self._clock()
            if self._current and hmac.compare_digest(presented, self._current):
                self._used.add(self._current, now + self.grace_seconds)
                self._write_new_secret()
                self.stats.rotations += 1
                return True
            # A dict lookup by SHA-256 digest: what an attacker could learn from its timing is
            # about a hash of a random secret, which is nothing.
            if presented in self._used:
                self.stats.accepted_in_grace += 1
                return True
            self.stats.refused += 1
            return False
