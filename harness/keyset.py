"""Rotating signing keys with a published JWKS (for the SPIFFE trust domain and the IdP).

Keys are generated in memory at run time, one per algorithm the set signs with (`algs`: ES256
by default; the IdP adds RS256 for ID tokens, OpenID Connect Discovery §3). `rotate()` (or
`tick()` once `rotation_period` has passed) retires the current keys and starts new ones; a
retired key stays in the JWKS for `retain` seconds (the longest lifetime of a token it signed),
so rotation never breaks a token still in use. Listeners hear about every change of the
published set.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from harness.listeners import Listeners

__all__ = ["ALGORITHMS", "RotatingKeySet", "SigningKey"]

ALGORITHMS = ("ES256", "RS256")  # what a key set can sign with (P-256; RSA 2048, RFC 7518 §3.3)


@dataclass
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    created_at: float
    retired_at: float | None = None
    alg: str = "ES256"

    @classmethod
    def generate(cls, now: float, alg: str = "ES256") -> SigningKey:
        if alg not in ALGORITHMS:
            raise ValueError(f"no signing keys for {alg!r} (one of {', '.join(ALGORITHMS)})")
        private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
            ec.generate_private_key(ec.SECP256R1()) if alg == "ES256"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return cls(kid=secrets.token_urlsafe(24), private_key=private_key, created_at=now,
                   alg=alg)

    def public_jwk(self, use: str) -> dict[str, Any]:
        public = self.private_key.public_key()
        jwk = json.loads(ECAlgorithm.to_jwk(public) if isinstance(public, ec.EllipticCurvePublicKey)
                         else RSAAlgorithm.to_jwk(public))
        jwk.update({"kid": self.kid, "use": use, "alg": self.alg})
        return jwk


class RotatingKeySet:
    def __init__(self, *, rotation_period: float, retain: float,
                 clock: Callable[[], float] = time.time, algs: tuple[str, ...] = ("ES256",)
                 ) -> None:
        if rotation_period <= 0 or retain <= 0:
            raise ValueError("rotation_period and retain must be positive")
        if not algs or len(set(algs)) != len(algs):
            raise ValueError("algs names each signing algorithm once")
        self.rotation_period = rotation_period
        self.retain = retain
        self.algs = algs
        self._clock = clock
        self._lock = threading.Lock()
        # oldest first; the last key of each algorithm is its current one
        self._keys: list[SigningKey] = [SigningKey.generate(clock(), alg) for alg in algs]
        self._listeners: Listeners[[]] = Listeners()

    @property
    def current(self) -> SigningKey:
        """The current key of the first algorithm (ES256 unless `algs` says otherwise)."""
        return self.current_for(self.algs[0])

    def current_for(self, alg: str) -> SigningKey:
        with self._lock:
            for key in reversed(self._keys):
                if key.alg == alg:
                    return key
        raise ValueError(f"this key set signs with {', '.join(self.algs)}, not {alg}")

    def _next_generation(self, now: float) -> None:
        """Retire each algorithm's current key and start a new one (the caller holds _lock)."""
        for key in self._keys:
            if key.retired_at is None:
                key.retired_at = now
        self._keys.extend(SigningKey.generate(now, alg) for alg in self.algs)

    def rotate(self) -> str:
        """Retire the current keys and sign with fresh ones from now on; returns the new kid
        (of the first algorithm)."""
        with self._lock:
            now = self._clock()
            self._next_generation(now)
            kid = self._keys[-len(self.algs)].kid
        self._notify()
        return kid

    def tick(self) -> bool:
        """Rotate when due and prune keys nothing can still need; True when the set changed."""
        changed = False
        with self._lock:
            now = self._clock()
            if now - self._keys[-1].created_at >= self.rotation_period:
                self._next_generation(now)
                changed = True
            keep = [k for k in self._keys if self._live(k, now)]
            if len(keep) != len(self._keys):
                self._keys = keep
                changed = True
        if changed:
            self._notify()
        return changed

    def _live(self, key: SigningKey, now: float) -> bool:
        return key.retired_at is None or key.retired_at + self.retain > now

    def live_keys(self) -> list[SigningKey]:
        with self._lock:
            now = self._clock()
            return [k for k in self._keys if self._live(k, now)]

    def jwks(self, use: str = "sig") -> dict[str, Any]:
        return {"keys": [k.public_jwk(use) for k in self.live_keys()]}

    def public_keys(self, alg: str = "ES256") -> dict[str, Any]:
        """kid -> public key of the live keys of `alg` (EC public keys for ES256)."""
        return {k.kid: k.private_key.public_key() for k in self.live_keys() if k.alg == alg}

    def sign(self, claims: Mapping[str, Any], *, typ: str = "JWT", key: SigningKey | None = None,
             headers: Mapping[str, Any] | None = None, alg: str | None = None) -> str:
        key = key or self.current_for(alg or self.algs[0])
        hdr: dict[str, Any] = {"kid": key.kid, "typ": typ}
        hdr.update(headers or {})
        return jwt.encode(dict(claims), key.private_key, algorithm=key.alg, headers=hdr)

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` whenever the published key set changes; returns the unsubscribe."""
        return self._listeners.add(listener)

    def _notify(self) -> None:
        self._listeners.notify()
