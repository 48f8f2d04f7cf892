"""Log a demo user in through the real authorization code + PKCE flow, without a browser.

What a browser would do: GET the authorization endpoint with `login_hint` (the lab tenant skips
its login page then), read the code from the redirect, and redeem it at the token endpoint with
the PKCE verifier. `iia-lab token USER`, the notebooks and the tests use it.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

__all__ = ["LoginError", "login"]


class LoginError(RuntimeError):
    """The login did not produce tokens; the message carries the tenant's error."""


def login(issuer: str, email: str, *, client_id: str = "iia-ui",
          redirect_uri: str = "http://127.0.0.1/callback", resource: str | None = None,
          scope: str = "openid email profile", timeout: float = 10.0) -> dict[str, Any]:
    """Return the token response (access_token, id_token, refresh_token, expires_in...)."""
    with httpx.Client(timeout=timeout) as http:
        meta = http.get(issuer.rstrip("/") + "/.well-known/openid-configuration").json()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        state = secrets.token_urlsafe(16)
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
                  "scope": scope, "state": state, "nonce": secrets.token_urlsafe(16),
                  "code_challenge": challenge, "code_challenge_method": "S256",
                  "login_hint": email}
        if resource:
            params["resource"] = resource
        response = http.get(meta["authorization_endpoint"], params=params,
                            follow_redirects=False)
        if response.status_code != 302:
            raise LoginError(f"authorization endpoint answered HTTP {response.status_code}")
        query = parse_qs(urlsplit(response.headers["location"]).query)
        if "error" in query:
            raise LoginError(f"{query['error'][0]}: {query.get('error_description', [''])[0]}")
        if query.get("state") != [state]:
            raise LoginError("the authorization response's state does not match")
        if query.get("iss") != [meta["issuer"]]:
            raise LoginError("the authorization response names another issuer (RFC 9207)")
        tokens = http.post(meta["token_endpoint"], data={
            "grant_type": "authorization_code", "code": query["code"][0],
            "redirect_uri": redirect_uri, "client_id": client_id, "code_verifier": verifier})
        body = tokens.json()
        if tokens.status_code != 200:
            raise LoginError(f"{body.get('error')}: {body.get('error_description')}")
        return body
