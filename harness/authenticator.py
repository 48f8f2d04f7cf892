"""A software authenticator: the demo users' phones, as a WebAuthn authenticator in Python.

A simulated product, like the scripted model: it does what a platform authenticator or a phone
does for `navigator.credentials.create()` / `.get()` (WebAuthn Level 3 §6.3), with ES256 keys
(`cryptography`), CBOR (`cbor2`), "none" attestation and authenticator data whose flags say the
user was present and verified (UP, UV). It holds one passkey per (RP ID, user); the private keys
never leave it. What a phone adds and this cannot: the private key is a file on disk (0600,
under the lab directory), so anyone who can read that file can approve as the user; there is no
finger or face behind the UV flag.

The lab creates it when it starts (`provision`: one registration ceremony per demo user at the
tenant's relying party) and saves it, when asked, to `<lab dir>/authenticator.json`. `iia-lab
token | approve | deny`, the notebooks' phone card and the scripted phone sign with it; a process
finds the one of its lab with `for_origin` (an in-process lab registers it, a supervised lab
wrote the file).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["FILE_NAME", "AuthenticatorError", "Passkey", "SoftwareAuthenticator", "b64url",
           "enroll_demo_users", "for_origin", "from_b64url", "register_file", "register_local",
           "unregister_local"]

FLAG_UP = 0x01
FLAG_UV = 0x04
FLAG_AT = 0x40
AAGUID = bytes(16)  # "none" attestation: no model to name
COSE_ES256 = -7
FILE_NAME = "authenticator.json"


class AuthenticatorError(RuntimeError):
    """The authenticator cannot answer: no passkey for that RP and user, or a bad request."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def from_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Passkey:
    credential_id: bytes
    rp_id: str
    user_handle: bytes
    user_name: str
    private_key: ec.EllipticCurvePrivateKey
    sign_count: int = 0

    def cose_public_key(self) -> bytes:
        numbers = self.private_key.public_key().public_numbers()
        return cbor2.dumps({1: 2, 3: COSE_ES256, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                            -3: numbers.y.to_bytes(32, "big")})

    def to_json(self) -> dict[str, Any]:
        pem = self.private_key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode()
        return {"credential_id": b64url(self.credential_id), "rp_id": self.rp_id,
                "user_handle": b64url(self.user_handle), "user_name": self.user_name,
                "sign_count": self.sign_count, "private_key": pem}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Passkey:
        key = serialization.load_pem_private_key(str(raw["private_key"]).encode(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise AuthenticatorError("a passkey in the file is not an EC key")
        return cls(credential_id=from_b64url(raw["credential_id"]), rp_id=raw["rp_id"],
                   user_handle=from_b64url(raw["user_handle"]), user_name=raw["user_name"],
                   private_key=key, sign_count=int(raw["sign_count"]))


def _client_data(kind: str, challenge: str, origin: str) -> bytes:
    """WebAuthn §5.8.1 CollectedClientData, serialized as a browser does."""
    return json.dumps({"type": kind, "challenge": challenge, "origin": origin,
                       "crossOrigin": False}, separators=(",", ":")).encode()


class SoftwareAuthenticator:
    """Passkeys in memory; `path` (optional) is the file they are saved to and signed from:
    every signature there reads the file, counts and writes it back under a lock, so several
    processes of one lab share each passkey's sign counter."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._passkeys: list[Passkey] = []

    # -- the file ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path) -> SoftwareAuthenticator:
        auth = cls(path)
        auth._read()
        return auth

    def _read(self) -> None:
        assert self.path is not None
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise AuthenticatorError(f"cannot read the software authenticator at {self.path}: "
                                     f"{exc}") from exc
        self._passkeys = [Passkey.from_json(raw) for raw in doc.get("passkeys", [])]

    def save(self, path: Path | None = None) -> Path:
        """Write every passkey to `path` (default: self.path), mode 0600, atomically."""
        target = path or self.path
        if target is None:
            raise AuthenticatorError("no file to save the authenticator to")
        self.path = target
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"version": 1, "passkeys": [p.to_json() for p in self._passkeys]},
                      handle)
        os.replace(temporary, target)
        return target

    @contextlib.contextmanager
    def _shared(self) -> Iterator[None]:
        """This process's lock, and with a file the file's: read, sign, write back."""
        with self._lock:
            if self.path is None:
                yield
                return
            lock_path = self.path.with_name(self.path.name + ".lock")
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
                if self.path.exists():
                    self._read()
                yield
                self.save()
            finally:
                os.close(descriptor)

    # -- what the authenticator holds ----------------------------------------------------------

    def passkeys(self, rp_id: str | None = None) -> list[Passkey]:
        with self._lock:
            return [p for p in self._passkeys if rp_id is None or p.rp_id == rp_id]

    def has(self, rp_id: str, user_name: str) -> bool:
        return any(p.user_name == user_name for p in self.passkeys(rp_id))

    # -- navigator.credentials.create() ---------------------------------------------------------

    def create(self, options: Mapping[str, Any], origin: str) -> dict[str, Any]:
        """A registration response (RegistrationResponseJSON) for creation options as the
        relying party sent them (PublicKeyCredentialCreationOptionsJSON): a new ES256 key."""
        if not any(p.get("alg") == COSE_ES256 for p in options.get("pubKeyCredParams", [])):
            raise AuthenticatorError("the relying party does not accept ES256")
        rp_id = str(options["rp"]["id"])
        user = options["user"]
        passkey = Passkey(credential_id=os.urandom(32), rp_id=rp_id,
                          user_handle=from_b64url(user["id"]), user_name=str(user["name"]),
                          private_key=ec.generate_private_key(ec.SECP256R1()))
        public = passkey.cose_public_key()
        attested = (AAGUID + struct.pack(">H", len(passkey.credential_id))
                    + passkey.credential_id + public)
        auth_data = (hashlib.sha256(rp_id.encode()).digest()
                     + bytes([FLAG_UP | FLAG_UV | FLAG_AT]) + struct.pack(">I", 0) + attested)
        attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
        client_data = _client_data("webauthn.create", str(options["challenge"]), origin)
        with self._shared():
            # one passkey per user and RP: a new one replaces the old (as a phone's would)
            self._passkeys = [p for p in self._passkeys
                              if not (p.rp_id == rp_id and p.user_handle == passkey.user_handle)]
            self._passkeys.append(passkey)
        cid = b64url(passkey.credential_id)
        return {"id": cid, "rawId": cid, "type": "public-key",
                "response": {"clientDataJSON": b64url(client_data),
                             "attestationObject": b64url(attestation),
                             "transports": ["internal"]},
                "clientExtensionResults": {}, "authenticatorAttachment": "platform"}

    # -- navigator.credentials.get() ------------------------------------------------------------

    def get(self, options: Mapping[str, Any], origin: str, *, user_name: str | None = None,
            user_verified: bool = True, sign_count: int | None = None) -> dict[str, Any]:
        """An assertion (AuthenticationResponseJSON) for request options as the relying party
        sent them (PublicKeyCredentialRequestOptionsJSON), by the passkey of `user_name` (or
        the only one allowed). `user_verified=False` and `sign_count` let a test forge what a
        broken or cloned authenticator would send."""
        rp_id = str(options["rpId"])
        allowed = {from_b64url(c["id"]) for c in options.get("allowCredentials") or []}
        with self._shared():
            candidates = [p for p in self._passkeys if p.rp_id == rp_id
                          and (not allowed or p.credential_id in allowed)
                          and (user_name is None or p.user_name == user_name)]
            if len(candidates) != 1:
                who = user_name or "the user"
                raise AuthenticatorError(f"no single passkey of {who} for {rp_id} here "
                                         f"({len(candidates)} match)")
            passkey = candidates[0]
            passkey.sign_count += 1
            count = passkey.sign_count if sign_count is None else sign_count
        flags = FLAG_UP | (FLAG_UV if user_verified else 0)
        auth_data = (hashlib.sha256(rp_id.encode()).digest() + bytes([flags])
                     + struct.pack(">I", count))
        client_data = _client_data("webauthn.get", str(options["challenge"]), origin)
        signature = passkey.private_key.sign(
            auth_data + hashlib.sha256(client_data).digest(), ec.ECDSA(hashes.SHA256()))
        cid = b64url(passkey.credential_id)
        return {"id": cid, "rawId": cid, "type": "public-key",
                "response": {"clientDataJSON": b64url(client_data),
                             "authenticatorData": b64url(auth_data),
                             "signature": b64url(signature),
                             "userHandle": b64url(passkey.user_handle)},
                "clientExtensionResults": {}, "authenticatorAttachment": "platform"}


# -- finding the lab's authenticator ------------------------------------------------------------

_LOCAL: dict[str, SoftwareAuthenticator] = {}
_LOCAL_LOCK = threading.Lock()


def register_local(origin: str, authenticator: SoftwareAuthenticator) -> None:
    """An in-process lab's authenticator, found by `for_origin` in this process."""
    with _LOCAL_LOCK:
        _LOCAL[origin.rstrip("/")] = authenticator


def unregister_local(origin: str) -> None:
    with _LOCAL_LOCK:
        _LOCAL.pop(origin.rstrip("/"), None)
        _FILES.pop(origin.rstrip("/"), None)


_FILES: dict[str, Path] = {}


def register_file(origin: str, path: Path) -> None:
    """A supervised lab started by this process (a demo, a notebook) in its own directory:
    where its Verify saves the authenticator, found by `for_origin` in this process."""
    with _LOCAL_LOCK:
        _FILES[origin.rstrip("/")] = path


def for_origin(origin: str, lab_directory: Path | None = None) -> SoftwareAuthenticator:
    """The software authenticator of the lab whose Verify pages are at `origin`: an in-process
    lab's, else the file of the supervised lab (`<lab dir>/authenticator.json`)."""
    with _LOCAL_LOCK:
        local = _LOCAL.get(origin.rstrip("/"))
        registered = _FILES.get(origin.rstrip("/"))
    if local is not None:
        return local
    if registered is not None and lab_directory is None:
        lab_directory = registered.parent
    if lab_directory is None:
        from harness.paths import lab_dir

        lab_directory = lab_dir()
    path = lab_directory / FILE_NAME
    if not path.is_file():
        raise AuthenticatorError(f"no software authenticator for {origin}: {path} does not "
                                 "exist (is the lab running?)")
    return SoftwareAuthenticator.load(path)


def enroll_demo_users(tenant: Any, authenticator: SoftwareAuthenticator) -> int:
    """What the lab does when it starts: one WebAuthn registration ceremony per active demo
    user at `tenant`'s relying party (harness.verify.VerifyTenant.passkeys), answered by this
    authenticator, which keeps the private keys; the tenant keeps the public keys. Returns how
    many passkeys were enrolled."""
    rp = tenant.passkeys
    enrolled = 0
    for user in tenant.directory.users():
        if not user.active or user.id is None:
            continue
        started = rp.registration_options(user.id, user.user_name or "",
                                          user.display_name or user.user_name or "")
        rp.register(started["ceremony"], authenticator.create(started["publicKey"], rp.origin))
        enrolled += 1
    return enrolled
