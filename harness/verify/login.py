"""Log a demo user in through the real authorization code + PKCE flow, without a browser.

What a browser does: GET the authorization endpoint (`login_hint` says whose passkey to ask
for), follow it to the sign-in page at http://localhost:PORT, answer its WebAuthn ceremony with
the user's passkey (here: the lab's software authenticator, harness/authenticator.py), post the
assertion back, read the code from the redirect, and redeem it at the token endpoint with the
PKCE verifier. `iia-lab token USER`, the notebooks and the tests use it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from harness.authenticator import AuthenticatorError, SoftwareAuthenticator, for_origin

__all__ = ["LoginError", "complete_passkey_login", "login", "passkey_request"]

_REQUEST = re.compile(
    r"<script type='application/json' id='passkey-request'>(.*?)</script>", re.DOTALL)


class LoginError(RuntimeError):
    """The login did not produce tokens; the message carries the tenant's error."""


def passkey_request(page: str) -> dict[str, Any] | None:
    """The sign-in page's ceremony ({ceremony, publicKey, action, form}), None if it has none."""
    found = _REQUEST.search(page)
    if found is None:
        return None
    parsed: dict[str, Any] = json.loads(found.group(1))  # JSON reads "<\\/" as "</"
    return parsed


def complete_passkey_login(http: httpx.Client, response: httpx.Response, email: str,
                           authenticator: SoftwareAuthenticator | None = None,
                           max_hops: int = 5) -> httpx.Response:
    """Follow `response` through the tenant's sign-in page as a browser would, answering its
    passkey ceremony as `email` with the software authenticator; returns the first response
    that is neither a redirect inside the tenant nor the sign-in page (normally the 302 to the
    client's redirect URI)."""
    for _ in range(max_hops):
        if response.status_code in (301, 302, 303, 307) and \
                "/oidc/endpoint/" in urlsplit(response.headers["location"]).path:
            response = http.get(response.headers["location"], follow_redirects=False)
            continue
        request = passkey_request(response.text) if response.status_code == 200 else None
        if request is None:
            return response
        parts = urlsplit(str(response.url))
        origin = f"{parts.scheme}://{parts.netloc}"
        try:
            signer = authenticator or for_origin(origin)
            assertion = signer.get(request["publicKey"], origin, user_name=email)
        except AuthenticatorError as exc:
            raise LoginError(f"no passkey of {email} to sign in with: {exc}") from exc
        response = http.post(request["action"], data={
            **request["form"], "passkey_ceremony": request["ceremony"],
            "passkey_credential": json.dumps(assertion)}, follow_redirects=False)
    raise LoginError("the sign-in did not end in a redirect")


def login(issuer: str, email: str, *, client_id: str = "iia-ui",
          redirect_uri: str = "http://127.0.0.1/callback", resource: str | None = None,
          scope: str = "openid email profile", timeout: float = 10.0,
          authenticator: SoftwareAuthenticator | None = None) -> dict[str, Any]:
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
        response = complete_passkey_login(
            http, http.get(meta["authorization_endpoint"], params=params,
                           follow_redirects=False), email, authenticator)
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
