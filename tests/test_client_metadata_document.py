"""Client ID Metadata Documents at the simulated Verify (draft-ietf-oauth-client-id-metadata-
document, MCP authorization spec 2025-11-25), and the official Python `mcp` SDK using one
(`client_metadata_url`) from the MCP server's URL alone (issue #18 item 1).

The client's document is served by a real HTTPS server on 127.0.0.1 with a certificate made
for the test; the tenant's fetcher trusts that certificate (the one product state this test
sets, as a tenant would be given a CA). Refusals: a document naming another client_id, a
non-loopback http redirect URI in it, a secret-based auth method, an oversized document, a
URL that is no document URL — each `invalid_client` with the reason, no session, no code.
"""

from __future__ import annotations

from typing import Any

import anyio
import jwt
import pytest
from mcp.client.auth import OAuthClientProvider

from harness.lab import Lab
from harness.verify.login import LoginError, login
from iia.protocol import REGISTERED_CLIENT_CLAIM
from tests.cimd_documents import DocumentServer, cimd_site  # noqa: F401 - `documents`
from tests.mcp_sdk_oauth import HeadlessBrowser, MemoryStorage, sdk_client_metadata, sdk_session

EMAIL = "carol@example.com"
REDIRECT = "http://localhost:33419/callback"
GOOD = {"client_name": "CIMD test client", "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "token_endpoint_auth_method": "none"}


def test_the_python_sdk_with_a_client_metadata_url_signs_in_and_calls_a_tool(
        lab: Lab, documents: DocumentServer) -> None:
    url = documents.publish("/oauth/client.json", GOOD)
    storage, browser = MemoryStorage(), HeadlessBrowser(EMAIL)
    registered = len(lab.verify.registered)
    provider = OAuthClientProvider(lab.mcp_url, sdk_client_metadata(REDIRECT), storage,
                                   redirect_handler=browser.redirect,
                                   callback_handler=browser.callback, client_metadata_url=url)
    tools, result = anyio.run(sdk_session, lab.mcp_url, provider)
    assert "list_users" in tools and result.is_error is False, result
    assert storage.client_info is not None and storage.client_info.client_id == url
    assert len(lab.verify.registered) == registered  # no RFC 7591 registration: the document
    assert documents.requests.count("/oauth/client.json") == 1  # fetched once, then cached
    assert storage.tokens is not None
    token = jwt.decode(storage.tokens.access_token, options={"verify_signature": False})
    assert token["client_id"] == url and token[REGISTERED_CLIENT_CLAIM] == "cimd"


@pytest.mark.parametrize(("path", "doc", "words"), [
    ("/other.json", {**GOOD, "client_id": "https://127.0.0.1/not-this-one.json"},
     "is not its own URL"),
    ("/http.json", {**GOOD, "redirect_uris": ["http://app.example/callback"]},
     "plain http on a host other than the loopback interface"),
    ("/secret.json", {**GOOD, "token_endpoint_auth_method": "client_secret_basic"},
     "must be none"),
    ("/none.json", {k: v for k, v in GOOD.items() if k != "token_endpoint_auth_method"},
     "must be none"),
    ("/big.json", {**GOOD, "client_name": "x" * 6000}, "larger than 5120 bytes"),
    ("/notjson.json", b"<html>", "not JSON"),
])
def test_a_bad_metadata_document_makes_an_unknown_client_and_nothing_is_issued(
        lab: Lab, documents: DocumentServer, path: str, doc: Any, words: str) -> None:
    url = documents.publish(path, doc)
    sessions, codes = len(lab.verify.sessions._sessions), len(lab.verify.oidc._codes)
    with pytest.raises(LoginError, match="HTTP 400"):
        login(lab.verify.issuer, EMAIL, client_id=url, redirect_uri=REDIRECT,
              resource=lab.mcp_url)
    refused = [d for d in lab.verify.audit.decisions("client_metadata_document")
               if d.client_id == url]
    assert refused and refused[-1].error == "invalid_client" and words in refused[-1].reason
    assert words in lab.verify.clients.unknown_reason(url)
    assert len(lab.verify.sessions._sessions) == sessions
    assert len(lab.verify.oidc._codes) == codes


@pytest.mark.parametrize(("url", "words"), [
    ("https://127.0.0.1/", "must have a path"),
    ("https://127.0.0.1/a/../b.json", "'..' path segments"),
    ("http://app.example/client.json", "must be https"),
    ("http://127.0.0.1:9/client.json", "must be https (draft"),  # no loopback http either
    ("https://u:p@127.0.0.1/c.json", "user information"),
])
def test_a_url_that_is_no_document_url_is_never_fetched(
        lab: Lab, documents: DocumentServer, url: str, words: str) -> None:
    fetches = lab.verify.metadata_documents.fetches
    assert lab.verify.clients.get(url) is None
    assert words in lab.verify.clients.unknown_reason(url)
    assert lab.verify.metadata_documents.fetches == fetches
