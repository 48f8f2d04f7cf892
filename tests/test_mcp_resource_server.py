"""The MCP server as an OAuth resource server (MCP authorization spec, RFC 9728, RFC 6750)."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import httpx
import jwt
import pytest

from harness.keyset import SigningKey
from harness.lab import Lab
from iia.agent import McpUnavailableError, SessionEndedError
from tests.agent_helpers import mcp_call, mcp_tools
from tests.helpers import idp_stream_paused, user_token

INIT = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


def post(lab: Lab, token: str | None) -> httpx.Response:
    headers = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json",
               "MCP-Protocol-Version": "2025-11-25"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(lab.mcp_url, json=INIT, headers=headers, timeout=10)


def test_protected_resource_metadata(lab: Lab) -> None:
    origin = lab.mcp_url.rsplit("/mcp", 1)[0]
    meta = httpx.get(f"{origin}/.well-known/oauth-protected-resource/mcp").json()
    assert meta["resource"] == lab.mcp_url
    assert meta["authorization_servers"] == [lab.verify.issuer]


def test_no_token_is_401_with_resource_metadata(lab: Lab) -> None:
    response = post(lab, None)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'resource_metadata="' + lab.mcp_url.rsplit("/mcp", 1)[0] + \
        '/.well-known/oauth-protected-resource/mcp"' in challenge


@pytest.fixture(scope="module")
def alice(lab: Lab) -> dict:
    return user_token(lab)


def forged(lab: Lab, alice: dict) -> dict[str, str]:
    base = jwt.decode(alice["access_token"], options={"verify_signature": False})
    keys, now = lab.verify.keys, int(time.time())
    return {
        "expired": keys.sign({**base, "iat": now - 2000, "exp": now - 60}, typ="at+jwt"),
        "wrong audience": keys.sign({**base, "aud": "http://127.0.0.1:1/other"}, typ="at+jwt"),
        "foreign issuer": SigningKey.generate(now) and keys.sign(
            {**base, "iss": "https://evil.example"}, typ="at+jwt"),
        "stranger's key": keys.sign(base, typ="at+jwt", key=SigningKey.generate(now)),
        "an ID token": alice["id_token"],
        "a delegated (OBO) token": keys.sign({**base, "act": {"sub": "spiffe://x/y"}},
                                             typ="at+jwt"),
        "garbage": "not-a-token",
    }


@pytest.mark.parametrize("case", ["expired", "wrong audience", "foreign issuer",
                                  "stranger's key", "an ID token", "a delegated (OBO) token",
                                  "garbage"])
def test_bad_tokens_are_401_and_nothing_runs(lab: Lab, alice: dict, case: str) -> None:
    before = len(lab.verify.audit)
    response = post(lab, forged(lab, alice)[case])
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["error"]["code"] == -32001
    assert len(lab.verify.audit) == before  # nothing reached the IdP


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT"])
def test_both_rfc_9068_typ_spellings_are_access_tokens(lab: Lab, alice: dict, typ: str) -> None:
    """RFC 9068 §4: `at+jwt` and `application/at+jwt` (RFC 7515 §4.1.9: the media type with its
    prefix, compared case-insensitively)."""
    claims = jwt.decode(alice["access_token"], options={"verify_signature": False})
    response = post(lab, lab.verify.keys.sign(claims, typ=typ))
    assert response.status_code == 200, response.text
    assert "tools" in response.text


@pytest.mark.parametrize("typ", ["JWT", "application/jwt", "at+jwt+x", None])
def test_another_typ_or_none_is_not_an_access_token(lab: Lab, alice: dict,
                                                    typ: str | None) -> None:
    """Every claim right and the IdP's signature, but not typed as an access token (None: no
    typ at all, which authlib's own check would let through)."""
    claims = jwt.decode(alice["access_token"], options={"verify_signature": False})
    key = lab.verify.keys.current
    token = jwt.encode(claims, key.private_key, algorithm="ES256",
                       headers={"kid": key.kid, "typ": typ})
    calls, decisions = len(lab.mcp.chain.history), len(lab.verify.audit)
    response = post(lab, token)
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge and "not an access token" in challenge
    assert response.json()["error"]["code"] == -32001
    assert len(lab.mcp.chain.history) == calls and len(lab.verify.audit) == decisions


def test_the_tool_list_comes_from_the_catalog(lab: Lab, alice: dict) -> None:
    from iia.catalog import CATALOG

    tools = {t["name"]: t for t in mcp_tools(lab, alice["access_token"])}
    assert set(tools) == {t.name for t in CATALOG}
    assert tools["create_user"]["input_schema"]["required"] == ["user_name", "given_name",
                                                                "family_name"]
    assert "tier 4" in tools["delete_user"]["description"]


def test_jwks_is_cached_and_refetched_once_on_rotation(lab: Lab) -> None:
    verifier = lab.mcp.verifier
    tokens = [user_token(lab)["access_token"] for _ in range(3)]
    for token in tokens:
        assert post(lab, token).status_code == 200
    fetches = verifier.jwks.fetches
    for token in tokens:
        assert post(lab, token).status_code == 200
    assert verifier.jwks.fetches == fetches  # warm: no fetch
    time.sleep(verifier.min_refresh + 0.1)  # unknown-kid refetches are rate-limited
    lab.verify.keys.rotate()
    fresh = user_token(lab)["access_token"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: post(lab, fresh).status_code, range(8)))
    assert statuses == [200] * 8
    assert verifier.jwks.fetches == fetches + 1  # one refetch, shared by all eight
    assert post(lab, tokens[0]).status_code == 200  # the retired key still verifies


def test_a_revoked_session_gets_401(lab: Lab) -> None:
    tokens = user_token(lab)
    token = tokens["access_token"]
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    assert not mcp_call(lab, token, "list_users", {"count": 1}).is_error
    with idp_stream_paused(lab):  # the IdP's session-revoked SET held (test_idp_ssf has it)
        assert lab.verify.sessions.end(sid, "revoked by an administrator")
        # the IdP refuses the exchange for the dead session: the MCP server drops the session...
        result = mcp_call(lab, token, "list_users", {"count": 1})
        assert result.is_error and result.text.startswith("[session_revoked]")
    # ...and from then on the MCP request itself gets 401, with the reason
    with pytest.raises(SessionEndedError, match="session"):
        mcp_call(lab, token, "list_users", {"count": 1})
    assert post(lab, token).status_code == 401


def test_an_unreachable_idp_fails_closed_without_ending_the_session(lab: Lab) -> None:
    """The JWKS cannot be fetched: 503 (not invalid_token), the client is told the MCP server
    cannot check the token (not that the session ended), and the failed fetch is not retried on
    every request."""
    verifier = lab.mcp.verifier
    token = user_token(lab)["access_token"]
    calls = len(lab.mcp.chain.history)
    saved = verifier.jwks_uri
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    verifier.jwks_uri = f"http://127.0.0.1:{dead}/jwks"
    verifier.forget_keys()
    try:
        response = post(lab, token)
        assert response.status_code == 503
        assert "invalid_token" not in response.headers.get("www-authenticate", "")
        assert response.json()["error"]["code"] == -32002
        assert "signing keys" in response.json()["error"]["message"]
        failures = verifier.jwks.failures
        with pytest.raises(McpUnavailableError, match="cannot check the access token"):
            mcp_call(lab, token, "list_users", {"count": 1})
        assert verifier.jwks.failures == failures  # within min_refresh: no new fetch attempt
    finally:
        verifier.jwks_uri = saved
        verifier.forget_keys()
    assert len(lab.mcp.chain.history) == calls  # nothing ran
    assert post(lab, token).status_code == 200  # the IdP is back: the same token works


def test_tools_list_carries_annotations_from_the_catalog(lab: Lab, alice: dict) -> None:
    """The official Python SDK client's `tools/list`: every tool has a title and the hints
    the catalog derives (reads read-only and idempotent, the sensitive and blocked writes
    destructive, nothing open-world)."""
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def go() -> list:
        headers = {"Authorization": f"Bearer {alice['access_token']}"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http, \
                Client(streamable_http_client(lab.mcp_url, http_client=http)) as client:
            return list((await client.list_tools()).tools)

    tools = {t.name: t for t in asyncio.run(go())}
    hints = {name: t.annotations for name, t in tools.items()}
    assert all(h is not None for h in hints.values())
    assert tools["delete_user"].title == hints["delete_user"].title == "Delete user"
    reads = {"list_users", "get_user", "list_groups", "list_applications", "get_application",
             "list_access_policies", "get_access_policy"}
    destructive = {"deactivate_user", "revoke_user_sessions", "delete_user", "grant_admin_role"}
    for name, h in hints.items():
        assert h.read_only_hint is (name in reads), name
        assert h.destructive_hint is (name in destructive), name
        assert h.idempotent_hint is (name != "create_user"), name
        assert h.open_world_hint is False, name
