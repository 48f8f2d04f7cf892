"""The official Python `mcp` SDK's OAuth client (`mcp.client.auth.OAuthClientProvider`) driven
against the lab knowing only the MCP server's URL, the user's sign-in done headlessly.

The SDK does what it does with any MCP server: 401 → RFC 9728 protected resource metadata →
RFC 8414 authorization server metadata → registration (RFC 7591, or a Client ID Metadata
Document when it has a `client_metadata_url` and the server supports them) → code + PKCE →
the call. Its `redirect_handler` hands the authorization URL to `HeadlessBrowser`, which does
what a browser and the user's phone do: follows the tenant's redirects, answers the sign-in
page's passkey ceremony with the lab's software authenticator (harness/verify/login.py) and
reads the code from the redirect to the client's loopback redirect URI (nothing listens there:
the browser stops at the redirect).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from harness.verify.login import complete_passkey_login

__all__ = ["HeadlessBrowser", "MemoryStorage", "SignInRefused", "sdk_client_metadata",
           "sdk_session"]


class SignInRefused(RuntimeError):
    """The tenant answered the authorization request with an error (RFC 6749 §4.1.2.1)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description


class MemoryStorage:
    """The SDK's TokenStorage, in memory."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class HeadlessBrowser:
    """The user's browser and phone for one sign-in, as `email`."""

    def __init__(self, email: str) -> None:
        self.email = email
        self.authorization_url: str | None = None
        self.visits: list[str] = []

    async def redirect(self, url: str) -> None:
        self.authorization_url = url
        self.visits.append(url)

    async def callback(self) -> AuthorizationCodeResult:
        assert self.authorization_url is not None
        url = self.authorization_url

        def sign_in() -> httpx.Response:
            with httpx.Client(timeout=30) as http:
                return complete_passkey_login(http, http.get(url, follow_redirects=False),
                                              self.email)

        response = await anyio.to_thread.run_sync(sign_in)
        if response.status_code != 302:
            raise SignInRefused("sign_in_page", f"HTTP {response.status_code}: "
                                f"{response.text[:300]}")
        query = parse_qs(urlsplit(response.headers["location"]).query)
        if "error" in query:
            raise SignInRefused(query["error"][0], query.get("error_description", [""])[0])
        return AuthorizationCodeResult(code=query["code"][0], state=query["state"][0],
                                       iss=query.get("iss", [None])[0])


def sdk_client_metadata(redirect_uri: str = "http://localhost:33418/callback",
                        **extra: Any) -> OAuthClientMetadata:
    return OAuthClientMetadata(redirect_uris=[redirect_uri], client_name="SDK test client",
                               grant_types=["authorization_code", "refresh_token"], **extra)


async def sdk_session(mcp_url: str, provider: OAuthClientProvider,
                      tool: str = "list_users",
                      arguments: dict[str, Any] | None = None) -> tuple[list[str], Any]:
    """tools/list, then one tool call, through the SDK's client with `provider` as its auth."""
    async with httpx2.AsyncClient(auth=provider, timeout=60) as http, \
            Client(streamable_http_client(mcp_url, http_client=http)) as client:
        tools = await client.list_tools()
        result = await client.call_tool(tool, arguments or {"count": 1})
    return [t.name for t in tools.tools], result
