"""CORS on the MCP endpoint and its Protected Resource Metadata (RFC 9728): only for the
origins IIA_CORS_ORIGINS names (iia.mcp_server.cors). A configured origin's preflight is
answered with that exact origin; any other origin gets no CORS header and nothing runs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.testclient import TestClient

from harness.lab import Lab
from iia.events import EventBus
from iia.identity import WorkloadIdentity
from iia.mcp_server import McpServer
from iia.settings import McpSettings
from tests.helpers import user_token

CHAT = "https://chat.example"
STRANGER = "https://evil.example"
METADATA = "/.well-known/oauth-protected-resource/mcp"
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "list_users", "arguments": {"count": 5}}}


@pytest.fixture(scope="module")
def token(lab: Lab) -> str:
    return str(user_token(lab)["access_token"])


@pytest.fixture
def server(lab_env: dict[str, str], identity: WorkloadIdentity,
           events: EventBus) -> Iterator[McpServer]:
    mcp = McpServer(McpSettings.from_env({**lab_env, "IIA_CORS_ORIGINS": CHAT}), identity,
                    events)
    yield mcp
    mcp.close()


@pytest.fixture
def client(server: McpServer) -> Iterator[TestClient]:
    # the lab's loopback Host, which the SDK's DNS-rebinding check accepts
    with TestClient(server.app(), base_url="http://127.0.0.1:8000") as test:
        yield test


def preflight(client: TestClient | httpx.Client, url: str, origin: str,
              method: str = "POST") -> httpx.Response:
    return client.options(url, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version"})


def post(client: TestClient, token: str | None, origin: str) -> httpx.Response:
    headers = {"Origin": origin, "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return client.post("/mcp", json=CALL, headers=headers)


def no_cors(response: httpx.Response) -> bool:
    return not [h for h in response.headers if h.lower().startswith("access-control-")]


def test_a_configured_origins_preflight_is_answered(client: TestClient) -> None:
    response = preflight(client, "/mcp", CHAT)
    assert response.status_code == 204, response.text
    assert response.headers["access-control-allow-origin"] == CHAT
    assert "access-control-allow-credentials" not in response.headers
    assert {"GET", "POST", "DELETE"} <= {
        m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "mcp-protocol-version", "mcp-session-id",
            "last-event-id"} <= allowed
    assert "Origin" in response.headers["vary"]


def test_a_configured_origin_calls_and_reads_the_challenge(client: TestClient, server: McpServer,
                                                          token: str) -> None:
    unauthenticated = post(client, None, CHAT)
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["access-control-allow-origin"] == CHAT
    exposed = {h.strip().lower() for h in
               unauthenticated.headers["access-control-expose-headers"].split(",")}
    assert {"www-authenticate", "mcp-session-id", "mcp-protocol-version"} <= exposed
    response = post(client, token, CHAT)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == CHAT
    assert response.json()["result"]["isError"] is False
    assert len(server.chain.history) == 1


def test_another_origin_gets_no_cors_and_nothing_runs(lab: Lab, client: TestClient,
                                                      server: McpServer, token: str) -> None:
    requests = len(lab.verify.admin_api.requests)
    refused = preflight(client, "/mcp", STRANGER)
    assert refused.status_code == 403 and no_cors(refused)
    assert refused.json()["error"]["data"]["error"] == "origin_not_allowed"
    for origin in (STRANGER, "null", CHAT + ":8443"):
        response = post(client, token, origin)
        assert response.status_code == 403, response.text
        assert no_cors(response)
        assert "IIA_CORS_ORIGINS" in response.json()["error"]["message"]
    assert len(server.chain.history) == 0 and len(lab.verify.admin_api.requests) == requests


def test_the_metadata_follows_the_same_rule(client: TestClient, lab: Lab) -> None:
    allowed = client.get(METADATA, headers={"Origin": CHAT})
    assert allowed.status_code == 200
    assert allowed.json()["resource"] == lab.mcp_url
    assert allowed.headers["access-control-allow-origin"] == CHAT
    assert preflight(client, METADATA, CHAT, "GET").status_code == 204
    for response in (client.get(METADATA, headers={"Origin": STRANGER}),
                     preflight(client, METADATA, STRANGER, "GET")):
        assert response.status_code == 403 and no_cors(response)
        assert response.json()["error"] == "origin_not_allowed"
    assert no_cors(client.get(METADATA))  # not a browser: served, nothing added


def test_a_loopback_origin_is_served_without_cors(client: TestClient, token: str) -> None:
    """What the SDK's DNS-rebinding check lets through (local tools) still works, but a page
    there gets no CORS header, so its browser will not show it the answer."""
    response = post(client, token, "http://localhost:6274")
    assert response.status_code == 200 and no_cors(response)


def test_unconfigured_no_origin_gets_cors(lab: Lab) -> None:
    """The lab's own server (IIA_CORS_ORIGINS unset): no origin is configured, so even a
    loopback page gets no CORS header; a client that sends no Origin is unaffected."""
    base = lab.mcp_url.rsplit("/mcp", 1)[0]
    with httpx.Client(timeout=10) as http:
        for origin in ("http://localhost:3000", CHAT):
            response = preflight(http, lab.mcp_url, origin)
            assert response.status_code == 403 and no_cors(response)
            metadata = http.get(base + METADATA, headers={"Origin": origin})
            assert no_cors(metadata)
        assert http.get(base + METADATA).json()["resource"] == lab.mcp_url


@pytest.mark.parametrize("value", ["https://chat.example/app", "*", "chat.example",
                                   "https://chat.example,"])
def test_a_setting_that_is_not_a_list_of_origins_is_refused(lab_env: dict[str, str],
                                                            value: str) -> None:
    from iia.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="IIA_CORS_ORIGINS"):
        McpSettings.from_env({**lab_env, "IIA_CORS_ORIGINS": value})
    assert McpSettings.from_env(lab_env).cors_origins == ()
    assert McpSettings.from_env({**lab_env, "IIA_CORS_ORIGINS": "HTTPS://Chat.example:443"}
                                ).cors_origins == (CHAT,)


def test_a_preflight_may_ask_for_mcp_param_headers(client: TestClient) -> None:
    response = client.options("/mcp", headers={
        "Origin": CHAT, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, mcp-param-user_id, x-other"})
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert "mcp-param-user_id" in allowed and "x-other" not in allowed
