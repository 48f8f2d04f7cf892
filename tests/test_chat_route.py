"""The chat route as a browser uses it: sign in (code + PKCE at the IdP), chat over SSE, watch
security events over SSE, sign out. The browser never talks to the MCP server or to Claude."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from harness.lab import Lab
from iia.chat import COOKIE
from tests.agent_helpers import phone


def at_idp(client: httpx.Client, authorize: str, email: str) -> httpx.Response:
    """What the IdP answers a browser that follows `authorize` and signs in as `email`: the
    redirect to the callback (after its passkey sign-in page, where it shows one)."""
    response = client.get(authorize)
    try:
        from harness.verify.login import complete_passkey_login
    except ImportError:  # an IdP that signs the hinted user in at once
        return response
    return complete_passkey_login(client, response, email)


def sign_in(lab: Lab, email: str = "alice@example.com") -> tuple[httpx.Client, httpx.Response]:
    browser = httpx.Client(base_url=lab.endpoints["chat"], timeout=30)
    response = browser.get("/auth/login", params={"login_hint": email})
    hops = 0
    while hops < 8:  # follow as a browser would, answering a passkey sign-in page if asked
        hops += 1
        if response.status_code in (302, 303):
            response = browser.get(response.headers["location"])
        elif response.status_code == 200 and "id='passkey-request'" in response.text:
            response = at_idp(browser, str(response.url), email)
        else:
            break
    return browser, response


def sse(response: httpx.Response, *, limit: int = 100) -> Iterator[tuple[str, dict]]:
    event = None
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event:
            yield event, json.loads(line.split(":", 1)[1].strip())
            limit -= 1
            if limit == 0:
                return


def backlog(browser: httpx.Client, scope: str) -> list[dict]:
    """The events the stream sends at once; it never ends, so stop at the first second of
    silence (its keep-alive comments come every 15 s)."""
    out: list[dict] = []
    timeout = httpx.Timeout(10, read=1.0)
    with browser.stream("GET", "/events", params={"scope": scope}, timeout=timeout) as response:
        assert response.status_code == 200
        try:
            for kind, data in sse(response, limit=10_000):
                assert kind == "security"
                out.append(data)
        except httpx.ReadTimeout:
            pass
    return out


@pytest.fixture
def browser(lab: Lab) -> Iterator[httpx.Client]:
    client, response = sign_in(lab)
    assert response.status_code == 200 and "IIA agent" in response.text
    yield client
    client.close()


def test_sign_in_sets_a_hardened_cookie_and_keeps_tokens_server_side(lab: Lab) -> None:
    client = httpx.Client(base_url=lab.endpoints["chat"], timeout=30)
    first = client.get("/auth/login", params={"login_hint": "alice@example.com"})
    assert first.status_code == 302 and first.headers["location"].startswith(
        lab.verify.issuer + "/authorize?")
    assert "code_challenge_method=S256" in first.headers["location"]
    callback = client.get(at_idp(client, first.headers["location"],
                                 "alice@example.com").headers["location"])
    assert callback.status_code == 302
    cookie = next(c for c in callback.headers.get_list("set-cookie")
                  if c.startswith(f"{COOKIE}="))
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie or "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # served over plain http on loopback
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert "." not in value and len(value) > 30  # an opaque id, not a token
    me = client.get("/me").json()
    assert me["signed_in"] is True and me["email"] == "alice@example.com"
    assert me["ended"] is None and me["session_id"]
    client.close()


def test_a_forged_state_is_refused(lab: Lab) -> None:
    response = httpx.get(lab.endpoints["chat"] + "/auth/callback",
                         params={"code": "x", "state": "forged"})
    assert response.status_code == 400


def test_chat_streams_text_tool_calls_and_done(lab: Lab, browser: httpx.Client) -> None:
    with browser.stream("POST", "/chat", json={"message": "list applications"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse(response))
    kinds = [k for k, _ in events]
    assert kinds[0] == "tool" and "text" in kinds and kinds[-1] == "done"
    tools = [d for k, d in events if k == "tool" and d["phase"] == "end"]
    assert tools[0]["name"] == "list_applications" and not tools[0]["is_error"]
    text = "".join(d["delta"] for k, d in events if k == "text")
    assert "Salesforce" in text and events[-1][1]["stop"] == "end_turn"
    # the conversation continues in the same session
    with browser.stream("POST", "/chat", json={"message": "list groups"}) as response:
        assert [k for k, _ in sse(response)][-1] == "done"


def test_the_conversation_is_kept_for_a_reload(lab: Lab, browser: httpx.Client) -> None:
    """GET /conversation replays what /chat streamed this session, in order (the page shows it
    again after a reload); another session, or no session, does not get it."""
    with browser.stream("POST", "/chat", json={"message": "list applications"}) as response:
        streamed = list(sse(response))
    entries = browser.get("/conversation").json()["entries"]
    assert entries[0] == {"event": "user", "data": {"text": "list applications"}}
    shown = [(e["event"], e["data"].get("phase")) for e in entries[1:]]
    assert shown == [(k, d.get("phase")) for k, d in _joined(streamed)]
    assert "".join(e["data"]["delta"] for e in entries if e["event"] == "text") == "".join(
        d["delta"] for k, d in streamed if k == "text")
    other, _ = sign_in(lab, "bob@example.com")
    assert other.get("/conversation").json() == {"entries": []}
    other.close()
    anonymous = httpx.get(lab.endpoints["chat"] + "/conversation")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "not_signed_in"


def _joined(events: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Consecutive text deltas as one (the transcript keeps an answer's text whole)."""
    out: list[tuple[str, dict]] = []
    for kind, data in events:
        if kind == "text" and out and out[-1][0] == "text":
            continue
        out.append((kind, data))
    return out


def test_the_transcript_is_bounded() -> None:
    from iia.chat.sessions import TRANSCRIPT_LIMIT, ChatSession

    session = ChatSession(id="x", email="alice@example.com", sub="s", sid="sid",
                          access_token="t")
    for i in range(TRANSCRIPT_LIMIT + 50):
        session.record("user", {"text": str(i)})
        session.record("text", {"delta": "a"})
        session.record("text", {"delta": "b"})
    assert len(session.transcript) == TRANSCRIPT_LIMIT
    assert session.transcript[-1] == {"event": "text", "data": {"delta": "ab"}}
    assert session.transcript[-2] == {"event": "user", "data": {"text": str(TRANSCRIPT_LIMIT + 49)}}


def test_chat_needs_a_session_json_and_same_origin(lab: Lab, browser: httpx.Client) -> None:
    anonymous = httpx.post(lab.endpoints["chat"] + "/chat", json={"message": "list users"})
    assert anonymous.status_code == 401
    form = browser.post("/chat", data={"message": "list users"})
    assert form.status_code == 415
    foreign = browser.post("/chat", json={"message": "list users"},
                           headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403


def test_security_events_stream_mine_and_all(lab: Lab, browser: httpx.Client) -> None:
    other, _ = sign_in(lab, "bob@example.com")
    with other.stream("POST", "/chat", json={"message": "list users"}) as response:
        list(sse(response))
    with browser.stream("POST", "/chat", json={"message": "list groups"}) as response:
        list(sse(response))
    got: dict[str, list[dict]] = {}
    for scope in ("mine", "all"):
        got[scope] = [d for d in backlog(browser, scope)
                      if d["type"] == "agent:token_exchange_success"]
    assert {e["userEmail"] for e in got["mine"]} == {"alice@example.com"}
    assert {"alice@example.com", "bob@example.com"} <= {e["userEmail"] for e in got["all"]}
    other.close()


def test_sign_out_ends_the_idp_session(lab: Lab, browser: httpx.Client) -> None:
    session = lab.chat.sessions.get(browser.cookies[COOKIE])
    sid = session.sid
    response = browser.post("/auth/logout")
    assert response.status_code == 303
    assert not lab.verify.sessions.alive(sid)
    assert browser.get("/me").json() == {"signed_in": False}


def test_a_killed_session_is_told_why(lab: Lab, browser: httpx.Client) -> None:
    session = lab.chat.sessions.get(browser.cookies[COOKIE])
    lab.mcp.revocations.revoke(session.sid, "CAEP session-revoked: repeated tier-4 attempts")
    with browser.stream("POST", "/chat", json={"message": "list users"}) as response:
        done = next(d for k, d in sse(response) if k == "done")
    assert done["stop"] == "session_ended" and "repeated tier-4" in done["reason"]
    again = browser.post("/chat", json={"message": "list users"})
    assert again.status_code == 401 and again.json()["error"] == "session_ended"


def test_chat_with_an_approval(lab: Lab, browser: httpx.Client) -> None:
    with phone(lab) as p, browser.stream(
            "POST", "/chat", json={"message": "revoke sessions of walter@example.com"}) as r:
        events = list(sse(r))
    assert events[-1][1]["stop"] == "end_turn" and len(p.answered) == 1


def test_a_callback_started_in_another_browser_is_refused(lab: Lab) -> None:
    """Login CSRF: the attacker starts a sign-in, finishes it at the IdP, and sends the victim
    the callback URL. The victim's browser did not start that sign-in: refused."""
    attacker = httpx.Client(base_url=lab.endpoints["chat"], timeout=30)
    start = attacker.get("/auth/login", params={"login_hint": "eve@example.com"})
    callback_url = at_idp(attacker, start.headers["location"],
                          "eve@example.com").headers["location"]
    victim = httpx.Client(base_url=lab.endpoints["chat"], timeout=30)
    response = victim.get(callback_url)
    assert response.status_code == 400 and "start again" in response.text
    assert victim.get("/me").json() == {"signed_in": False}
    attacker.close()
    victim.close()


def test_the_callback_escapes_what_it_echoes(lab: Lab) -> None:
    browser = httpx.Client(base_url=lab.endpoints["chat"], timeout=30)
    start = browser.get("/auth/login")
    state = dict(httpx.URL(start.headers["location"]).params)["state"]
    response = browser.get("/auth/callback", params={
        "state": state, "error": "<script>alert(1)</script>"})
    assert response.status_code == 400
    assert "<script>alert(1)</script>" not in response.text and "&lt;script&gt;" in response.text
    browser.close()


def test_an_expiring_token_is_refreshed_without_stalling_the_lab(lab: Lab,
                                                                  browser: httpx.Client) -> None:
    import time

    session = lab.chat.sessions.get(browser.cookies[COOKIE])
    old_access, old_refresh = session.access_token, session.refresh_token
    session.expires_at = time.time() + 10  # due for refresh
    with browser.stream("POST", "/chat", json={"message": "list groups"}) as response:
        done = next(d for k, d in sse(response) if k == "done")
    assert done["stop"] == "end_turn"
    assert session.access_token != old_access and session.refresh_token != old_refresh
    assert lab.verify.sessions.alive(session.sid)  # one refresh, not a reuse



def test_behind_a_tls_proxy_the_cookies_are_secure(lab: Lab) -> None:
    """A TLS-terminating proxy on this host says `X-Forwarded-Proto: https` (uvicorn trusts it
    from 127.0.0.1 only): the cookies are then `Secure`. (The session cookie is set by the same
    function after the callback, which the simulated tenant only allows on an http loopback
    redirect, RFC 8252; the test above shows that function over http.)"""
    with httpx.Client(base_url=lab.endpoints["chat"], timeout=30) as client:
        first = client.get("/auth/login", params={"login_hint": "alice@example.com"},
                           headers={"X-Forwarded-Proto": "https"})
        plain = client.get("/auth/login", params={"login_hint": "alice@example.com"})
    assert first.status_code == plain.status_code == 302
    assert "redirect_uri=https%3A%2F%2F127.0.0.1" in first.headers["location"]
    hardened = first.headers["set-cookie"]
    assert "Secure" in hardened and "HttpOnly" in hardened and "samesite=lax" in hardened.lower()
    assert "Secure" not in plain.headers["set-cookie"]


# -- what the IIA UI reads: tool cards, approval waits, the last call's steps, the console page --

def test_tool_cards_name_the_tier_and_the_person_not_the_id(lab: Lab,
                                                            browser: httpx.Client) -> None:
    frank = lab.verify.directory.user_by_username("frank@example.com")
    assert frank is not None and frank.id
    with browser.stream("POST", "/chat", json={"message": "show user frank@example.com"}) as r:
        events = list(sse(r))
    cards = [d for k, d in events if k == "tool" and d["phase"] == "end"]
    get_user = next(c for c in cards if c["name"] == "get_user")
    assert get_user["tier"] == 1 and get_user["tierName"] == "read"
    assert get_user["outcome"] == "done" and get_user["is_error"] is False
    # named by what the agent read before (list_users), not by the id it passed
    assert get_user["input"]["user_id"] == frank.id
    assert "frank@example.com" in get_user["target"] and frank.id not in get_user["target"]
    assert "frank@example.com" in get_user["summary"] and frank.id not in get_user["summary"]
    assert isinstance(get_user["ms"], int) and get_user["ms"] >= 0
    starts = [d for k, d in events if k == "tool" and d["phase"] == "start"]
    assert [s["id"] for s in starts] == [c["id"] for c in cards]


def test_a_refused_card_carries_the_code_and_reason(lab: Lab, browser: httpx.Client) -> None:
    with browser.stream("POST", "/chat", json={"message": "delete ivan@example.com"}) as r:
        events = list(sse(r))
    refused = next(d for k, d in events if k == "tool" and d["phase"] == "end"
                   and d["name"] == "delete_user")
    assert refused["tier"] == 4 and refused["outcome"] == "refused"
    assert refused["code"] == "access_denied" and "policy" in refused["reason"]
    assert "ivan@example.com" in refused["target"]
    assert lab.verify.directory.user_by_username("ivan@example.com") is not None
    # the chain view: stopped at step 5 (token exchange), step 6 never reached, no OBO token
    last = browser.get("/calls/last").json()["call"]
    assert last["tool"] == "delete_user" and last["ok"] is False
    assert last["stoppedAt"] == 5 and last["code"] == "access_denied" and last["obo"] is None
    status = {s["step"]: s["status"] for s in last["steps"]}
    assert status == {1: "ok", 2: "ok", 3: "ok", 4: "skipped", 5: "stopped",
                      6: "not_reached", 7: "ok"}


def test_the_last_call_shows_its_seven_steps_and_decoded_claims(lab: Lab,
                                                                browser: httpx.Client) -> None:
    assert browser.get("/calls/last").json() == {"call": None}  # a fresh session: none yet
    anonymous = httpx.get(lab.endpoints["chat"] + "/calls/last")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "not_signed_in"
    with browser.stream("POST", "/chat", json={"message": "list applications"}) as r:
        list(sse(r))
    response = browser.get("/calls/last")
    assert response.status_code == 200
    last = response.json()["call"]
    assert last["tool"] == "list_applications" and last["ok"] is True
    assert last["stoppedAt"] is None and last["tier"] == 1
    steps = {s["step"]: s for s in last["steps"]}
    assert [s["status"] for s in steps.values()] == ["ok", "ok", "ok", "skipped", "ok", "ok",
                                                     "ok"]
    assert all(isinstance(steps[n]["ms"], int | float) for n in (3, 5, 6))
    obo = last["obo"]  # decoded claims for the inspector: the actor and the one RAR object
    assert obo["act"]["sub"].startswith("spiffe://iia.lab/")
    assert obo["authorization_details"][0]["type"] == "verify_read_applications" or \
        obo["authorization_details"][0]["tier"] == 1
    from iia.events import looks_like_secret
    assert not looks_like_secret(response.text)  # claims, never a token


def test_the_last_call_is_this_sessions_own(lab: Lab, browser: httpx.Client) -> None:
    with browser.stream("POST", "/chat", json={"message": "list groups"}) as r:
        list(sse(r))
    other, _ = sign_in(lab, "bob@example.com")
    try:
        assert other.get("/calls/last").json() == {"call": None}
    finally:
        other.close()
    assert browser.get("/calls/last").json()["call"]["tool"] == "list_groups"


def test_an_approval_wait_is_streamed_with_its_validity(lab: Lab,
                                                       browser: httpx.Client) -> None:
    with phone(lab) as p, browser.stream(
            "POST", "/chat", json={"message": "revoke sessions of walter@example.com"}) as r:
        events = list(sse(r))
    waits = [d for k, d in events if k == "approval"]
    types = [w["type"] for w in waits]
    assert "agent:hitl_required" in types and "agent:hitl_approved" in types
    pending = next(w for w in waits if w["type"] == "agent:push_pending")
    assert pending["outcome"] == "pending" and pending["expiresInS"] > 0
    assert pending["toolName"] == "revoke_user_sessions" and pending["tier"] == 3
    assert types.index("agent:push_pending") < types.index("agent:hitl_approved")
    assert len(p.answered) == 1


def test_me_says_who_may_watch_everyone(lab: Lab, browser: httpx.Client) -> None:
    other, _ = sign_in(lab, "bob@example.com")
    try:
        for client in (browser, other):
            admin = client.get("/me").json()["admin"]
            with client.stream("GET", "/events", params={"scope": "all"},
                               timeout=httpx.Timeout(10, read=1.0)) as response:
                assert (response.status_code == 200) is admin
    finally:
        other.close()
    assert browser.get("/me").json()["admin"] is True  # alice, the operator, is an admin


def test_the_console_page_is_the_chat_page_in_console_mode(lab: Lab) -> None:
    page = httpx.get(lab.endpoints["console"] + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<body data-mode="console">' in page.text and "Security events" in page.text
    last = httpx.get(lab.endpoints["console"] + "/calls/last")
    assert last.status_code == 200 and "call" in last.json()
    foreign = httpx.get(lab.endpoints["console"] + "/", headers={"Host": "evil.example"})
    assert foreign.status_code == 403


def test_the_chat_page_is_self_contained() -> None:
    """No CDN: the page loads nothing from another origin."""
    from pathlib import Path

    import iia.chat

    html_text = (Path(iia.chat.__file__).parent / "page.html").read_text()
    assert "http://" not in html_text and "https://" not in html_text
    assert "<script src" not in html_text and "<link rel=\"stylesheet\"" not in html_text
