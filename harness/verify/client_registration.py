"""RFC 7591 dynamic client registration at the simulated Verify, and the tenant's setting for
clients it did not configure (RFC 7591 here, Client ID Metadata Documents in
harness/verify/client_metadata_document.py).

    POST {issuer}/register   application/json client metadata (RFC 7591 §2, §3.1)
      201  the client information response (§3.2.1): client_id, client_id_issued_at and the
           metadata as registered
      400  {"error": "invalid_redirect_uri" | "invalid_client_metadata", "error_description"}
           (§3.2.2), and nothing registered

What this tenant registers, and only that (the MCP authorization spec 2025-11-25 asks for
public clients with PKCE):

* a public client: `token_endpoint_auth_method` "none". A request for a secret-based method is
  answered with "none" (§3.2.1 lets the server replace a requested value; the response says so
  and carries no secret); a method this tenant has no use for (private_key_jwt, tls...) is
  refused;
* grant types `authorization_code` (required) and `refresh_token`; response type `code`;
  PKCE S256 is required of every code request (harness/verify/grants.py);
* redirect URIs (RFC 8252): http on the loopback interface (127.0.0.1, [::1], localhost: any
  port at request time, §7.3) or https; no fragment (RFC 6749 §3.1.2), no user info; an http
  URI on any other host is refused (`invalid_redirect_uri`);
* the store is bounded: a registration unused for `idle_ttl` lapses, and when `max_clients`
  are registered the one used least recently makes room (its client_id becomes unknown; the
  client registers again).

The tenant setting (fixtures/tenant/client_registration.json) says whether the endpoint is
open, whether metadata documents are fetched, and whether such clients may use the agent (get
user tokens for the MCP server): `agent_access`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse

from harness.verify.audit import AuditTrail, Decision
from harness.verify.client_auth import LOOPBACK_HOSTS, Client
from harness.verify.errors import NO_STORE
from iia.protocol import REGISTRATION_DYNAMIC

__all__ = ["GRANT_TYPES", "ClientMetadataError", "ClientRegistration", "RegisteredClients",
           "RegistrationSettings", "load_registration_settings", "public_client_metadata",
           "redirect_uri_problem"]

GRANT_TYPES = ("authorization_code", "refresh_token")
MAX_BODY = 16 * 1024  # bytes of registration request read
MAX_REDIRECT_URIS = 10
MAX_TEXT = 200  # characters of client_name, scope... kept
SECRET_METHODS = ("client_secret_basic", "client_secret_post")


class ClientMetadataError(Exception):
    """RFC 7591 §3.2.2: `invalid_redirect_uri` or `invalid_client_metadata`, with why."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "error_description": self.description},
                            status_code=400, headers=NO_STORE)


@dataclass
class RegistrationSettings:
    """fixtures/tenant/client_registration.json (keys starting with `_` are comments). One
    object shared by the endpoint, the document fetcher and the OpenID Provider, so the tenant
    admin's switch (`VerifyTenant.set_registered_client_access`) reaches all of them."""

    dynamic_registration: bool = True  # RFC 7591 endpoint open
    metadata_documents: bool = True  # client_id URLs fetched (CIMD)
    loopback_http_metadata_documents: bool = False  # http://127.0.0.1... documents (lab only)
    agent_access: bool = True  # such clients may get user tokens for the MCP server
    max_clients: int = 1000
    idle_ttl: float = 24 * 3600.0
    document_max_bytes: int = 5 * 1024
    document_timeout: float = 5.0
    document_cache_seconds: float = 300.0
    document_cache_entries: int = 256

    def __post_init__(self) -> None:
        for name in ("max_clients", "document_max_bytes", "document_cache_entries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        for name in ("idle_ttl", "document_timeout", "document_cache_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        for name in ("dynamic_registration", "metadata_documents",
                     "loopback_http_metadata_documents", "agent_access"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")


def load_registration_settings(fixtures: Path) -> RegistrationSettings:
    path = fixtures / "tenant" / "client_registration.json"
    if not path.exists():
        return RegistrationSettings()
    doc = json.loads(path.read_text())
    values = {k: v for k, v in doc.items() if not k.startswith("_")}
    known = set(RegistrationSettings.__dataclass_fields__)
    if set(values) - known:
        raise ValueError(f"{path.name}: unknown settings {sorted(set(values) - known)} "
                         f"(known: {sorted(known)})")
    try:
        return RegistrationSettings(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: {exc}") from exc


def redirect_uri_problem(uri: object) -> str | None:
    """Why `uri` cannot be a redirect URI of a registered client (None: it can)."""
    if not isinstance(uri, str) or not uri or len(uri) > 2000:
        return "a redirect URI must be a non-empty string of at most 2000 characters"
    parts = urlsplit(uri)
    try:
        parts.port  # noqa: B018 - raises on a port that is no number
    except ValueError:
        return f"{uri[:200]!r} has an invalid port"
    if parts.fragment or "#" in uri:
        return f"{uri[:200]!r} has a fragment (RFC 6749 §3.1.2)"
    if parts.username or parts.password:
        return f"{uri[:200]!r} carries user information"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return None
    if parts.scheme == "http":
        return (f"{uri[:200]!r} is plain http on a host other than the loopback interface; "
                "use https, or http://127.0.0.1, http://[::1] or http://localhost (RFC 8252 "
                "§7.3, §8.3)")
    return f"{uri[:200]!r} is not an https or loopback http URL"


def _text(doc: Mapping[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ClientMetadataError("invalid_client_metadata", f"{name} must be a string")
    return value[:MAX_TEXT]


def public_client_metadata(doc: object, *, replace_secret_methods: bool) -> dict[str, Any]:
    """The metadata of a public code + PKCE client, validated (RFC 7591 §2): redirect_uris,
    grant_types, response_types, token_endpoint_auth_method, client_name, scope.

    `replace_secret_methods`: a requested secret-based auth method is answered with "none"
    (RFC 7591 §3.2.1 lets the server replace a value) and an absent one means "none"; else (a
    metadata document, which must not name one: draft-ietf-oauth-client-id-metadata-document
    §4.1) the document must say "none"."""
    if not isinstance(doc, dict):
        raise ClientMetadataError("invalid_client_metadata", "the client metadata must be a "
                                  "JSON object")
    if "client_secret" in doc or "client_secret_expires_at" in doc:
        raise ClientMetadataError("invalid_client_metadata", "a public client has no "
                                  "client_secret; this tenant issues none")
    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris:
        raise ClientMetadataError("invalid_redirect_uri", "redirect_uris is required: at least "
                                  "one redirect URI for the authorization code flow")
    if len(uris) > MAX_REDIRECT_URIS:
        raise ClientMetadataError("invalid_redirect_uri", f"at most {MAX_REDIRECT_URIS} "
                                  "redirect URIs")
    for uri in uris:
        problem = redirect_uri_problem(uri)
        if problem:
            raise ClientMetadataError("invalid_redirect_uri", problem)
    grant_types = doc.get("grant_types", ["authorization_code"])
    if not isinstance(grant_types, list) or not all(isinstance(g, str) for g in grant_types):
        raise ClientMetadataError("invalid_client_metadata", "grant_types must be a list of "
                                  "strings")
    other = sorted(set(grant_types) - set(GRANT_TYPES))
    if other or "authorization_code" not in grant_types:
        raise ClientMetadataError("invalid_client_metadata", f"this tenant registers clients "
                                  f"for authorization_code (+ refresh_token) only, not {other}")
    response_types = doc.get("response_types", ["code"])
    if response_types != ["code"]:
        raise ClientMetadataError("invalid_client_metadata", "response_types must be "
                                  "[\"code\"] (the authorization code flow with PKCE)")
    method = doc.get("token_endpoint_auth_method", "none" if replace_secret_methods else None)
    if method in SECRET_METHODS and replace_secret_methods:
        method = "none"
    if method != "none":
        raise ClientMetadataError("invalid_client_metadata", f"token_endpoint_auth_method "
                                  f"must be none: clients registered here are public clients "
                                  f"with PKCE S256 (not {str(method)[:60]!r})")
    return {"redirect_uris": list(uris), "grant_types": list(dict.fromkeys(grant_types)),
            "response_types": ["code"], "token_endpoint_auth_method": "none",
            **{k: v for k in ("client_name", "scope", "client_uri", "software_id",
                              "software_version") if (v := _text(doc, k)) is not None}}


def client_of(client_id: str, metadata: Mapping[str, Any], registration: str) -> Client:
    return Client(client_id=client_id, public=True,
                  grant_types=frozenset(metadata["grant_types"]),
                  redirect_uris=tuple(metadata["redirect_uris"]), registration=registration,
                  client_name=metadata.get("client_name"))


@dataclass
class _Entry:
    client: Client
    information: dict[str, Any]
    last_used: float


class RegisteredClients:
    """The clients that registered themselves: bounded, least recently used first out."""

    def __init__(self, *, max_clients: int, idle_ttl: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_clients = max_clients
        self.idle_ttl = idle_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, client_id: str) -> Client | None:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(client_id)
            if entry is None:
                return None
            if entry.last_used + self.idle_ttl <= now:
                del self._entries[client_id]
                return None
            entry.last_used = now
            self._entries.move_to_end(client_id)
            return entry.client

    def unknown_reason(self, client_id: str) -> str | None:
        return None

    def add(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        """Register a client; its client information response (RFC 7591 §3.2.1)."""
        now = self._clock()
        client_id = f"dcr-{secrets.token_urlsafe(16)}"
        information = {"client_id": client_id, "client_id_issued_at": int(now), **metadata}
        with self._lock:
            for stale in [k for k, e in self._entries.items()
                          if e.last_used + self.idle_ttl <= now]:
                del self._entries[stale]
            while len(self._entries) >= self.max_clients:
                self._entries.popitem(last=False)
                self.evicted += 1
            self._entries[client_id] = _Entry(client_of(client_id, metadata,
                                                        REGISTRATION_DYNAMIC),
                                              information, now)
        return information


class ClientRegistration:
    """The registration endpoint (RFC 7591 §3)."""

    def __init__(self, settings: RegistrationSettings, store: RegisteredClients,
                 audit: AuditTrail) -> None:
        self.settings = settings
        self.store = store
        self.audit = audit

    async def register(self, request: Request) -> JSONResponse:
        if not self.settings.dynamic_registration:
            return ClientMetadataError("invalid_client_metadata", "this tenant does not "
                                       "register clients dynamically (the tenant admin's "
                                       "setting)").response()
        body = await request.body()
        try:
            if len(body) > MAX_BODY:
                raise ClientMetadataError("invalid_client_metadata", f"the registration "
                                          f"request is larger than {MAX_BODY} bytes")
            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise ClientMetadataError("invalid_client_metadata", "the registration "
                                          "request is not JSON (RFC 7591 §3.1)") from exc
            metadata = public_client_metadata(doc, replace_secret_methods=True)
        except ClientMetadataError as exc:
            self.audit.record(Decision(kind="client_registration", outcome="refused",
                                       error=exc.error, reason=exc.description))
            return exc.response()
        information = self.store.add(metadata)
        self.audit.record(Decision(kind="client_registration", outcome="registered",
                                   client_id=information["client_id"],
                                   reason=f"{metadata.get('client_name') or 'a client'} "
                                          f"registered itself (RFC 7591)"))
        return JSONResponse(information, status_code=201, headers=NO_STORE)
