"""Calls to an authorization server's token endpoint (RFC 6749 §3.2), authenticated with
`client_secret_basic` (§2.3.1), with error bodies turned into typed `OAuthError`s (§5.2)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from iia.errors import DependencyError
from iia.identity.vault import ClientCredential
from iia.oauth.errors import OAuthError, error_from_response

__all__ = ["IdpUnavailableError", "TokenEndpoint", "discover"]


class IdpUnavailableError(DependencyError):
    code = "idp_unavailable"

    def __init__(self, description: str, *, upstream_code: str | None = None) -> None:
        super().__init__(description, dependency="idp", upstream_code=upstream_code)


def discover(issuer: str, *, http: httpx.Client | None = None,
             timeout: float = 5.0) -> dict[str, Any]:
    """Fetch the OpenID Provider metadata of `issuer` (OpenID Connect Discovery 1.0 §4)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    client = http or httpx.Client(timeout=timeout)
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise IdpUnavailableError(f"the identity provider at {issuer} is unreachable "
                                  f"({exc.__class__.__name__})") from exc
    finally:
        if http is None:
            client.close()
    if response.status_code != 200:
        raise IdpUnavailableError(f"OIDC discovery at {url} answered HTTP {response.status_code}",
                                  upstream_code=str(response.status_code))
    metadata = response.json()
    if metadata.get("issuer") != issuer.rstrip("/"):
        raise IdpUnavailableError(f"OIDC discovery at {url} names issuer "
                                  f"{metadata.get('issuer')!r}, not {issuer!r}")
    return metadata


def _basic(credential: ClientCredential) -> str:
    pair = f"{quote(credential.client_id, safe='')}:{quote(credential.client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


class TokenEndpoint:
    def __init__(self, url: str, *, http: httpx.Client | None = None, timeout: float = 5.0):
        self.url = url
        self._http = http or httpx.Client(timeout=timeout)

    def request(self, form: Mapping[str, str], credential: ClientCredential) -> dict[str, Any]:
        """POST a token request; return the token response or raise the typed OAuth error."""
        try:
            response = self._http.post(self.url, data=dict(form),
                                       headers={"Authorization": _basic(credential),
                                                "Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IdpUnavailableError(f"the token endpoint {self.url} is unreachable "
                                      f"({exc.__class__.__name__})") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 200 and isinstance(body, dict) and "access_token" in body:
            return body
        if response.status_code >= 500:
            raise IdpUnavailableError(f"the token endpoint answered HTTP {response.status_code}",
                                      upstream_code=str(response.status_code))
        error: OAuthError = error_from_response(response.status_code, body)
        raise error

    def close(self) -> None:
        self._http.close()
