"""The tenant's OAuth clients and the words of a refused client authentication (RFC 6749 §2.3).

`Client` is authlib's client model (`ClientMixin`): authlib's `client_secret_basic`,
`client_secret_post` and `none` methods (harness/verify/authorization_server.py) authenticate a
request through `check_client_secret` and `check_endpoint_auth_method`. Confidential clients
use `client_secret_basic` (HTTP Basic, id and secret form-urlencoded first) or
`client_secret_post` (in the body) — exactly one method per request; public clients send only
their `client_id`. `iia-mcp-server`'s secret rotates on each successful use (see rotation.py).

authlib says only that "the client cannot authenticate"; `refusal` says why, from the request
alone (it never presents a secret again, which would rotate it).

Besides the tenant's own clients (fixtures/tenant/clients.json) the registry answers for the
clients that registered themselves (RFC 7591, harness/verify/client_registration.py) and for
Client ID Metadata Documents (an https URL as `client_id`, harness/verify/
client_metadata_document.py): both are `Source`s it asks in that order.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.errors import InvalidScopeError
from authlib.oauth2.rfc6749.util import extract_basic_authorization, scope_to_list

from harness.verify.rotation import RotatingClientSecret

__all__ = ["CONFIDENTIAL_AUTH_METHODS", "ID_TOKEN_ALGS", "LOOPBACK_HOSTS", "SCOPES_SUPPORTED",
           "Client", "ClientRegistry", "Source", "client_scopes", "id_token_alg",
           "loopback_redirect_matches", "refusal"]

# RFC 7591 §2 names of the methods a confidential client may authenticate with
CONFIDENTIAL_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# the scopes this tenant knows (RFC 8414 scopes_supported); any other is `invalid_scope`
SCOPES_SUPPORTED = ("openid", "email", "profile", "offline_access", "ssf.manage")
# OpenID Connect Dynamic Client Registration §2 id_token_signed_response_alg: RS256 when the
# client does not say (that section's default, and what OpenID Connect Discovery §3 requires)
ID_TOKEN_ALGS = ("RS256", "ES256")


def client_scopes(raw: Mapping[str, Any]) -> frozenset[str]:
    """RFC 7591 §2 `scope` of a registration (space-separated): the scopes the client may ask
    for, each known to this tenant; omitted, every scope this tenant knows (§2 lets the server
    register a default set)."""
    value = raw.get("scope")
    if value is None:
        return frozenset(SCOPES_SUPPORTED)
    scopes = scope_to_list(value) if isinstance(value, str) else None
    if not scopes or set(scopes) - set(SCOPES_SUPPORTED):
        raise ValueError(f"client {raw.get('client_id', '?')}: scope {value!r} must be a "
                         f"space-separated list of {', '.join(SCOPES_SUPPORTED)}")
    return frozenset(scopes)


def id_token_alg(raw: Mapping[str, Any]) -> str:
    """A registration's `id_token_signed_response_alg` (RS256 when omitted)."""
    alg = raw.get("id_token_signed_response_alg", "RS256")
    if alg not in ID_TOKEN_ALGS:
        raise ValueError(f"client {raw.get('client_id', '?')}: id_token_signed_response_alg "
                         f"{alg!r} is not one this tenant signs with ({', '.join(ID_TOKEN_ALGS)})")
    return str(alg)


# the loopback interface as a redirect URI names it (urlsplit's hostname: no brackets on [::1]);
# RFC 8252 §7.3 names the IP literals, §8.3 discourages but does not forbid `localhost`, which
# native MCP clients use (the Inspector's http://localhost:6274/oauth/callback)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def loopback_redirect_matches(registered: str, presented: str) -> bool:
    """Exact match, except that a loopback redirect URI matches on any port (RFC 8252 §7.3):
    same scheme (http), same host, same path and query, any port, no fragment."""
    if registered == presented:
        return True
    r, p = urlsplit(registered), urlsplit(presented)
    if r.scheme != "http" or p.scheme != "http" or r.hostname not in LOOPBACK_HOSTS:
        return False
    try:
        p.port  # noqa: B018 - a port that is no number is no redirect URI
    except ValueError:
        return False
    return (r.hostname == p.hostname and r.path == p.path and r.query == p.query
            and not p.fragment and not p.username and not p.password)


class IssuedClientSecret:
    """A confidential client's secret made when the tenant starts, kept in memory only and
    handed to the one who runs the client (the lab gives it to an outside SSF receiver's
    process); `"secret": "generated"` in clients.json. It does not rotate."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.value = secrets.token_urlsafe(32)

    def authenticate(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.value.encode())


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    public: bool
    grant_types: frozenset[str]
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    secret: RotatingClientSecret | IssuedClientSecret | None = field(default=None,
                                                                       repr=False)
    # OpenID CIBA Core §4 client metadata: how tokens reach a CIBA client ("poll" or "ping")
    # and, in ping mode, the URL the OP POSTs its callback to (§10.2)
    backchannel_token_delivery_mode: str = "poll"  # noqa: S105 - a mode's name, no secret
    backchannel_client_notification_endpoint: str | None = None
    # how the client came to be known: None for the tenant's own clients, "rfc7591" for one
    # that registered itself, "cimd" for a Client ID Metadata Document (iia.protocol)
    registration: str | None = None
    client_name: str | None = None
    # RFC 7591 §2 `scope`: what the client may ask for; OpenID Connect Dynamic Client
    # Registration §2: the algorithm of its ID tokens
    scopes: frozenset[str] = frozenset(SCOPES_SUPPORTED)
    id_token_signed_response_alg: str = "RS256"  # noqa: S105 - an algorithm, no secret

    # -- authlib's ClientMixin ----------------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return None  # every authorization request names its redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str:
        """RFC 6749 §3.3: the requested scope when the client is registered for all of it
        (else `invalid_scope`, RFC 6749 §4.1.2.1 / §5.2); omitted, `openid`."""
        unregistered = sorted(set(scope_to_list(scope) or []) - self.scopes)
        if unregistered:
            raise InvalidScopeError(
                f"{self.client_id} is not registered for the scope "
                f"{' '.join(unregistered)} (registered: {' '.join(sorted(self.scopes))})")
        return scope or "openid"

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return any(loopback_redirect_matches(r, redirect_uri) for r in self.redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        """The current secret (which then rotates) or one still in its grace window."""
        if self.secret is None:
            return False
        return self.secret.authenticate(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none" if self.public else method in CONFIDENTIAL_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


class Source(Protocol):
    """Clients the tenant did not configure: registered ones, metadata documents."""

    def get(self, client_id: str) -> Client | None: ...

    def unknown_reason(self, client_id: str) -> str | None:
        """Why `client_id` is no client of this source, when it looked like one (else None)."""
        ...


class ClientRegistry:
    def __init__(self, clients: Mapping[str, Client], sources: Sequence[Source] = ()) -> None:
        self._clients = dict(clients)
        self.sources = list(sources)

    def get(self, client_id: str) -> Client | None:
        client = self._clients.get(client_id)
        for source in self.sources:
            if client is not None:
                break
            client = source.get(client_id)
        return client

    def unknown_reason(self, client_id: str) -> str:
        """The sentence for a client_id no client answers to."""
        for source in self.sources:
            reason = source.unknown_reason(client_id)
            if reason:
                return reason
        return f"unknown client {client_id[:200]!r}"

    def add(self, client: Client) -> None:
        self._clients[client.client_id] = client

    def remove(self, client_id: str) -> Client | None:
        """Unregister a client (its tokens and pushes stay as they are); None if unknown."""
        return self._clients.pop(client_id, None)


def refusal(headers: Mapping[str, str], form: Mapping[str, str], registry: ClientRegistry,
            endpoint: str) -> str:
    """Why client authentication of this request failed, in a sentence for the caller."""
    basic_id, _ = extract_basic_authorization(headers)
    client_id = basic_id or form.get("client_id", "")
    if not client_id:
        return "client authentication is required"
    client = registry.get(client_id)
    if client is None:
        return registry.unknown_reason(client_id)
    if client.public:
        if endpoint == "introspection":
            return "introspection is for confidential clients (RFC 7662 §2.1)"
        return f"{client_id} is a public client and has no secret"
    if client.secret is None or not (basic_id or form.get("client_secret")):
        return f"{client_id} must authenticate with its client secret"
    return (f"the client secret of {client_id} is stale or wrong; read the current one from "
            "Vault")
