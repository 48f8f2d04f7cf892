"""The bindings of issue #12 on the product side, over real HTTP against the session lab:

* a user token is good at the MCP server only when it was issued to an allowed client
  (RFC 9068 §2.2 `client_id`; IIA_MCP_ALLOWED_CLIENTS);
* everyone's security events (`/events?scope=all`) are for tenant administrators only: members
  of IIA_ADMIN_GROUP_ID, as the IdP asserts it in the `groups` claim;
* the chat route's state-changing requests (every POST) refuse cross-origin browsers
  (`Origin`, `Sec-Fetch-Site`); the loopback security console refuses a foreign `Host`.

Each refusal is checked for its wire code and a sentence a person understands, and for nothing
having happened: no tool ran (admin API requests, the chain's history, the call's events), no
session ended.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import httpx
import jwt
import pytest

from harness.lab import Lab
from harness.verify.client_auth import Client
from harness.verify.login import complete_passkey_login, login
from iia.chat import COOKIE
from iia.errors import ConfigurationError
from iia.settings import ChatSettings, McpSettings

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "list_users", "arguments": {"count": 1}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}
PARTNER = "partner-portal"  # a second public app of the same tenant
SHORT_READ = httpx.Timeout(10, read=5.0)  # a stream opened where a refusal was due fails fast


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def call_tool(lab: Lab, token: str) -> httpx.Response:
    return httpx.post(lab.mcp_url, json=CALL, timeout=30,
                      headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"})


class Nothing:
    """What a refused request must leave as it was: the admin API's requests, the tool calls
    the chain ran, the IdP's decision record, and the events of one session."""

    def __init__(self, lab: Lab, sid: str) -> None:
        self.lab, self.sid = lab, sid
        self.requests = len(lab.verify.admin_api.requests)
        self.calls = len(lab.mcp.chain.history)
        self.audit = len(lab.verify.audit)
        self.cursor = lab.events.cursor()

    def happened(self) -> None:
        lab = self.lab
        assert len(lab.verify.admin_api.requests) == self.requests
        assert len(lab.mcp.chain.history) == self.calls
        assert len(lab.verify.audit) == self.audit
        events, _ = lab.events.since(self.cursor)
        assert [e.type for e in events if e.session_id == self.sid] == []


# -- 6. the MCP server accepts user tokens from allowed clients only ------------------------

@pytest.fixture
def partner(lab: Lab) -> Iterator[str]:
    """Another public application registered in the same tenant: its users get genuine user
    tokens for the MCP server's resource, issued to `partner-portal`."""
    lab.verify.clients.add(Client(client_id=PARTNER, public=True,
                                  grant_types=frozenset({"authorization_code", "refresh_token"}),
                                  redirect_uris=("http://127.0.0.1/callback",)))
    try:
        yield PARTNER
    finally:
        lab.verify.clients.remove(PARTNER)


def test_a_user_token_of_another_client_is_401_and_no_tool_runs(lab: Lab, partner: str) -> None:
    token = login(lab.verify.issuer, "carol@example.com", client_id=partner,
                  resource=lab.mcp_url)["access_token"]
    assert claims(token)["client_id"] == partner and claims(token)["aud"] == lab.mcp_url
    nothing = Nothing(lab, claims(token)["sid"])
    response = call_tool(lab, token)
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
    assert f"issued to the client '{partner}'" in challenge
    error = response.json()["error"]
    assert error["code"] == -32001
    assert error["message"] == (f"the access token was issued to the client '{partner}', which "
                                "may not call this MCP server")
    nothing.happened()
    # the same user through the chat's client is served: the refusal is about the client
    good = login(lab.verify.issuer, "carol@example.com", resource=lab.mcp_url)["access_token"]
    assert claims(good)["client_id"] == "iia-ui"
    served = call_tool(lab, good)
    assert served.status_code == 200 and served.json()["result"]["isError"] is False


def test_a_token_naming_the_mcp_servers_own_client_is_401(lab: Lab) -> None:
    """A token signed with the IdP's own key for this resource, but issued to the confidential
    `iia-mcp-server` client (the shape a CIBA receipt would have if it were aimed here)."""
    base = claims(login(lab.verify.issuer, "carol@example.com",
                        resource=lab.mcp_url)["access_token"])
    forged = lab.verify.keys.sign({**base, "client_id": "iia-mcp-server"}, typ="at+jwt")
    nothing = Nothing(lab, base["sid"])
    response = call_tool(lab, forged)
    assert response.status_code == 401
    assert "issued to the client 'iia-mcp-server'" in response.headers["www-authenticate"]
    nothing.happened()


def test_the_allowed_clients_setting_is_validated_on_construction(lab: Lab) -> None:
    env = lab.iia_env()
    assert McpSettings.from_env(env).allowed_clients == ("iia-ui",)  # the default: the chat
    two = McpSettings.from_env({**env, "IIA_MCP_ALLOWED_CLIENTS": " iia-ui, partner-portal "})
    assert two.allowed_clients == ("iia-ui", "partner-portal")
    for bad in (" , ", "iia-ui,,x", "iia ui", "iia-ui,\"x\""):
        with pytest.raises(ConfigurationError, match="IIA_MCP_ALLOWED_CLIENTS"):
            McpSettings.from_env(env, allowed_clients=bad)


# -- 7. everyone's security events are for tenant administrators ----------------------------

def sign_in(lab: Lab, email: str) -> httpx.Client:
    browser = httpx.Client(base_url=lab.endpoints["chat"], timeout=30)
    response = complete_passkey_login(  # the tenant's passkey sign-in page, and back
        browser, browser.get("/auth/login", params={"login_hint": email}), email)
    hops = 0
    while response.status_code in (302, 303) and hops < 5:
        response = browser.get(response.headers["location"])
        hops += 1
    assert response.status_code == 200 and browser.cookies.get(COOKIE)
    return browser


def chat(browser: httpx.Client, message: str, **headers: str) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    with browser.stream("POST", "/chat", json={"message": message}, headers=headers) as r:
        assert r.status_code == 200
        kind = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind:
                out.append((kind, json.loads(line.split(":", 1)[1])))
    return out


def backlog(browser: httpx.Client, **params: str) -> list[dict]:
    """The events an /events stream sends at once (it never ends: stop at a second of
    silence; its keep-alive comments come every 15 s)."""
    out: list[dict] = []
    with browser.stream("GET", "/events", params=params,
                        timeout=httpx.Timeout(10, read=1.0)) as response:
        assert response.status_code == 200
        kind = None
        try:
            for line in response.iter_lines():
                if line.startswith("event:"):
                    kind = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and kind == "security":
                    out.append(json.loads(line.split(":", 1)[1]))
        except httpx.ReadTimeout:
            pass
    return out


@pytest.fixture
def bob(lab: Lab) -> Iterator[httpx.Client]:
    browser = sign_in(lab, "bob@example.com")
    yield browser
    browser.close()


@pytest.fixture
def alice(lab: Lab) -> Iterator[httpx.Client]:
    browser = sign_in(lab, "alice@example.com")
    yield browser
    browser.close()


def test_the_idp_asserts_group_membership_in_the_users_tokens(lab: Lab) -> None:
    admins = lab.verify.directory.admin_group_id
    alice = login(lab.verify.issuer, "alice@example.com", resource=lab.mcp_url)
    bob = login(lab.verify.issuer, "bob@example.com", resource=lab.mcp_url)
    for token in (alice["access_token"], alice["id_token"]):
        assert admins in claims(token)["groups"]
    engineering = lab.verify.directory.group_by_name("Engineering")
    assert engineering is not None
    for token in (bob["access_token"], bob["id_token"]):
        assert engineering.id in claims(token)["groups"]
        assert admins not in claims(token)["groups"]


def test_everyones_events_are_403_for_a_user_who_is_not_a_tenant_admin(
        lab: Lab, bob: httpx.Client, alice: httpx.Client) -> None:
    chat(bob, "list users")
    chat(alice, "list groups")
    subscribers = len(lab.events._subscribers)
    refused = bob.get("/events", params={"scope": "all"}, timeout=SHORT_READ)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/json")
    assert refused.json() == {
        "error": "forbidden",
        "error_description": "Only tenant administrators may watch everyone's security "
                             "events; your own are at /events?scope=mine."}
    assert len(lab.events._subscribers) == subscribers  # no stream was opened for bob
    # bob still sees his own, with the default scope
    mine = [e for e in backlog(bob) if e["type"] == "agent:token_exchange_success"]
    assert mine and {e["userEmail"] for e in mine} == {"bob@example.com"}
    # a tenant administrator sees everyone's
    everyone = {e["userEmail"] for e in backlog(alice, scope="all")
                if e["type"] == "agent:token_exchange_success"}
    assert {"alice@example.com", "bob@example.com"} <= everyone


def test_without_an_admin_group_configured_nobody_watches_everyone(lab: Lab,
                                                                    alice: httpx.Client) -> None:
    saved = lab.chat.settings
    lab.chat.settings = dataclasses.replace(saved, admin_group_id="")
    try:
        refused = alice.get("/events", params={"scope": "all"}, timeout=SHORT_READ)
    finally:
        lab.chat.settings = saved
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert alice.get("/events", params={"scope": "bogus"}).status_code == 400


# -- 8. state-changing chat routes refuse cross-origin browsers -----------------------------

def other_origin(lab: Lab) -> str:
    port = int(lab.endpoints["chat"].rsplit(":", 1)[1])
    return f"http://127.0.0.1:{port + 1 if port < 65535 else port - 1}"


CROSS = {
    "another site": {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    # another app on this machine (a notebook server, a dev server): the same site as the chat,
    # so a SameSite=Lax cookie would ride along
    "another loopback port": {"Sec-Fetch-Site": "same-site"},
    "fetch metadata only": {"Sec-Fetch-Site": "cross-site"},
    "origin only": {"Origin": "https://evil.example"},
    "an opaque origin": {"Origin": "null"},
}


@pytest.mark.parametrize("case", sorted(CROSS))
def test_a_cross_origin_logout_is_403_and_the_session_lives(lab: Lab, alice: httpx.Client,
                                                            case: str) -> None:
    headers = dict(CROSS[case])
    if case == "another loopback port":
        headers["Origin"] = other_origin(lab)
    session = lab.chat.sessions.get(alice.cookies[COOKIE])
    assert session is not None
    nothing = Nothing(lab, session.sid)
    response = alice.post("/auth/logout", headers=headers)
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "forbidden"
    assert body["error_description"].startswith("This request came from another site")
    assert "set-cookie" not in response.headers
    nothing.happened()
    assert lab.verify.sessions.alive(session.sid)
    assert lab.chat.sessions.get(alice.cookies[COOKIE]) is session
    assert alice.get("/me").json()["signed_in"] is True


@pytest.mark.parametrize("case", ["another site", "another loopback port",
                                  "fetch metadata only"])
def test_a_cross_origin_chat_is_403_and_no_tool_runs(lab: Lab, alice: httpx.Client,
                                                     case: str) -> None:
    headers = dict(CROSS[case])
    if case == "another loopback port":
        headers["Origin"] = other_origin(lab)
    session = lab.chat.sessions.get(alice.cookies[COOKIE])
    assert session is not None
    messages = list(session.messages)
    nothing = Nothing(lab, session.sid)
    response = alice.post("/chat", json={"message": "list users"}, headers=headers)
    assert response.status_code == 403
    assert response.json()["error_description"].startswith("This request came from another site")
    nothing.happened()
    assert session.messages == messages


def test_same_origin_browsers_and_non_browser_clients_may_post(lab: Lab) -> None:
    own = lab.endpoints["chat"]
    browser = sign_in(lab, "alice@example.com")
    done = chat(browser, "list groups", Origin=own, **{"Sec-Fetch-Site": "same-origin"})
    assert done[-1][0] == "done" and done[-1][1]["stop"] == "end_turn"
    assert chat(browser, "list groups")[-1][0] == "done"  # no Origin, no Sec-Fetch-Site
    sid = lab.chat.sessions.get(browser.cookies[COOKIE]).sid
    out = browser.post("/auth/logout", headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert out.status_code == 303 and not lab.verify.sessions.alive(sid)
    # the page's origin is the one the browser addressed: http://localhost:PORT too
    local = own.replace("127.0.0.1", "localhost")
    again = sign_in(lab, "alice@example.com")
    cookie = again.cookies[COOKIE]
    sid = lab.chat.sessions.get(cookie).sid
    out = httpx.post(f"{local}/auth/logout", headers={
        "Origin": local, "Sec-Fetch-Site": "same-origin", "Cookie": f"{COOKIE}={cookie}"})
    assert out.status_code == 303 and not lab.verify.sessions.alive(sid)
    # a non-browser client (no Origin, no Sec-Fetch-Site) signs out too
    third = sign_in(lab, "alice@example.com")
    sid = lab.chat.sessions.get(third.cookies[COOKIE]).sid
    assert third.post("/auth/logout").status_code == 303
    assert not lab.verify.sessions.alive(sid)
    for client in (browser, again, third):
        client.close()


def test_configured_public_origins_replace_the_addressed_one(lab: Lab,
                                                             alice: httpx.Client) -> None:
    """Behind a proxy the page's origin is the public one (IIA_CHAT_ORIGINS): then only those
    are accepted."""
    public = "https://chat.example.com"
    saved = lab.chat.settings
    lab.chat.settings = dataclasses.replace(saved, origins=(public,))
    session = lab.chat.sessions.get(alice.cookies[COOKIE])
    assert session is not None
    try:
        nothing = Nothing(lab, session.sid)
        refused = alice.post("/auth/logout", headers={"Origin": lab.endpoints["chat"]})
        assert refused.status_code == 403
        nothing.happened()
        assert lab.verify.sessions.alive(session.sid)
        accepted = alice.post("/auth/logout", headers={"Origin": public,
                                                       "Sec-Fetch-Site": "same-origin"})
        assert accepted.status_code == 303 and not lab.verify.sessions.alive(session.sid)
    finally:
        lab.chat.settings = saved


def test_the_chat_origins_setting_is_validated(lab: Lab) -> None:
    env = lab.iia_env()
    assert ChatSettings.from_env(env).origins == ()  # the default: the addressed origin
    two = ChatSettings.from_env({**env, "IIA_CHAT_ORIGINS": "https://chat.example.com, "
                                                            "http://localhost:8001/"})
    assert two.origins == ("https://chat.example.com", "http://localhost:8001")
    for bad in ("chat.example.com", "https://chat.example.com/app", "https://", " , "):
        with pytest.raises(ConfigurationError, match="IIA_CHAT_ORIGINS"):
            ChatSettings.from_env(env, origins=bad)


# -- the security console: loopback only ----------------------------------------------------

def test_the_console_refuses_a_foreign_host(lab: Lab) -> None:
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 would read the
    console as its own origin; the Host it sends is not a loopback name, so it is refused."""
    console = lab.endpoints["console"]
    port = console.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}"):
        refused = httpx.get(f"{console}/events", headers={"Host": host})
        assert refused.status_code == 403
        assert refused.json()["error_description"].startswith(
            "The security console answers loopback requests only")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        served = httpx.get(f"{console}/events", headers={"Host": host})
        assert served.status_code == 200 and "events" in served.json()
