"""Client authentication at the token endpoint (RFC 6749 §2.3.1).

Confidential clients authenticate with `client_secret_basic` (HTTP Basic, id and secret
form-urlencoded first) or `client_secret_post` (in the body) — exactly one method per request.
`iia-mcp-server`'s secret rotates on each successful use (see rotation.py).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from starlette.requests import Request

from harness.verify.errors import InvalidClient, InvalidRequest
from harness.verify.rotation import RotatingClientSecret

__all__ = ["Client", "ClientRegistry", "authenticate_client"]


@dataclass
class Client:
    client_id: str
    public: bool
    grant_types: frozenset[str]
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    secret: RotatingClientSecret | None = field(default=None, repr=False)


class ClientRegistry:
    def __init__(self, clients: Mapping[str, Client]) -> None:
        self._clients = dict(clients)

    def get(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def add(self, client: Client) -> None:
        self._clients[client.client_id] = client

    def remove(self, client_id: str) -> Client | None:
        """Unregister a client (its tokens and pushes stay as they are); None if unknown."""
        return self._clients.pop(client_id, None)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization")
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        client_id, _, secret = decoded.partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidClient("the Authorization header is not valid Basic credentials") from exc
    return unquote_plus(client_id), unquote_plus(secret)


def authenticate_client(request: Request, form: Mapping[str, str],
                        registry: ClientRegistry) -> Client:
    """Identify and authenticate the client of a token-endpoint request."""
    basic = _basic_credentials(request)
    if basic and "client_secret" in form:
        raise InvalidRequest("use one client authentication method, not two")
    if basic:
        client_id, secret = basic
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    if not client_id:
        raise InvalidClient("client authentication is required")
    client = registry.get(client_id)
    if client is None:
        raise InvalidClient(f"unknown client {client_id!r}")
    if client.public:
        if secret:
            raise InvalidClient(f"{client_id} is a public client and has no secret")
        return client
    if client.secret is None or not secret:
        raise InvalidClient(f"{client_id} must authenticate with its client secret")
    if not client.secret.authenticate(secret):
        raise InvalidClient(f"the client secret of {client_id} is stale or wrong; read the "
                            "current one from Vault")
    return client
