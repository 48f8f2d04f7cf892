"""The Verify client credential, read from Vault with a JWT-SVID login (hvac).

    JWT-SVID (aud "vault") --JWT auth login--> Vault token (TTL minutes) --kv-v2 read-->
    {client_id, client_secret}

The Vault token is reused while at least `min_token_ttl` seconds remain; after that (or when
Vault says it is no longer valid) the source logs in again with a JWT-SVID. The credential is
read from Vault for every use, because the identity provider rotates it after each successful
use. When the IdP still calls the secret stale (another caller used it first and its grace window
passed), `with_credential` re-reads it and retries once (`vault:rotation_retry`).

Every request goes through one pooled `requests.Session` (`vault_session`): keep-alive
connections, a pool as large as the MCP server's concurrent calls, and `trust_env` off, so a
request does not consult proxy variables or `~/.netrc` each time (the address, CA and timeout
are this module's settings, nothing else).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import hvac
import hvac.exceptions
import requests
from requests.adapters import HTTPAdapter

from iia.events import EventBus, current_fields
from iia.identity.errors import (
    VaultError,
    VaultLoginRefusedError,
    VaultPermissionDeniedError,
    VaultSealedError,
    VaultSecretMissingError,
    VaultUnavailableError,
)
from iia.identity.settings import IdentitySettings
from iia.identity.svid import JwtSvidSource, Svid
from iia.oauth.errors import InvalidClientError

__all__ = ["POOL_CONNECTIONS", "ClientCredential", "VaultCredentialSource", "vault_session"]

T = TypeVar("T")

# keep-alive connections kept to Vault: as many as the MCP server runs calls at once
# (iia.mcp_server.McpServer's max_concurrent_calls), so no call opens a connection when warm
POOL_CONNECTIONS = 64


def vault_session(settings: IdentitySettings, *,
                  pool_connections: int = POOL_CONNECTIONS) -> requests.Session:
    """The one HTTP session to Vault: pooled keep-alive connections, TLS verified with the
    configured CA (or the system's), and nothing taken from the environment (`trust_env`
    off: no proxy variables, no `~/.netrc`, no `REQUESTS_CA_BUNDLE` read on each request)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = settings.vault_ca_cert or True
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_connections, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@dataclass(frozen=True)
class ClientCredential:
    """An OAuth client credential. The secret never appears in a repr or an event."""

    client_id: str
    client_secret: str = field(repr=False)
    version: int


@dataclass(frozen=True)
class _VaultToken:
    token: str = field(repr=False)
    obtained_at: float
    expires_at: float
    svid: Svid


_STATUS = {hvac.exceptions.InvalidRequest: "400", hvac.exceptions.Unauthorized: "401",
           hvac.exceptions.Forbidden: "403", hvac.exceptions.InvalidPath: "404",
           hvac.exceptions.RateLimitExceeded: "429", hvac.exceptions.InternalServerError: "500",
           hvac.exceptions.VaultNotInitialized: "501", hvac.exceptions.BadGateway: "502",
           hvac.exceptions.VaultDown: "503"}


def _status(exc: hvac.exceptions.VaultError) -> str | None:
    return _STATUS.get(type(exc))


def _words(exc: hvac.exceptions.VaultError) -> str:
    """Vault's own error text, without the method and URL hvac appends."""
    return "; ".join(exc.errors) if exc.errors else str(exc.args[0] if exc.args else exc)


def _translate(exc: Exception, addr: str, doing: str) -> VaultError:
    """Vault/HTTP failures -> typed errors naming Vault, keeping its own words and status."""
    if isinstance(exc, requests.exceptions.RequestException):
        return VaultUnavailableError(f"Vault at {addr} is unreachable while {doing} "
                                     f"({exc.__class__.__name__})")
    if isinstance(exc, hvac.exceptions.VaultDown):
        return VaultSealedError(f"Vault at {addr} is sealed or not ready while {doing}",
                                upstream_code="503")
    if isinstance(exc, hvac.exceptions.VaultError):
        words, status = _words(exc), _status(exc)
        if isinstance(exc, hvac.exceptions.InvalidPath):
            return VaultSecretMissingError(f"no secret in Vault while {doing}: {words}",
                                           upstream_code=status)
        if isinstance(exc, hvac.exceptions.Forbidden):
            return VaultPermissionDeniedError(f"Vault refused {doing}: {words}",
                                              upstream_code=status)
        return VaultError(f"Vault failed while {doing}: {words}", upstream_code=status)
    return VaultError(f"Vault failed while {doing}: {exc}")


class VaultCredentialSource:
    def __init__(
        self,
        settings: IdentitySettings,
        svids: JwtSvidSource,
        *,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.svids = svids
        self._events = events
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _VaultToken | None = None
        self._session = vault_session(settings)
        # the timeout is a float (requests takes one); types-hvac says int
        self._client = hvac.Client(url=settings.vault_addr,
                                   timeout=settings.timeout,  # type: ignore[arg-type]
                                   verify=settings.vault_ca_cert or True, session=self._session)
        # -- instrumentation for tests, benchmarks and the ops counters (iia.ops); nothing in the
        #    chain reads it --
        self._count_lock = threading.Lock()
        self.logins = 0  # JWT-SVID logins to Vault (a warm token is not one)
        self.reads = 0  # credential reads from kv-v2
        self._cached_calls: OrderedDict[str, None] = OrderedDict()  # recent calls announced

    # -- login ------------------------------------------------------------------------------

    def _warm_token(self) -> _VaultToken | None:
        token = self._token
        if token is not None and token.expires_at - self._clock() >= self.settings.min_token_ttl:
            return token
        return None

    def _ensure_token(self) -> tuple[_VaultToken, bool]:
        token = self._warm_token()
        if token is not None:
            return token, True
        with self._lock:
            token = self._warm_token()
            if token is not None:
                return token, True
            token = self._login()
            self._token = token
            return token, False

    def _login(self) -> _VaultToken:
        s = self.settings
        svid, _ = self.svids.get(s.vault_audience)
        started = time.perf_counter()
        try:
            response = self._client.auth.jwt.jwt_login(role=s.vault_role, jwt=svid.token,
                                                       path=s.vault_jwt_mount)
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden) as exc:
            raise VaultLoginRefusedError(
                f"Vault refused the JWT-SVID login for role {s.vault_role!r}: {_words(exc)}",
                upstream_code=_status(exc)) from exc
        except Exception as exc:
            raise _translate(exc, s.vault_addr, "logging in") from exc
        now = self._clock()
        auth = response["auth"]
        self.logins += 1
        if self._events is not None:
            self._events.emit(
                "vault:login", spiffe_id=svid.spiffe_id,
                duration_ms=round((time.perf_counter() - started) * 1000),
                details={"role": s.vault_role, "tokenTtlS": int(auth["lease_duration"])})
        return _VaultToken(token=auth["client_token"], obtained_at=now,
                           expires_at=now + float(auth["lease_duration"]), svid=svid)

    # -- the credential ---------------------------------------------------------------------

    def read(self) -> ClientCredential:
        """Read the current client credential (logging in first when needed)."""
        token, warm = self._ensure_token()
        if warm and self._events is not None and self._first_read_of_call():
            now = self._clock()
            self._events.emit(
                "spiffe:svid_cached", spiffe_id=token.svid.spiffe_id, duration_ms=0,
                details={"svidAgeS": round(token.svid.age(now), 1),
                         "tokenRemainingS": round(token.expires_at - now, 1)})
        try:
            return self._read(token)
        except VaultPermissionDeniedError:
            if not warm:
                raise
            # Vault no longer honours a token we thought warm (revoked, or Vault restarted):
            # log in once more and read again.
            with self._lock:
                if self._token is token:
                    self._token = None
            token, _ = self._ensure_token()
            return self._read(token)

    def _first_read_of_call(self) -> bool:
        """A warm read is announced once per tool call, not once per read; with calls running
        concurrently, each call is remembered (the last 256) rather than only the latest."""
        call = current_fields().get("call_id")
        if call is None:
            return True
        with self._lock:
            if call in self._cached_calls:
                return False
            self._cached_calls[call] = None
            if len(self._cached_calls) > 256:
                self._cached_calls.popitem(last=False)
            return True

    def _read(self, token: _VaultToken) -> ClientCredential:
        s = self.settings
        started = time.perf_counter()
        self._client.token = token.token
        try:
            response = self._client.secrets.kv.v2.read_secret_version(
                path=s.vault_secret_path, mount_point=s.vault_kv_mount,
                raise_on_deleted_version=True)
        except Exception as exc:
            raise _translate(exc, s.vault_addr,
                             f"reading {s.vault_kv_mount}/{s.vault_secret_path}") from exc
        data = response["data"]["data"]
        version = int(response["data"]["metadata"]["version"])
        if not data.get("client_id") or not data.get("client_secret"):
            raise VaultSecretMissingError(
                f"{s.vault_kv_mount}/{s.vault_secret_path} has no client_id/client_secret")
        with self._count_lock:
            self.reads += 1
        if self._events is not None:
            self._events.emit(
                "vault:secret_read", duration_ms=round((time.perf_counter() - started) * 1000),
                details={"path": f"{s.vault_kv_mount}/{s.vault_secret_path}",
                         "version": version})
        return ClientCredential(client_id=str(data["client_id"]),
                                client_secret=str(data["client_secret"]), version=version)

    def with_credential(self, use: Callable[[ClientCredential], T], *,
                        first: ClientCredential | None = None) -> T:
        """Call `use` with `first` (a credential read moments ago for this call) or a freshly
        read one; when the IdP answers `invalid_client` (a stale secret), read it again and
        retry exactly once."""
        credential = first if first is not None else self.read()
        started = time.perf_counter()
        try:
            return use(credential)
        except InvalidClientError as exc:
            if self._events is not None:  # durationMs: what the refused attempt cost
                self._events.emit("vault:rotation_retry", outcome="retry",
                                  reason=exc.description,
                                  duration_ms=round((time.perf_counter() - started) * 1000),
                                  details={"staleVersion": credential.version,
                                           "clientId": credential.client_id})
            fresh = self.read()
            return use(fresh)

    def close(self) -> None:
        """Close the pooled connections to Vault."""
        self._session.close()

    def forget_token(self) -> None:
        """Drop the cached Vault token: the next read logs in again."""
        with self._lock:
            self._token = None

    def token_remaining(self) -> float | None:
        token = self._token
        return None if token is None else token.expires_at - self._clock()
