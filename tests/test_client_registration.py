"""RFC 7591 dynamic client registration at the simulated Verify, and the official Python `mcp`
SDK onboarding by itself with it (issue #18 item 1): knowing only the MCP server's URL, the
SDK discovers (RFC 9728, RFC 8414), registers, signs the user in (code + PKCE S256, the passkey
by the lab's software authenticator), lists the tools and makes a tier-1 call.

Refusals are RFC 7591 §3.2.2 errors (`invalid_redirect_uri`, `invalid_client_metadata`) with a
sentence, never a 5xx, and nothing is registered; a registered client's sign-in with PKCE
`plain` or an unregistered redirect URI is refused and no code is issued.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import jwt
import pytest
from mcp.client.auth import OAuthClientProvider

from harness.lab import Lab
from harness.verify.client_auth import loopback_redirect_matches
from harness.verify.client_registration import RegisteredClients, public_client_metadata
from harness.verify.login import LoginError, login
from iia.protocol import REGISTERED_CLIENT_CLAIM
from tests.mcp_sdk_oauth import (
    HeadlessBrowser,
    MemoryStorage,
    sdk_client_metadata,
    sdk_session,
)

EMAIL = "carol@example.com"


def claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def register(lab: Lab, body: Any) -> httpx.Response:
    endpoint = lab.verify.metadata()["registration_endpoint"]
    if isinstance(body, bytes):
        return httpx.post(endpoint, content=body, timeout=10,
                          headers={"Content-Type": "application/json"})
    return httpx.post(endpoint, json=body, timeout=10)


class NothingRegistered:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.count = len(lab.verify.registered)
        self.sessions = len(lab.verify.sessions._sessions)

    def happened(self) -> None:
        assert len(self.lab.verify.registered) == self.count
        assert len(self.lab.verify.sessions._sessions) == self.sessions


# -- the metadata advertises registration ----------------------------------------------------

def test_the_tenant_metadata_advertises_registration_and_metadata_documents(lab: Lab) -> None:
    meta = httpx.get(f"{lab.verify.issuer}/.well-known/openid-configuration", timeout=10).json()
    assert meta["registration_endpoint"] == f"{lab.verify.issuer}/register"
    assert meta["client_id_metadata_document_supported"] is True
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    assert meta["code_challenge_methods_supported"] == ["S256"]


# -- the official SDK registers itself and calls a tool ---------------------------------------

def test_the_python_sdk_knowing_only_the_mcp_url_registers_signs_in_and_calls_a_tool(
        lab: Lab) -> None:
    storage = MemoryStorage()
    browser = HeadlessBrowser(EMAIL)
    provider = OAuthClientProvider(lab.mcp_url, sdk_client_metadata(), storage,
                                   redirect_handler=browser.redirect,
                                   callback_handler=browser.callback)
    before = len(lab.verify.registered)
    tools, result = anyio.run(sdk_session, lab.mcp_url, provider)
    assert "list_users" in tools and "create_user" in tools
    assert result.is_error is False, result
    # the SDK registered (RFC 7591) as a public client, and its token says so
    info = storage.client_info
    assert info is not None and info.client_id.startswith("dcr-")
    assert info.token_endpoint_auth_method == "none" and info.client_secret is None
    assert len(lab.verify.registered) == before + 1
    assert storage.tokens is not None
    token = claims(storage.tokens.access_token)
    assert token["client_id"] == info.client_id and token["aud"] == lab.mcp_url
    assert token[REGISTERED_CLIENT_CLAIM] == "rfc7591" and token["email"] == EMAIL
    # the authorization request was code + PKCE S256 with the resource (RFC 8707)
    query = parse_qs(urlsplit(browser.visits[0]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["resource"] == [lab.mcp_url]
    # the tier-1 call ran for the user, through the whole chain
    sid = token["sid"]
    assert [o.tool for s, o in lab.mcp.chain.history if s == sid and o.ok] == ["list_users"]


# -- what a registration may ask for ------------------------------------------------------------

def test_a_registration_is_a_public_client_with_the_metadata_it_asked_for(lab: Lab) -> None:
    response = register(lab, {"redirect_uris": ["http://127.0.0.1:9/cb",
                                                "http://[::1]/cb", "https://app.example/cb"],
                              "client_name": "A native client",
                              "token_endpoint_auth_method": "client_secret_basic"})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    info = response.json()
    # RFC 7591 §3.2.1: the server replaced the secret-based method; no secret is issued
    assert info["token_endpoint_auth_method"] == "none" and "client_secret" not in info
    assert info["grant_types"] == ["authorization_code"]
    assert info["response_types"] == ["code"] and info["client_name"] == "A native client"
    assert isinstance(info["client_id_issued_at"], int)
    client = lab.verify.clients.get(info["client_id"])
    assert client is not None and client.public and client.registration == "rfc7591"


@pytest.mark.parametrize(("body", "error", "words"), [
    ({"redirect_uris": ["http://app.example/cb"]}, "invalid_redirect_uri",
     "plain http on a host other than the loopback interface"),
    ({"redirect_uris": ["http://127.0.0.1/cb#x"]}, "invalid_redirect_uri", "fragment"),
    ({"redirect_uris": ["ftp://127.0.0.1/cb"]}, "invalid_redirect_uri", "not an https"),
    ({"redirect_uris": ["http://u:p@127.0.0.1/cb"]}, "invalid_redirect_uri", "user information"),
    ({"redirect_uris": []}, "invalid_redirect_uri", "redirect_uris is required"),
    ({"client_name": "no uris"}, "invalid_redirect_uri", "redirect_uris is required"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "grant_types": ["client_credentials"]},
     "invalid_client_metadata", "authorization_code"),
    ({"redirect_uris": ["http://127.0.0.1/cb"],
      "grant_types": ["authorization_code", "urn:openid:params:grant-type:ciba"]},
     "invalid_client_metadata", "authorization_code (+ refresh_token) only"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "response_types": ["token"]},
     "invalid_client_metadata", "response_types"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "private_key_jwt"},
     "invalid_client_metadata", "public clients"),
    ({"redirect_uris": ["http://127.0.0.1/cb"], "client_secret": "mine"},
     "invalid_client_metadata", "no client_secret"),
    (["not", "an", "object"], "invalid_client_metadata", "JSON object"),
    (b"{not json", "invalid_client_metadata", "not JSON"),
    (b'{"redirect_uris": ["http://127.0.0.1/cb"], "client_name": "' + b"x" * 17000 + b'"}',
     "invalid_client_metadata", "larger than"),
])
def test_a_bad_registration_is_refused_with_its_rfc7591_code_and_nothing_registered(
        lab: Lab, body: Any, error: str, words: str) -> None:
    nothing = NothingRegistered(lab)
    response = register(lab, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert words in response.json()["error_description"]
    nothing.happened()


# -- the registered client at the authorization endpoint ---------------------------------------

@pytest.fixture
def registered(lab: Lab) -> str:
    response = register(lab, {"redirect_uris": ["http://localhost/callback",
                                                "http://127.0.0.1/oauth/callback"],
                              "grant_types": ["authorization_code", "refresh_token"],
                              "client_name": "Registered test client"})
    assert response.status_code == 201, response.text
    return str(response.json()["client_id"])


@pytest.mark.parametrize("redirect_uri", ["http://localhost:41234/callback",
                                          "http://127.0.0.1:5/oauth/callback"])
def test_a_registered_client_signs_in_on_a_loopback_redirect_on_any_port(
        lab: Lab, registered: str, redirect_uri: str) -> None:
    tokens = login(lab.verify.issuer, EMAIL, client_id=registered, redirect_uri=redirect_uri,
                   resource=lab.mcp_url)
    token = claims(tokens["access_token"])
    assert token["client_id"] == registered and token[REGISTERED_CLIENT_CLAIM] == "rfc7591"


def _authorize(lab: Lab, client_id: str, redirect_uri: str, **extra: str) -> httpx.Response:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
              "state": "s", "code_challenge": challenge, "code_challenge_method": "S256",
              "resource": lab.mcp_url, "login_hint": EMAIL, **extra}
    return httpx.get(f"{lab.verify.oidc.public_url}/oidc/endpoint/default/authorize",
                     params=params, timeout=10)


def test_pkce_plain_is_refused_for_a_registered_client_and_no_code_issued(
        lab: Lab, registered: str) -> None:
    nothing = NothingRegistered(lab)
    codes = len(lab.verify.oidc._codes)
    response = _authorize(lab, registered, "http://localhost/callback",
                          code_challenge="a" * 43, code_challenge_method="plain")
    assert response.status_code == 302
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["invalid_request"]
    assert "plain is refused" in query["error_description"][0]
    assert "code" not in query and len(lab.verify.oidc._codes) == codes
    nothing.happened()


@pytest.mark.parametrize("redirect_uri", ["http://localhost/elsewhere",
                                          "http://127.0.0.1/callback",  # localhost registered
                                          "https://localhost/callback",
                                          "http://localhost:80x/callback"])
def test_an_unregistered_redirect_uri_is_refused_and_redirects_nowhere(
        lab: Lab, registered: str, redirect_uri: str) -> None:
    nothing = NothingRegistered(lab)
    response = _authorize(lab, registered, redirect_uri)
    assert response.status_code == 400 and "location" not in response.headers
    assert "redirect" in response.text.lower()
    nothing.happened()
    with pytest.raises(LoginError):
        login(lab.verify.issuer, EMAIL, client_id=registered, redirect_uri=redirect_uri,
              resource=lab.mcp_url)


def test_loopback_redirect_uris_match_on_any_port_and_nothing_else() -> None:
    assert loopback_redirect_matches("http://[::1]/cb", "http://[::1]:8123/cb")
    assert loopback_redirect_matches("http://localhost:3000/cb", "http://localhost:9/cb")
    assert loopback_redirect_matches("http://127.0.0.1/cb", "http://127.0.0.1:1/cb")
    assert not loopback_redirect_matches("http://127.0.0.1/cb", "http://localhost:1/cb")
    assert not loopback_redirect_matches("http://127.0.0.1/cb", "http://127.0.0.1:1/cb/x")
    assert not loopback_redirect_matches("http://127.0.0.1/cb", "http://127.0.0.1:1/cb#f")
    assert not loopback_redirect_matches("https://app.example/cb", "https://app.example:1/cb")


# -- the bounded store ---------------------------------------------------------------------------

def test_the_registration_store_is_bounded_least_recently_used_out_and_idle_ones_lapse() -> None:
    now = [1000.0]
    store = RegisteredClients(max_clients=2, idle_ttl=60, clock=lambda: now[0])
    metadata = public_client_metadata({"redirect_uris": ["http://127.0.0.1/cb"]},
                                      replace_secret_methods=True)
    first = store.add(metadata)["client_id"]
    second = store.add(metadata)["client_id"]
    assert store.get(first) is not None  # used: now the second is the least recently used
    third = store.add(metadata)["client_id"]
    assert len(store) == 2 and store.evicted == 1
    assert store.get(second) is None
    assert store.get(first) is not None and store.get(third) is not None
    now[0] += 61  # unused for longer than idle_ttl: lapsed
    assert store.get(first) is None and store.get(third) is None and len(store) == 0


# -- the tenant's setting: may registered clients use the agent? --------------------------------

def test_with_agent_access_off_a_registered_client_is_refused_and_nothing_runs(
        lab: Lab, registered: str) -> None:
    live = login(lab.verify.issuer, EMAIL, client_id=registered,
                 redirect_uri="http://localhost/callback", resource=lab.mcp_url)
    sid = claims(live["access_token"])["sid"]
    lab.verify.set_registered_client_access(False)
    try:
        # the live session of the registered client ended with the switch
        assert not lab.verify.sessions.alive(sid)
        nothing = NothingRegistered(lab)
        with pytest.raises(LoginError, match="unauthorized_client: Registered test client is "
                                             "a registered client"):
            login(lab.verify.issuer, EMAIL, client_id=registered,
                  redirect_uri="http://localhost/callback", resource=lab.mcp_url)
        nothing.happened()
        # a token of that client without the tenant's client_registration claim (what the
        # tenant issues no more) is refused by the MCP server: 401 invalid_token, no tool runs
        base = claims(login(lab.verify.issuer, EMAIL, resource=lab.mcp_url)["access_token"])
        bare = lab.verify.keys.sign({**base, "client_id": registered}, typ="at+jwt")
        calls = len(lab.mcp.chain.history)
        requests = len(lab.verify.admin_api.requests)
        response = httpx.post(lab.mcp_url, timeout=30, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "list_users", "arguments": {"count": 1}}}, headers={
            "Authorization": f"Bearer {bare}", "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25"})
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert f"issued to the client '{registered}'" in response.json()["error"]["message"]
        assert len(lab.mcp.chain.history) == calls
        assert len(lab.verify.admin_api.requests) == requests
    finally:
        lab.verify.set_registered_client_access(True)
