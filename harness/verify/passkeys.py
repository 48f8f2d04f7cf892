"""The tenant's WebAuthn relying party (WebAuthn Level 3, on py_webauthn): passkey enrollment,
sign-in and the passkey-signed answer to a push.

* RP ID `localhost`, origin `http://localhost:PORT` (the Verify port): WebAuthn refuses IP
  addresses, so the user-facing pages are served at that name (`user_facing_url`).
* Registration (§7.1) and authentication (§7.2) ceremonies require user verification; the
  credential (id, COSE public key, sign counter, user) is in the tenant's `PasskeyStore`; the
  private key exists only in the authenticator.
* A ceremony's challenge is random, single-use and short-lived; a push's is not random but
  **binds the push**: `push_challenge` is SHA-256 over the canonical JSON of the push's
  auth_req_id, binding message, authorization_details and the answer (approve or deny), so an
  assertion answers this push, this way, and nothing else.
* `verify_assertion` is where every assertion is judged: the credential is known and the
  expected user's, then signature, challenge, origin, RP ID, UV flag and sign counter (py_webauthn's
  checks, with this tenant's expectations), and the counter moves only forward, once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import parse_authenticator_data
from webauthn.helpers.exceptions import (
    InvalidAuthenticationResponse,
    InvalidRegistrationResponse,
)
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from harness.authenticator import b64url, from_b64url
from harness.origins import RP_ID, user_facing_url

__all__ = ["RP_ID", "AssertionRequired", "InvalidAssertion", "PasskeyCredential",
           "PasskeyError", "PasskeyStore", "RelyingParty", "Verified", "answer_binding_view",
           "canonical_json", "challenge_binding_view", "claimed_challenge", "claimed_origin",
           "credential_digest", "push_challenge", "signed_rp_id", "user_facing_url"]

RP_NAME = "IBM Security Verify (lab)"
CEREMONY_TTL = 300.0


class PasskeyError(Exception):
    """A refused ceremony: `error` and `status` are what goes on the wire."""

    error = "invalid_assertion"
    status = 401

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class AssertionRequired(PasskeyError):
    """No assertion at all (or not one in WebAuthn's JSON form)."""

    error = "assertion_required"
    status = 400


class InvalidAssertion(PasskeyError):
    """An assertion that does not verify, or not for this user, push or ceremony."""


# -- the challenge that binds a push -------------------------------------------------------------

def canonical_json(value: Any) -> bytes:
    """One serialization for hashing: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def push_challenge(auth_req_id: str, binding_message: str,
                   authorization_details: Sequence[Mapping[str, Any]], approve: bool) -> bytes:
    """The WebAuthn challenge of the answer to one push: SHA-256 of the canonical JSON of what
    the push is (its auth_req_id, binding message, authorization_details) and of the answer."""
    return hashlib.sha256(canonical_json({
        "auth_req_id": auth_req_id, "binding_message": binding_message,
        "authorization_details": list(authorization_details),
        "answer": "approve" if approve else "deny"})).digest()


def _client_data(credential: Mapping[str, Any]) -> dict[str, Any]:
    try:
        parsed: dict[str, Any] = json.loads(from_b64url(
            str(credential["response"]["clientDataJSON"])))
        return parsed
    except (KeyError, TypeError, ValueError) as exc:
        raise AssertionRequired("the assertion has no readable clientDataJSON") from exc


def claimed_challenge(credential: Mapping[str, Any]) -> bytes:
    """The challenge the client says it signed (clientDataJSON.challenge): to show, not trust."""
    return from_b64url(str(_client_data(credential).get("challenge", "")))


def claimed_origin(credential: Mapping[str, Any]) -> str:
    """The origin the client says it ran in (clientDataJSON.origin): to show, not trust."""
    return str(_client_data(credential).get("origin", ""))


def signed_rp_id(credential: Mapping[str, Any], candidates: Sequence[str]) -> str | None:
    """Which of `candidates` the authenticator data's rpIdHash is (None: none of them)."""
    try:
        data = parse_authenticator_data(from_b64url(
            str(credential["response"]["authenticatorData"])))
    except (KeyError, TypeError, ValueError):
        return None
    return next((c for c in candidates
                 if hashlib.sha256(c.encode()).digest() == data.rp_id_hash), None)


def credential_digest(credential_id: bytes) -> str:
    """What events and the audit trail name a passkey by: base64url SHA-256 of its id, cut."""
    return b64url(hashlib.sha256(credential_id).digest())[:22]


def challenge_binding_view(push: Any, credential: Mapping[str, Any],
                           approve: bool = True) -> dict[str, Any]:
    """Notebook 03's "challenge binding in one decoded view": what the push is, the digest the
    tenant expects as challenge, and the challenge the authenticator signed (clientDataJSON).
    `push` is a harness.verify.approvals.PushRequest; the auth_req_id is shown cut (it is the
    requesting client's handle)."""
    expected = push_challenge(push.auth_req_id, push.binding_message,
                              push.authorization_details, approve)
    client_data = _client_data(credential)
    return {"push_id": push.id, "auth_req_id": push.auth_req_id[:6] + "…",
            "binding_message": push.binding_message,
            "authorization_details": push.authorization_details,
            "answer": "approve" if approve else "deny",
            "digest": b64url(expected),
            "clientDataJSON": client_data,
            "clientDataJSON.challenge": client_data.get("challenge"),
            "bound": client_data.get("challenge") == b64url(expected)}


def answer_binding_view(push: Mapping[str, Any], signed: Mapping[str, Any]) -> dict[str, Any]:
    """The same binding seen from the phone, over HTTP (notebook 03): the push as the phone
    lists it (binding_message, and authorization_details or the phone card's `summary`), the
    challenge the tenant asked the authenticator to sign (options.publicKey.challenge: the
    push_challenge digest, computed by the tenant from the auth_req_id the phone never sees),
    and the challenge in the assertion's clientDataJSON. `signed` is what
    harness.lab_client.PhoneApi kept of its answer. "bound": the two challenges are equal;
    "tenant": the tenant's verdict on the signed answer (it checked the same equality)."""
    client_data: dict[str, Any] = json.loads(from_b64url(str(signed["clientDataJSON"])))
    summary = push.get("summary") or "; ".join(
        str(d.get("summary", d.get("type"))) for d in push.get("authorization_details") or [])
    return {"push_id": push["id"], "binding_message": push["binding_message"],
            "authorization_details": summary, "answer": signed["answer"],
            "challenge asked (options.publicKey.challenge)": signed["challenge"],
            "challenge signed (clientDataJSON.challenge)": client_data.get("challenge"),
            "clientDataJSON.type": client_data.get("type"),
            "clientDataJSON.origin": client_data.get("origin"),
            "bound": client_data.get("challenge") == signed["challenge"],
            "tenant": "accepted" if signed["status"] == 200 else f"refused ({signed['status']})"}


# -- the store -----------------------------------------------------------------------------------

@dataclass
class PasskeyCredential:
    credential_id: bytes
    public_key: bytes  # COSE
    sign_count: int
    user_id: str
    created_at: float
    transports: tuple[str, ...] = ()
    last_used_at: float | None = None

    @property
    def digest(self) -> str:
        return credential_digest(self.credential_id)


class PasskeyStore:
    """The tenant's registered passkeys (public keys and sign counters only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[bytes, PasskeyCredential] = {}

    def add(self, credential: PasskeyCredential) -> None:
        with self._lock:
            if credential.credential_id in self._items:
                raise InvalidAssertion("this credential is already registered")
            self._items[credential.credential_id] = credential

    def get(self, credential_id: bytes) -> PasskeyCredential | None:
        with self._lock:
            return self._items.get(credential_id)

    def of_user(self, user_id: str) -> list[PasskeyCredential]:
        with self._lock:
            return [c for c in self._items.values() if c.user_id == user_id]

    def advance(self, credential_id: bytes, seen: int, new: int, at: float) -> bool:
        """Move the counter from `seen` to `new`; False if another assertion moved it first."""
        with self._lock:
            item = self._items.get(credential_id)
            if item is None or item.sign_count != seen:
                return False
            item.sign_count, item.last_used_at = new, at
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass(frozen=True)
class Verified:
    user_id: str
    credential: PasskeyCredential
    user_verified: bool


@dataclass
class _Ceremony:
    challenge: bytes
    kind: str  # registration | authentication
    user_id: str | None
    expires_at: float


class RelyingParty:
    def __init__(self, *, origin: str, store: PasskeyStore | None = None, rp_id: str = RP_ID,
                 clock: Callable[[], float] = time.time) -> None:
        self.origin = origin.rstrip("/")
        self.rp_id = rp_id
        self.store = store or PasskeyStore()
        self._clock = clock
        self._lock = threading.Lock()
        self._ceremonies: dict[str, _Ceremony] = {}

    # -- ceremonies' challenges -----------------------------------------------------------------

    def _begin(self, kind: str, user_id: str | None) -> tuple[str, bytes]:
        ceremony, challenge = secrets.token_urlsafe(16), secrets.token_bytes(32)
        now = self._clock()
        with self._lock:
            self._ceremonies = {k: c for k, c in self._ceremonies.items() if c.expires_at > now}
            self._ceremonies[ceremony] = _Ceremony(challenge, kind, user_id,
                                                   now + CEREMONY_TTL)
        return ceremony, challenge

    def _spend(self, ceremony: str, kind: str) -> _Ceremony:
        """A ceremony's challenge is good for one response, before it expires."""
        with self._lock:
            found = self._ceremonies.pop(ceremony, None)
        if found is None or found.kind != kind or found.expires_at <= self._clock():
            raise InvalidAssertion(f"no {kind} ceremony {ceremony!r} is waiting (unknown, "
                                   "already answered or expired): start again")
        return found

    # -- registration (WebAuthn §7.1) -----------------------------------------------------------

    def registration_options(self, user_id: str, user_name: str,
                             display_name: str) -> dict[str, Any]:
        ceremony, challenge = self._begin("registration", user_id)
        options = generate_registration_options(
            rp_id=self.rp_id, rp_name=RP_NAME, user_name=user_name, user_id=user_id.encode(),
            user_display_name=display_name, challenge=challenge,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                user_verification=UserVerificationRequirement.REQUIRED),
            exclude_credentials=[PublicKeyCredentialDescriptor(id=c.credential_id)
                                 for c in self.store.of_user(user_id)])
        return {"ceremony": ceremony, "publicKey": json.loads(options_to_json(options))}

    def register(self, ceremony: str, credential: Mapping[str, Any]) -> PasskeyCredential:
        """Verify a registration response (challenge, origin, RP ID, UP and UV) and store the
        credential for the ceremony's user."""
        started = self._spend(ceremony, "registration")
        assert started.user_id is not None
        try:
            verified = verify_registration_response(
                credential=dict(credential), expected_challenge=started.challenge,
                expected_rp_id=self.rp_id, expected_origin=self.origin,
                require_user_verification=True)
        except (InvalidRegistrationResponse, KeyError, TypeError, ValueError) as exc:
            raise InvalidAssertion(f"the registration does not verify: {exc}") from exc
        transports = credential.get("response", {}).get("transports") or []
        stored = PasskeyCredential(credential_id=verified.credential_id,
                                   public_key=verified.credential_public_key,
                                   sign_count=verified.sign_count, user_id=started.user_id,
                                   created_at=self._clock(),
                                   transports=tuple(str(t) for t in transports))
        self.store.add(stored)
        return stored

    # -- authentication (WebAuthn §7.2) ---------------------------------------------------------

    def authentication_options(self, user_id: str | None = None) -> dict[str, Any]:
        """Sign-in: a fresh challenge; without a user, any of this RP's discoverable
        passkeys may answer (the passkey says who the user is)."""
        ceremony, challenge = self._begin("authentication", user_id)
        return {"ceremony": ceremony,
                "publicKey": self._request_options(challenge, user_id)}

    def _request_options(self, challenge: bytes, user_id: str | None) -> dict[str, Any]:
        allow = ([PublicKeyCredentialDescriptor(id=c.credential_id)
                  for c in self.store.of_user(user_id)] if user_id else None)
        options = generate_authentication_options(
            rp_id=self.rp_id, challenge=challenge, allow_credentials=allow,
            user_verification=UserVerificationRequirement.REQUIRED)
        parsed: dict[str, Any] = json.loads(options_to_json(options))
        return parsed

    def sign_in(self, ceremony: str, credential: Mapping[str, Any] | None) -> Verified:
        """The passkey answering a sign-in ceremony: its user."""
        if not credential:
            raise AssertionRequired("sign in with your passkey: no assertion was sent")
        started = self._spend(ceremony, "authentication")
        return self.verify_assertion(credential, expected_challenge=started.challenge,
                                     user_id=started.user_id)

    def push_options(self, push: Any, approve: bool) -> dict[str, Any]:
        """The request options of the answer to `push` (a PushRequest): its challenge binds
        the push and the answer; the user's own passkeys are the allowed ones."""
        challenge = push_challenge(push.auth_req_id, push.binding_message,
                                   push.authorization_details, approve)
        return {"publicKey": self._request_options(challenge, push.user_id)}

    def verify_push_answer(self, push: Any, approve: bool,
                           credential: Mapping[str, Any] | None) -> Verified:
        """An assertion answering `push` with `approve`, by the push's user."""
        if not credential:
            raise AssertionRequired("approve or deny with your passkey: no assertion was sent")
        return self.verify_assertion(
            credential, user_id=push.user_id,
            expected_challenge=push_challenge(push.auth_req_id, push.binding_message,
                                              push.authorization_details, approve))

    def verify_assertion(self, credential: Mapping[str, Any], *, expected_challenge: bytes,
                         user_id: str | None) -> Verified:
        """Known credential of the expected user; then signature, challenge, origin, RP ID, UV
        and counter; the counter advances once (a concurrent replay loses the race)."""
        stored = self._known(credential)
        if user_id is not None and stored.user_id != user_id:
            raise InvalidAssertion("this passkey belongs to another user")
        try:
            verified = verify_authentication_response(
                credential=dict(credential), expected_challenge=expected_challenge,
                expected_rp_id=self.rp_id,
                expected_origin=self.origin,
                credential_public_key=stored.public_key,
                credential_current_sign_count=stored.sign_count,
                require_user_verification=True)
        except (InvalidAuthenticationResponse, KeyError, TypeError, ValueError) as exc:
            raise InvalidAssertion(f"the assertion does not verify: {exc}") from exc
        if not self.store.advance(stored.credential_id, stored.sign_count,
                                  verified.new_sign_count, self._clock()):
            raise InvalidAssertion("the assertion does not verify: its sign counter was "
                                   "already used (a replay)")
        return Verified(user_id=stored.user_id, credential=stored,
                        user_verified=verified.user_verified)

    def _known(self, credential: Mapping[str, Any]) -> PasskeyCredential:
        try:
            credential_id = from_b64url(str(credential["rawId"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AssertionRequired("the assertion names no credential (rawId)") from exc
        stored = self.store.get(credential_id)
        if stored is None:
            raise InvalidAssertion("this passkey is not registered at this tenant")
        return stored
