"""The JWT signing authority of the simulated trust domain (SPIRE server's JWT key manager).

JWT-SVIDs follow the SPIFFE JWT-SVID specification: JWS compact form, ES256, a `kid` naming the
signing key, `typ: JWT`, and claims `sub` (the SPIFFE ID), `aud` (the requested audiences),
`exp`, `iat` and `iss` (the OIDC discovery issuer, as SPIRE sets when `jwt_issuer` is configured).

Signing keys rotate every `rotation_period` seconds. A retired key stays in the bundle until the
last SVID it signed has expired (retirement time + SVID TTL), so rotation never invalidates a
token that is still in use. Private keys exist only in memory and die with the process; with a
`bundle_file`, the public keys it published outlive it (`harness.spire.bundle`), so a restart
does not invalidate the SVIDs issued before it either.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from harness.keyset import RotatingKeySet
from harness.spire.bundle import TrustBundle

__all__ = ["JwtAuthority"]


class JwtAuthority:
    """Signs JWT-SVIDs for one trust domain; `keys` publishes what verifies them."""

    def __init__(
        self,
        trust_domain: str,
        issuer: str,
        *,
        svid_ttl: float = 300.0,
        rotation_period: float = 3600.0,
        clock: Callable[[], float] = time.time,
        bundle_file: Path | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self.issuer = issuer
        self.svid_ttl = svid_ttl
        self.keys = RotatingKeySet(rotation_period=rotation_period, retain=svid_ttl, clock=clock)
        # what relying parties are given: these keys plus earlier runs' (with a bundle file)
        self.bundle = TrustBundle(self.keys, retain=svid_ttl, path=bundle_file, clock=clock)
        self._clock = clock
        self._lock = threading.Lock()
        self.svids_issued = 0

    def sign_svid(self, spiffe_id: str, audiences: Iterable[str]) -> str:
        """Issue a JWT-SVID for `spiffe_id` with the requested audiences and the configured TTL."""
        now = int(self._clock())
        aud = sorted(set(audiences))
        claims = {
            "sub": spiffe_id,
            "aud": aud if len(aud) != 1 else aud[0],
            "iat": now,
            "exp": now + int(self.svid_ttl),
            "iss": self.issuer,
        }
        token = self.keys.sign(claims)
        with self._lock:
            self.svids_issued += 1
        return token
