"""A cache of a JWKS (RFC 7517) for verifying signatures, shared by everything in `iia` that
checks a token it did not sign: the user's access tokens (`iia.resource_server`) and the SETs the
MCP server receives (`iia.mcp_server.ssf_receiver`).

The key set is fetched once and kept. A `kid` not in it triggers one refetch, single-flight (the
others wait and re-check) and at most once per `min_refresh` seconds, so a key rotation costs one
fetch and an unknown-kid flood costs at most one per interval. A failed fetch is rate-limited the
same way: while the issuer is down, lookups fail at once instead of each waiting on a timeout.
Counters (`fetches`, `failures`, `key_parses`) let tests and benchmarks prove the warm path does
no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from jwt import PyJWKSet
from jwt.exceptions import PyJWKSetError

from iia.errors import DependencyError

__all__ = ["JwksCache", "JwksUnavailableError"]


class JwksUnavailableError(DependencyError):
    code = "jwks_unavailable"


class JwksCache:
    def __init__(self, uri: str | Callable[[], str | None], *, http: httpx.Client,
                 min_refresh: float = 1.0, what: str = "signing keys",
                 dependency: str = "idp") -> None:
        self.uri = uri
        self.min_refresh = min_refresh
        self._http = http
        self._what = what
        self._dependency = dependency
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._failure: str | None = None
        self.fetches = 0
        self.failures = 0
        self.key_parses = 0

    def cached(self, kid: str) -> bool:
        """True when `kid` is in the cache, so `key(kid)` will do no I/O."""
        return kid in self._keys

    def key(self, kid: str) -> Any:
        """The public key for `kid`, or None when the issuer does not publish it.
        Raises JwksUnavailableError when the key set cannot be fetched."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        with self._lock:  # single flight: one refetch, the others wait and re-check
            key = self._keys.get(kid)
            if key is not None:
                return key
            now = time.monotonic()
            if self._fetched_at is None or now - self._fetched_at >= self.min_refresh:
                self._refresh(now)
            elif self._failure is not None:  # the last fetch failed moments ago: no retry yet
                raise JwksUnavailableError(self._failure, dependency=self._dependency)
            return self._keys.get(kid)

    def forget(self) -> None:
        """Drop the cached key set: the next lookup fetches."""
        with self._lock:
            self._keys = {}
            self._fetched_at = None
            self._failure = None

    def _refresh(self, now: float) -> None:
        url = self.uri if isinstance(self.uri, str) else self.uri()
        if not url:
            return
        try:
            response = self._http.get(url)
            response.raise_for_status()
            jwks = PyJWKSet.from_dict(response.json())
        except (httpx.HTTPError, ValueError, PyJWKSetError) as exc:
            self.failures += 1
            self._fetched_at = now
            self._failure = f"cannot fetch the {self._what} ({exc.__class__.__name__})"
            raise JwksUnavailableError(self._failure, dependency=self._dependency) from exc
        self._failure = None
        self.fetches += 1
        keys = {}
        for jwk in jwks.keys:
            if jwk.key_id:
                keys[jwk.key_id] = jwk.key
                self.key_parses += 1
        self._keys = keys
        self._fetched_at = now
