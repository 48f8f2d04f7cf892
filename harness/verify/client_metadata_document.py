"""OAuth Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document-00), as the
MCP authorization spec 2025-11-25 asks an authorization server to support them: a client whose
`client_id` is an https URL; the tenant fetches the JSON document at that URL and treats it as
the client's registration.

* The URL (§3): https, a path other than "/", no "." or ".." segments, no fragment, no user
  information. `loopback_http_metadata_documents` in fixtures/tenant/client_registration.json
  would allow http on the loopback interface too; it is off, as the MCP authorization spec
  (2025-11-25) says the client_id URL MUST be https, and the official clients refuse anything
  else (tests/cimd_documents.py serves test clients' documents over TLS instead).
* The fetch (§4, §6.5, §6.6): a GET with no redirects followed, answered 200 with JSON, read
  to at most `document_max_bytes` (5 KB, the draft's suggestion) within `document_timeout`.
* The document (§4.1): `client_id` equal to the URL (simple string comparison); the metadata
  of a public code + PKCE client (harness/verify/client_registration.py, the same rules as
  RFC 7591 registration): redirect_uris, token_endpoint_auth_method "none", no client_secret.
* The cache (§4.4): a document is kept for its Cache-Control max-age, at most
  `document_cache_seconds`; a refusal for a few seconds (so a bad client cannot make the tenant
  fetch on every request); both at most `document_cache_entries`, oldest out first.

A document that cannot be fetched or is invalid makes the client unknown: `invalid_client`,
with the reason (`unknown_reason`), and nothing issued.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from harness.verify.audit import AuditTrail, Decision
from harness.verify.client_auth import LOOPBACK_HOSTS, Client
from harness.verify.client_registration import (
    ClientMetadataError,
    RegistrationSettings,
    client_of,
    public_client_metadata,
)
from iia.protocol import REGISTRATION_DOCUMENT

__all__ = ["MetadataDocuments", "document_url_problem"]

REFUSAL_TTL = 5.0  # seconds a refused document is not fetched again
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)


def document_url_problem(url: str, *, loopback_http: bool) -> str | None:
    """Why `url` cannot be a client_id metadata document URL (None: it can)."""
    if len(url) > 2000:
        return "a client_id URL is at most 2000 characters"
    parts = urlsplit(url)
    loopback = parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS and loopback_http
    if parts.scheme != "https" and not loopback:
        return (f"a client_id URL must be https{' or loopback http' if loopback_http else ''} "
                f"(draft-ietf-oauth-client-id-metadata-document §3), not {url[:200]!r}")
    if not parts.hostname:
        return f"{url[:200]!r} names no host"
    if parts.path in ("", "/"):
        return f"a client_id URL must have a path (§3): {url[:200]!r}"
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        return f"a client_id URL has no '.' or '..' path segments (§3): {url[:200]!r}"
    if parts.fragment or "#" in url:
        return f"a client_id URL has no fragment (§3): {url[:200]!r}"
    if parts.username or parts.password:
        return f"a client_id URL carries no user information (§3): {url[:200]!r}"
    try:
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        return f"{url[:200]!r} has an invalid port"
    return None


class MetadataDocuments:
    """A `client_auth.Source`: the clients whose client_id is their metadata document's URL."""

    def __init__(self, settings: RegistrationSettings, audit: AuditTrail, *,
                 verify: ssl.SSLContext | bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.audit = audit
        self.verify = verify  # the trust anchors for https documents (system CAs by default)
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, tuple[Client, float]] = OrderedDict()
        self._refused: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.fetches = 0

    @staticmethod
    def looks_like_one(client_id: str) -> bool:
        return client_id.startswith(("https://", "http://"))

    # -- client_auth.Source -----------------------------------------------------------------

    def get(self, client_id: str) -> Client | None:
        if not self.looks_like_one(client_id) or not self.settings.metadata_documents:
            return None
        now = self._clock()
        with self._lock:
            cached = self._clients.get(client_id)
            if cached is not None and cached[1] > now:
                return cached[0]
            refused = self._refused.get(client_id)
            if refused is not None and refused[1] > now:
                return None
        try:
            client, ttl = self._resolve(client_id)
        except ClientMetadataError as exc:
            self._remember(self._refused, client_id, (exc.description, now + REFUSAL_TTL))
            self.audit.record(Decision(kind="client_metadata_document", outcome="refused",
                                       client_id=client_id[:200], error="invalid_client",
                                       reason=exc.description))
            return None
        self._remember(self._clients, client_id, (client, now + ttl))
        with self._lock:
            self._refused.pop(client_id, None)
        return client

    def unknown_reason(self, client_id: str) -> str | None:
        if not self.looks_like_one(client_id):
            return None
        if not self.settings.metadata_documents:
            return "this tenant does not accept Client ID Metadata Documents (its setting)"
        with self._lock:
            refused = self._refused.get(client_id)
        if refused is None:
            return None
        return f"the client's metadata document at {client_id[:200]} is refused: {refused[0]}"

    # -- fetch and validate -----------------------------------------------------------------

    def _remember(self, cache: OrderedDict[str, Any], key: str,
                  value: tuple[object, float]) -> None:
        with self._lock:
            cache[key] = value
            cache.move_to_end(key)
            while len(cache) > self.settings.document_cache_entries:
                cache.popitem(last=False)

    def _resolve(self, url: str) -> tuple[Client, float]:
        problem = document_url_problem(
            url, loopback_http=self.settings.loopback_http_metadata_documents)
        if problem:
            raise ClientMetadataError("invalid_client_metadata", problem)
        body, max_age = self._fetch(url)
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise ClientMetadataError("invalid_client_metadata",
                                      "the document is not JSON") from exc
        if not isinstance(doc, dict) or doc.get("client_id") != url:
            named = doc.get("client_id") if isinstance(doc, dict) else None
            raise ClientMetadataError("invalid_client_metadata", f"the document's client_id "
                                      f"{str(named)[:200]!r} is not its own URL (§4.1)")
        metadata = public_client_metadata(doc, replace_secret_methods=False)
        ttl = self.settings.document_cache_seconds
        if max_age is not None:
            ttl = min(ttl, float(max_age))
        return client_of(url, metadata, REGISTRATION_DOCUMENT), ttl

    def _fetch(self, url: str) -> tuple[bytes, int | None]:
        limit = self.settings.document_max_bytes
        deadline = time.monotonic() + self.settings.document_timeout  # the whole fetch, too
        self.fetches += 1
        try:
            with httpx.Client(timeout=self.settings.document_timeout, verify=self.verify,
                              follow_redirects=False) as http, \
                    http.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code != 200:
                    raise ClientMetadataError("invalid_client_metadata", f"fetching it answered "
                                              f"HTTP {response.status_code}, not 200 (§4)")
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ClientMetadataError("invalid_client_metadata", f"the document "
                                                  f"is larger than {limit} bytes (§6.6)")
                    if time.monotonic() > deadline:
                        raise ClientMetadataError("invalid_client_metadata", "it took longer "
                                                  f"than {self.settings.document_timeout:g} s")
                found = _MAX_AGE.search(response.headers.get("cache-control", ""))
                return body, int(found.group(1)) if found else None
        except httpx.HTTPError as exc:
            raise ClientMetadataError("invalid_client_metadata", f"it could not be fetched: "
                                      f"{type(exc).__name__}") from exc
