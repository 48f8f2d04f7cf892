"""The trust domain's JWT bundle as relying parties see it, kept across restarts of the agent.

A SPIRE server keeps its bundle in its datastore, so a restart does not take back the public
keys it published: an SVID signed before the restart validates until it expires. The stand-in
does the same with a file (`IIA_SPIRE_BUNDLE_FILE`): a JWKS of **public keys only** (never a
private key), written atomically on every change of the published set and read at start. The
new run signs with a key of its own; the keys of earlier runs stay published for as long as an
SVID they signed can live:

* a key retired before the restart: until `retired_at + retain` (written in the file);
* the key that was signing when the process died: its last SVID may have been issued just
  before, so until `start + retain` (`retain` = the SVID lifetime of the run that wrote it).

The file is a SPIFFE-bundle-like JWKS (RFC 7517 §5 lets a set carry other members):

    {"keys": [{kty, crv, x, y, kid, use: "jwt-svid", alg}],
     "spiffe_sequence": n, "retain": seconds, "retain_until": {kid: epoch seconds | null}}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from jwt.exceptions import InvalidKeyError

from harness.keyset import RotatingKeySet
from harness.listeners import Listeners

__all__ = ["BundleFileError", "EarlierKey", "TrustBundle"]

log = logging.getLogger(__name__)

_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class BundleFileError(ValueError):
    """The bundle file cannot be read as a bundle; the message names the file and why."""


@dataclass(frozen=True)
class EarlierKey:
    """A public key an earlier run published, kept until `until`."""

    kid: str
    jwk: dict[str, Any]
    public_key: ec.EllipticCurvePublicKey
    until: float


class TrustBundle:
    """This run's live keys (`keys`) plus the earlier runs' keys still within their retention;
    `on_change` hears of every change of that published set (rotation, pruning)."""

    def __init__(self, keys: RotatingKeySet, *, retain: float, path: Path | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.retain = retain
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._earlier: dict[str, EarlierKey] = {}
        self._sequence = 0
        self._listeners: Listeners[[]] = Listeners()
        if path is not None:
            self._earlier, self._sequence = self._read(path)
        keys.on_change(self._changed)
        if path is not None:
            self.write()

    # -- the published set --------------------------------------------------------------------

    def jwks(self, use: str = "jwt-svid") -> dict[str, Any]:
        own = self.keys.jwks(use)["keys"]
        with self._lock:
            earlier = [{**k.jwk, "use": use} for k in self._live_earlier()]
        return {"keys": own + earlier}

    def public_keys(self) -> dict[str, ec.EllipticCurvePublicKey]:
        with self._lock:
            earlier = {k.kid: k.public_key for k in self._live_earlier()}
        return {**earlier, **self.keys.public_keys()}

    def earlier_kids(self) -> list[str]:
        with self._lock:
            return [k.kid for k in self._live_earlier()]

    def _live_earlier(self) -> list[EarlierKey]:
        now = self._clock()
        return [k for k in self._earlier.values() if k.until > now]

    def on_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        return self._listeners.add(listener)

    def tick(self) -> bool:
        """Rotate this run's key when due, and drop keys nothing can still need (earlier runs'
        ones past their retention); True when the published set changed."""
        changed = self.keys.tick()  # on a change, _changed ran already
        with self._lock:
            now = self._clock()
            gone = [kid for kid, k in self._earlier.items() if k.until <= now]
            for kid in gone:
                del self._earlier[kid]
        if gone:
            self._changed()
        return changed or bool(gone)

    def _changed(self) -> None:
        if self.path is not None:
            self.write()
        self._listeners.notify()

    # -- the file -----------------------------------------------------------------------------

    def write(self) -> None:
        """Write the published set to the bundle file: a temporary file in the same directory,
        then renamed over the old one, so a reader (or a restart after kill -9) sees the old
        set or the new one, never half of one."""
        assert self.path is not None
        now = self._clock()
        own = self.keys.live_keys()
        with self._lock:
            self._sequence += 1
            earlier = self._live_earlier()
            keys = [k.public_jwk("jwt-svid") for k in own] + [k.jwk for k in earlier]
            doc = {
                "keys": keys,
                "spiffe_sequence": self._sequence,
                "retain": self.retain,
                "retain_until": {
                    **{k.kid: None if k.retired_at is None else k.retired_at + self.keys.retain
                       for k in own},
                    **{k.kid: k.until for k in earlier}},
                "written_at": now,
            }
        leaked = [k["kid"] for k in keys if _PRIVATE_MEMBERS & set(k)]
        if leaked:  # pragma: no cover - public_jwk never carries them; the file never will
            raise RuntimeError("refusing to write a private key to the bundle file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(doc, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)  # public keys: any relying party may read them
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _read(self, path: Path) -> tuple[dict[str, EarlierKey], int]:
        """The earlier runs' keys still within their retention, and the file's sequence."""
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return {}, 0
        except (OSError, ValueError) as exc:
            raise BundleFileError(f"the bundle file {path} cannot be read: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise BundleFileError(f"the bundle file {path} is not a JWKS (no \"keys\" list)")
        now = self._clock()
        retain = float(doc.get("retain", self.retain))
        until_by_kid = doc.get("retain_until") or {}
        earlier: dict[str, EarlierKey] = {}
        for jwk in doc["keys"]:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                raise BundleFileError(f"the bundle file {path} holds a key without a kid")
            if _PRIVATE_MEMBERS & set(jwk):
                raise BundleFileError(f"the bundle file {path} holds a private key "
                                      f"({jwk['kid']}); it must hold public keys only")
            until = until_by_kid.get(jwk["kid"])
            # signing when its run ended: its last SVID may be as young as now
            until = now + retain if until is None else float(until)
            if until <= now:
                continue
            try:
                key = ECAlgorithm.from_jwk(json.dumps(jwk))
            except (InvalidKeyError, ValueError) as exc:
                raise BundleFileError(f"the bundle file {path}: key {jwk['kid']} is not an "
                                      f"EC public key: {exc}") from exc
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise BundleFileError(f"the bundle file {path}: key {jwk['kid']} is not an "
                                      "EC public key")
            earlier[jwk["kid"]] = EarlierKey(jwk["kid"], dict(jwk), key, until)
        sequence = doc.get("spiffe_sequence", 0)
        if earlier:
            log.info("bundle %s: %d key(s) of earlier runs stay published", path, len(earlier))
        return earlier, sequence if isinstance(sequence, int) else 0
