"""JWT-SVIDs from the SPIFFE Workload API, through the `spiffe` library.

A JWT-SVID is fetched per audience and reused until half of its lifetime has passed (SPIRE's own
agents refresh at that point too), so a warm chain does not touch the Workload API. Failures are
translated once, here, into typed errors that name the dependency ("spire"); the gRPC status
survives as `upstream_code`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import jwt
from spiffe import SpiffeId, WorkloadApiClient
from spiffe.errors import ArgumentError, PySpiffeError

from iia.events import EventBus
from iia.identity.errors import (
    WorkloadApiError,
    WorkloadApiUnavailableError,
    WorkloadNotAttestedError,
)

__all__ = ["JwtSvidSource", "Svid"]


@dataclass(frozen=True)
class Svid:
    """A JWT-SVID and what we know about it. `token` never appears in a repr."""

    token: str = field(repr=False)
    spiffe_id: str
    audience: str
    claims: Mapping[str, Any]
    issued_at: float
    expires_at: float
    fetched_at: float

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.issued_at

    def age(self, now: float) -> float:
        return now - self.fetched_at

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def fresh(self, now: float) -> bool:
        """Usable without refetching: less than half of its lifetime has passed."""
        return now < self.issued_at + self.lifetime / 2


def _translate(exc: Exception, socket: str) -> WorkloadApiError:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, grpc.RpcError):
        cause = cause.__cause__
    code = cause.code() if isinstance(cause, grpc.Call) else None
    details = cause.details() if isinstance(cause, grpc.Call) else str(exc)
    name = code.name if code is not None else None
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return WorkloadNotAttestedError(
            f"the SPIFFE Workload API at {socket} did not attest this process as a registered "
            f"workload ({details})", upstream_code=name)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or isinstance(
            exc, ArgumentError):
        return WorkloadApiUnavailableError(
            f"the SPIFFE Workload API (SPIRE agent) at {socket} is unreachable ({details})",
            upstream_code=name)
    return WorkloadApiError(f"the SPIFFE Workload API at {socket} failed: {details}",
                            upstream_code=name)


class JwtSvidSource:
    """Fetches and caches JWT-SVIDs per audience."""

    def __init__(
        self,
        socket: str,
        *,
        spiffe_id: str | None = None,
        timeout: float = 2.0,
        events: EventBus | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.socket = socket
        self.spiffe_id = spiffe_id
        self.timeout = timeout
        self._events = events
        self._clock = clock
        self._lock = threading.Lock()
        self._client: WorkloadApiClient | None = None
        self._cache: dict[str, Svid] = {}
        # -- instrumentation for tests, benchmarks and the ops counters (iia.ops); nothing in the
        #    chain reads it --
        self.fetches = 0  # JWT-SVIDs fetched from the Workload API (a cache hit is not one)

    def _workload_api(self) -> WorkloadApiClient:
        if self._client is None:
            try:
                self._client = WorkloadApiClient(self.socket, default_timeout=self.timeout)
            except PySpiffeError as exc:
                raise _translate(exc, self.socket) from exc
        return self._client

    def cached(self, audience: str) -> Svid | None:
        """The cached SVID for `audience` if it is still fresh, without any I/O."""
        svid = self._cache.get(audience)
        return svid if svid is not None and svid.fresh(self._clock()) else None

    def get(self, audience: str) -> tuple[Svid, bool]:
        """A JWT-SVID for `audience` and whether it came from the cache."""
        svid = self.cached(audience)
        if svid is not None:
            return svid, True
        with self._lock:
            svid = self.cached(audience)  # another thread may have fetched it meanwhile
            if svid is not None:
                return svid, True
            svid = self._fetch(audience)
            self._cache[audience] = svid
            return svid, False

    def _fetch(self, audience: str) -> Svid:
        started = time.perf_counter()
        subject = SpiffeId(self.spiffe_id) if self.spiffe_id else None
        try:
            jwt_svid = self._workload_api().fetch_jwt_svid({audience}, subject=subject)
        except PySpiffeError as exc:
            raise _translate(exc, self.socket) from exc
        now = self._clock()
        # The agent on our own socket is the trust anchor for what it hands us; its claims are
        # read for bookkeeping (iat) and display. Relying parties verify the signature.
        claims = jwt.decode(jwt_svid.token, options={"verify_signature": False})
        self.fetches += 1
        svid = Svid(token=jwt_svid.token, spiffe_id=str(jwt_svid.spiffe_id), audience=audience,
                    claims=claims, issued_at=float(claims.get("iat", now)),
                    expires_at=float(jwt_svid.expiry), fetched_at=now)
        if self._events is not None:
            self._events.emit(
                "spiffe:svid_fetched", spiffe_id=svid.spiffe_id,
                duration_ms=round((time.perf_counter() - started) * 1000),
                details={"audience": audience, "svidExpiresInS": round(svid.remaining(now))})
        return svid

    def forget(self) -> None:
        """Drop every cached SVID: the next request fetches a fresh one."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
