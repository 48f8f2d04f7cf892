"""The one cache of a JWKS (RFC 7517) for verifying signatures, shared by everything that checks
a token it did not sign: the user's access tokens (`iia.resource_server`), the SETs every SSF
receiver takes (`iia.ssf.SetValidator`, at the MCP server and in the harness), and the JWT-SVIDs
the simulated IdP takes as actor tokens (`harness.verify.spiffe_bundle`, the SPIFFE trust
bundle from its OIDC discovery provider).

The key set is fetched once and kept. A `kid` not in it triggers one refetch, single-flight (the
others wait and re-check) and at most once per `min_refresh` seconds, so a key rotation costs one
fetch and an unknown-kid flood costs at most one per interval. A failed fetch is rate-limited the
same way: while the issuer is down, lookups fail at once (`JwksUnavailableError`) instead of each
waiting on a timeout. A key set that cannot be parsed, or holds no usable key, is a failed fetch.

Instrumentation, for tests and benchmarks only (not part of what the product relies on): the
counters `fetches`, `failures` and `key_parses` let them prove the warm path does no I/O.
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
from iia.net import http_client

__all__ = ["JwksCache", "JwksUnavailableError"]


class JwksUnavailableError(DependencyError):
    code = "jwks_unavailable"


class JwksCache:
    """The key set at `uri` (a URL, or a callable naming it once it is known). `http` is the
    client to fetch with (its owner closes it); without one, each fetch opens and closes its
    own (fetches are rare: once, then at most one per `min_refresh`)."""

    def __init__(self, uri: str | Callable[[], str | None], *, http: httpx.Client | None = None,
                 min_refresh: float = 1.0, what: str = "signing keys",
                 dependency: str = "idp", timeout: float = 5.0) -> None:
        self.uri = uri
        self.min_refresh = min_refresh
        self._http = http
        self._timeout = timeout
        self._what = what
        self._dependency = dependency
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._failure: str | None = None
        # -- instrumentation for tests and benchmarks (see the module docstring) --
        self.fetches = 0  # key sets fetched and parsed
        self.failures = 0  # fetches that failed
        self.key_parses = 0  # keys parsed (one per kid per fetch)

    def cached(self, kid: str) -> bool:
        """True when `kid` is in the cache, so `key(kid)` will do no I/O."""
        return kid in self._keys

    def key(self, kid: str) -> Any:
        """The public key for `kid`, or None when the issuer does not publish it.
        Raises JwksUnavailableError when the key set cannot be fetched."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        return self._refreshed(kid).get(kid)

    def keys(self, kid: str | None = None) -> dict[str, Any]:
        """The whole key set (kid -> public key, a copy), fetched on first use and refetched,
        under the same rate limit, when `kid` is given and not in it. Raises
        JwksUnavailableError as `key` does."""
        if self._answers(kid):
            return dict(self._keys)
        return dict(self._refreshed(kid))

    def _answers(self, kid: str | None) -> bool:
        """True when the cached set answers for `kid` (None: has been fetched) with no I/O."""
        if kid is not None:
            return kid in self._keys
        return self._fetched_at is not None and self._failure is None

    def _refreshed(self, kid: str | None) -> dict[str, Any]:
        """The key set after at most one refetch for `kid` (None: for any key set)."""
        with self._lock:  # single flight: one refetch, the others wait and re-check
            if self._answers(kid):
                return self._keys
            now = time.monotonic()
            if self._fetched_at is None or now - self._fetched_at >= self.min_refresh:
                self._refresh(now)
            elif self._failure is not None:  # the last fetch failed moments ago: no retry yet
                raise JwksUnavailableError(self._failure, dependency=self._dependency)
            return self._keys

    def forget(self) -> None:
        """Drop the cached key set: the next lookup fetches."""
        with self._lock:
            self._keys = {}
            self._fetched_at = None
            self._failure = None

    def _get(self, url: str) -> httpx.Response:
        if self._http is not None:
            return self._http.get(url)
        with http_client(self._timeout, pool=1) as http:
            return http.get(url)

    def _refresh(self, now: float) -> None:
        url = self.uri if isinstance(self.uri, str) else self.uri()
        if not url:
            return
        try:
            response = self._get(url)
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
