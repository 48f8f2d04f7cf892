"""Rotating ES256 signing keys with a published JWKS (for the SPIFFE trust domain and the IdP).

Keys are generated in memory at run time. `rotate()` (or `tick()` once `rotation_period` has
passed) retires the current key and starts a new one; a retired key stays in the JWKS for
`retain` seconds (the longest lifetime of a token it signed), so rotation never breaks a token
still in use. Listeners hear about every change of the published set.
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
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from harness.listeners import Listeners

__all__ = ["RotatingKeySet", "SigningKey"]


@dataclass
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    created_at: float
    retired_at: float | None = None

    @classmethod
    def generate(cls, now: float) -> SigningKey:
        return cls(kid=secrets.token_urlsafe(24),
                   private_key=ec.generate_private_key(ec.SECP256R1()), created_at=now)

    def public_jwk(self, use: str) -> dict[str, Any]:
        jwk = json.loads(ECAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": use, "alg": "ES256"})
        return jwk


class RotatingKeySet:
    def __init__(self, *, rotation_period: float, retain: float,
                 clock: Callable[[], float] = time.time) -> None:
        if rotation_period <= 0 or retain <= 0:
            raise ValueError("rotation_period and retain must be positive")
        self.rotation_period = rotation_period
        self.retain = retain
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[SigningKey] = [SigningKey.generate(clock())]
        self._listeners: Listeners[[]] = Listeners()

    @property
    def current(self) -> SigningKey:
        with self._lock:
            return self._keys[-1]

    def rotate(self) -> str:
        """Retire the current key and sign with a fresh one from now on; returns the new kid."""
        with self._lock:
            now = self._clock()
            self._keys[-1].retired_at = now
            self._keys.append(SigningKey.generate(now))
            kid = self._keys[-1].kid
        self._notify()
        return kid

    def tick(self) -> bool:
        """Rotate when due and prune keys nothing can still need; True when the set changed."""
        changed = False
        with self._lock:
            now = self._clock()
            if now - self._keys[-1].created_at >= self.rotation_period:
                self._keys[-1].retired_at = now
                self._keys.append(SigningKey.generate(now))
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

    def public_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        return {k.kid: k.private_key.public_key() for k in self.live_keys()}

    def sign(self, claims: Mapping[str, Any], *, typ: str = "JWT", key: SigningKey | None = None,
             headers: Mapping[str, Any] | None = None) -> str:
        key = key or self.current
        hdr: dict[str, Any] = {"kid": key.kid, "typ": typ}
        hdr.update(headers or {})
        return jwt.encode(dict(claims), key.private_key, algorithm="ES256", headers=hdr)

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` whenever the published key set changes; returns the unsubscribe."""
        return self._listeners.add(listener)

    def _notify(self) -> None:
        self._listeners.notify()
