"""The one validator of pushed Security Event Tokens, used by every SSF receiver in the lab (the MCP
server's, the simulated IdP's, the CAEP receiver): RFC 8417 (SET), RFC 8935 (push delivery), the
SSF 1.0 SET profile.

A pushed SET is accepted only when, in this order:

* the push carries exactly the Authorization header the receiver asked for when it subscribed
  (RFC 8935 §2), and `Content-Type: application/secevent+jwt`;
* the JWS header says `typ: secevent+jwt` (RFC 8417 §2.3) and `alg` is one of
  `ALLOWED_ALGORITHMS` (ES256, and RS256 which the CAEP interoperability profile requires; never
  `none`, never an HMAC: a receiver holds no shared secret);
* it names a `kid` that is in the trusted transmitter's JWKS, of a key type that fits `alg`, and
  the signature verifies with that key;
* `iss` is the trusted transmitter and `aud` includes this receiver;
* `events` holds exactly one event, an object;
* there is no `exp` (a SET states that something happened, it is not a credential that lapses;
  RFC 8417 §4 leaves `exp` out so that ID token validation refuses a SET) and no top-level
  `sub` (the SSF 1.0 SET profile names the subject in `sub_id`);
* `iat` is present and not later than now plus `IAT_LEEWAY` seconds;
* `jti` is present and this receiver has not accepted it from this issuer before
  (`SeenJtis`: bounded memory). A repeat is `AlreadyReceived`: answered 202 like the first
  delivery (delivery is at least once) and not acted on again.

A refusal is a `SetRefused` subclass carrying its RFC 8935 §2.4 error code, answered as the RFC
8935 §2.3 body {"err": code, "description": sentence} with HTTP 400 (401 `authentication_failed`,
403 `access_denied`). The one exception is a transmitter JWKS that cannot be fetched: that is this
receiver's problem, not the SET's, so it is 503 and the transmitter retries (RFC 8935 §2.3:
general HTTP errors use their own status codes).
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict, cast

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from iia.errors import IIAError
from iia.jwks import JwksCache, JwksUnavailableError
from iia.protocol import SET_MEDIA_TYPE, SET_TYP

__all__ = ["ALLOWED_ALGORITHMS", "IAT_LEEWAY", "MEDIA_TYPE", "SET_TYPE", "AccessDenied",
           "AlreadyReceived", "AuthenticationFailed", "InvalidAudience", "InvalidIssuer",
           "InvalidKey", "InvalidRequest", "SeenJtis", "SetClaims", "SetErrorBody", "SetRefused",
           "SetValidator", "Transmitter", "TransmitterKeysUnavailable"]

SET_TYPE = SET_TYP
MEDIA_TYPE = SET_MEDIA_TYPE
ALLOWED_ALGORITHMS = ("ES256", "RS256")
IAT_LEEWAY = 30  # seconds a transmitter's clock may run ahead of ours
SEEN_CAPACITY = 10_000  # jtis remembered per receiver
MIN_RSA_BITS = 2048


class SetClaims(TypedDict):
    """The claims of a SET `SetValidator.validate` accepted (RFC 8417 §2.2, the SSF 1.0 SET
    profile): each member below was checked, except the optional ones it does not read."""

    iss: str
    aud: str | list[str]
    iat: int
    jti: str
    events: dict[str, dict[str, Any]]  # exactly one: event-type URI -> its payload
    sub_id: NotRequired[dict[str, Any]]  # SSF 1.0 §4.1: the subject
    txn: NotRequired[str]
    toe: NotRequired[int]


class SetErrorBody(TypedDict):
    """RFC 8935 §2.3: the body of a refused push."""

    err: str
    description: str


class SetRefused(IIAError, code="invalid_request", status=400):
    """A pushed SET refused; `code` (also `err`) is its RFC 8935 §2.4 error code."""

    @property
    def err(self) -> str:
        return self.code

    def body(self) -> SetErrorBody:
        return {"err": self.code, "description": self.description}

    def response(self) -> Response:
        return JSONResponse(self.body(), status_code=self.status)


class InvalidRequest(SetRefused, code="invalid_request"):
    """The body is not a SET, or the SET breaks the SET profile."""


class InvalidKey(SetRefused, code="invalid_key"):
    """The signing key or algorithm is unknown or unacceptable, or the signature is wrong."""


class InvalidIssuer(SetRefused, code="invalid_issuer"):
    """`iss` is not the trusted transmitter."""


class InvalidAudience(SetRefused, code="invalid_audience"):
    """`aud` does not include this receiver."""


class AuthenticationFailed(SetRefused, code="authentication_failed", status=401):
    """The push does not carry the Authorization header the receiver asked for."""


class AccessDenied(SetRefused, code="access_denied", status=403):
    """The push is authenticated but not allowed here."""


class AlreadyReceived(SetRefused, code="duplicate", status=202):
    """A SET this receiver accepted before (same issuer and jti): acknowledged again with 202 and
    not acted on again. Delivery is at least once (RFC 8935 §2: a transmitter that did not see
    the first 202, because it was lost or came late, sends the SET again); refusing the repeat
    would make the transmitter record a SET the receiver holds as failed."""

    def response(self) -> Response:
        return Response(status_code=202)


class TransmitterKeysUnavailable(InvalidKey, status=503):
    """The trusted transmitter's JWKS cannot be fetched: not the SET's fault, so 503 (retry)."""


@dataclass(frozen=True)
class Transmitter:
    """What a receiver trusts: SETs from `issuer`, signed with a key at `jwks_uri`, pushed with
    exactly `authorization` as the Authorization header (None: no header required)."""

    issuer: str
    jwks_uri: str
    authorization: str | None = None


class SeenJtis:
    """The (issuer, jti) pairs a receiver accepted, at most `capacity` of them. When the oldest
    is forgotten, its `iat` becomes a floor: a SET issued at or before it can no longer be checked
    for replay, so it is refused instead of being taken on trust."""

    def __init__(self, capacity: int = SEEN_CAPACITY) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.floor: int | None = None  # the newest iat forgotten

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, issuer: str, jti: str, iat: int) -> None:
        """Remember (issuer, jti); raise AlreadyReceived when it was accepted before, and
        InvalidRequest when it is too old to tell."""
        key = (issuer, jti)
        with self._lock:
            if key in self._seen:
                raise AlreadyReceived(f"SET {jti!r} was already received; a jti is acted on once")
            if self.floor is not None and iat <= self.floor:
                raise InvalidRequest(f"SET {jti!r} is older than this receiver's replay memory "
                                     "reaches, so it cannot be checked for replay")
            self._seen[key] = iat
            while len(self._seen) > self.capacity:
                _, forgotten = self._seen.popitem(last=False)
                self.floor = forgotten if self.floor is None else max(self.floor, forgotten)


class SetValidator:
    """One receiver's SET validation: the transmitter it trusts (`trust`), that transmitter's
    keys (cached; an unknown kid refetches at once, single-flight, so a key rotation never makes
    a revocation wait) and the jtis it accepted."""

    def __init__(self, audience: str, *, leeway: int = IAT_LEEWAY,
                 capacity: int = SEEN_CAPACITY, min_refresh: float = 0.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.audience = audience
        self.leeway = leeway
        self._clock = clock
        self._trusted: Transmitter | None = None
        # no keep-alive: the keys are fetched rarely (a new trust, an unknown kid), and a
        # receiver that is dropped without close() leaves no socket behind
        self._http = httpx.Client(timeout=5, limits=httpx.Limits(max_keepalive_connections=0))
        self._jwks = JwksCache(lambda: self._trusted.jwks_uri if self._trusted else None,
                               http=self._http, min_refresh=min_refresh,
                               what="transmitter's keys", dependency="ssf_transmitter")
        self.seen = SeenJtis(capacity)

    @property
    def trusted(self) -> Transmitter | None:
        return self._trusted

    def trust(self, transmitter: Transmitter | None) -> None:
        """Accept SETs from `transmitter` from now on (None: from nobody)."""
        self._trusted = transmitter
        self._jwks.forget()

    async def read(self, request: Request) -> tuple[SetClaims, str]:
        """Receive one pushed SET (RFC 8935 §2): (its verified claims, the SET as sent). The
        validation runs in a worker thread: it may fetch the transmitter's JWKS."""
        trusted = self._trusted
        if trusted is None:
            raise InvalidIssuer("this receiver trusts no transmitter yet")
        if trusted.authorization and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(),
                trusted.authorization.encode()):
            raise AuthenticationFailed("the push lacks the Authorization header this receiver "
                                       "asked for when it subscribed")
        if not request.headers.get("content-type", "").lower().startswith(MEDIA_TYPE):
            raise InvalidRequest(f"Content-Type must be {MEDIA_TYPE}")
        token = (await request.body()).decode(errors="replace").strip()
        return await run_in_threadpool(self.validate, token), token

    def validate(self, token: str) -> SetClaims:
        """The claims of `token` when it is a SET this receiver accepts; else SetRefused. An
        accepted SET's jti is remembered: the same SET a second time is refused."""
        trusted = self._trusted
        if trusted is None:
            raise InvalidIssuer("this receiver trusts no transmitter yet")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidRequest("the body is not a compact JWS") from exc
        typ = str(header.get("typ", ""))
        if typ.lower().removeprefix("application/") != SET_TYPE:
            raise InvalidRequest(f"the JWS typ must be {SET_TYPE!r}, not {typ!r}: "
                                 "this is not a Security Event Token")
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise InvalidKey(f"algorithm {alg!r} is not accepted; a SET must be signed with "
                             f"one of {', '.join(ALLOWED_ALGORITHMS)}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidKey("the JWS header names no key (kid)")
        key = self._key(kid)
        if not _fits(key, alg):
            raise InvalidKey(f"key {kid!r} cannot be used with {alg}")
        try:
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=[alg], options={
                "verify_aud": False, "verify_iss": False, "verify_exp": False,
                "verify_iat": False, "verify_nbf": False, "verify_sub": False,
                "verify_jti": False})
        except jwt.InvalidSignatureError as exc:
            raise InvalidKey(f"the signature does not verify with key {kid!r}") from exc
        except jwt.PyJWTError as exc:
            raise InvalidRequest(f"the SET cannot be read: {exc}") from exc
        if claims.get("iss") != trusted.issuer:
            raise InvalidIssuer(f"issuer {claims.get('iss')!r} is not the transmitter this "
                                "receiver trusts")
        aud = claims.get("aud")
        if self.audience not in (aud if isinstance(aud, list) else [aud]):
            raise InvalidAudience(f"the SET is addressed to {aud!r}, not to {self.audience}")
        events = claims.get("events")
        if not isinstance(events, dict) or len(events) != 1:
            count = len(events) if isinstance(events, dict) else "no"
            raise InvalidRequest(f"a SET carries exactly one event, this one has {count}")
        if not isinstance(next(iter(events.values())), dict):
            raise InvalidRequest("the event's payload must be a JSON object")
        if "exp" in claims:
            raise InvalidRequest("a SET carries no exp claim: it records that something "
                                 "happened and does not expire (RFC 8417)")
        if "sub" in claims:
            raise InvalidRequest("a SET names its subject in sub_id (SSF 1.0), never in a "
                                 "top-level sub claim")
        iat = claims.get("iat")
        if not isinstance(iat, int) or isinstance(iat, bool):
            raise InvalidRequest("the SET has no iat (issued-at, in whole seconds)")
        if iat > self._clock() + self.leeway:
            raise InvalidRequest(f"the SET's iat is {iat - int(self._clock())} s in the "
                                 "future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise InvalidRequest("the SET has no jti")
        self.seen.add(trusted.issuer, jti, iat)
        return cast(SetClaims, claims)

    def _key(self, kid: str) -> Any:
        try:
            key = self._jwks.key(kid)
        except JwksUnavailableError as exc:
            raise TransmitterKeysUnavailable("the transmitter's keys cannot be fetched right "
                                             "now; try again") from exc
        if key is None:
            raise InvalidKey(f"key {kid!r} is not in the transmitter's JWKS")
        return key

    def close(self) -> None:
        self._http.close()


def _fits(key: Any, alg: str) -> bool:
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    if alg == "RS256":
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    return False
