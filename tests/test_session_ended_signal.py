"""The explicit "the user's session has ended" signal (issue #13): the IdP puts
`iia.protocol.SESSION_ENDED` = true in an OAuth error body when it refused because the session
is over, and the MCP server reads that member, never the words of `error_description`.

Over real HTTP: the MCP server's token exchange is pointed at a loopback stub token endpoint
that answers one canned refusal, so the only difference between the two cases is the member.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest

from harness.lab import Lab
from iia.agent import SessionEndedError
from iia.oauth.errors import InvalidGrantError, error_from_response
from iia.protocol import SESSION_ENDED, TOKEN_EXCHANGE_GRANT
from tests.agent_helpers import mcp_call
from tests.helpers import user_token, wait_for

# a description that talks about sessions without the session having ended
WORDY = ("the approval recorded for this session does not cover this request; "
         "the session itself is fine")


def test_the_member_not_the_words_decides() -> None:
    ended = error_from_response(400, {"error": "invalid_grant", "error_description": "over",
                                      SESSION_ENDED: True})
    assert isinstance(ended, InvalidGrantError) and ended.session_ended is True
    wordy = error_from_response(400, {"error": "invalid_grant", "error_description": WORDY})
    assert isinstance(wordy, InvalidGrantError) and wordy.session_ended is False
    # only JSON true counts: a string or a number is not the signal
    for value in ("true", 1, None):
        loose = error_from_response(400, {"error": "invalid_grant",
                                          "error_description": "session ended",
                                          SESSION_ENDED: value})
        assert loose.session_ended is False


class StubTokenEndpoint:
    """A loopback token endpoint answering every POST with `body` and HTTP 400."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = json.dumps(body).encode()
        self.grants: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = self.rfile.read(length).decode()
                stub.grants.append(form)
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(stub.body)))
                self.end_headers()
                self.wfile.write(stub.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_idp(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Call `stub_idp(body)` to point the MCP server's token endpoint at a stub answering it."""
    stubs: list[StubTokenEndpoint] = []

    def start(body: dict[str, Any]) -> StubTokenEndpoint:
        stub = StubTokenEndpoint(body)
        stubs.append(stub)
        monkeypatch.setitem(lab.mcp.chain.server.metadata, "token_endpoint", stub.url)
        return stub

    yield start
    monkeypatch.undo()
    for stub in stubs:
        stub.close()


def _sid(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sid"])


def test_an_exchange_refused_as_session_ended_takes_the_401_path(lab: Lab, stub_idp: Any) -> None:
    token = user_token(lab)["access_token"]
    sid = _sid(token)
    assert not mcp_call(lab, token, "list_users", {"count": 1}).is_error
    decisions = len(lab.verify.audit)
    stub = stub_idp({"error": "invalid_grant", "error_description": "the user signed out",
                     SESSION_ENDED: True})
    result = mcp_call(lab, token, "list_users", {"count": 1})
    assert result.is_error and result.text.startswith("[session_revoked]"), result.text
    assert TOKEN_EXCHANGE_GRANT.replace(":", "%3A") in stub.grants[0]  # the stub answered it
    assert lab.mcp.revocations.reason(sid) is not None  # the MCP server dropped the session
    with pytest.raises(SessionEndedError, match="the user signed out"):
        mcp_call(lab, token, "list_users", {"count": 1})  # 401 from now on
    assert len(stub.grants) == 1  # the 401 came before any exchange
    # the real IdP decided nothing but what Antenna told it: the MCP server's own drop is
    # published (CAEP session-revoked), so the IdP's SSF receiver ends the session there too
    assert [d for d in lab.verify.audit.since(decisions) if not d.kind.startswith("ssf")] == []
    wait_for(lambda: not lab.verify.sessions.alive(sid), "the IdP to hear of the drop", 30)


def test_an_invalid_grant_that_only_mentions_a_session_does_not(lab: Lab,
                                                                 stub_idp: Any) -> None:
    token = user_token(lab)["access_token"]
    sid = _sid(token)
    decisions = len(lab.verify.audit)
    stub = stub_idp({"error": "invalid_grant", "error_description": WORDY})
    result = mcp_call(lab, token, "list_users", {"count": 1})
    assert result.is_error and result.text.startswith("[invalid_grant]"), result.text
    assert WORDY in result.text and len(stub.grants) == 1
    assert lab.mcp.revocations.reason(sid) is None  # the session was not dropped
    assert lab.verify.sessions.alive(sid)
    assert len(lab.verify.audit) == decisions
    # the next call is not a 401: it reaches the token exchange again (and is refused again)
    again = mcp_call(lab, token, "list_users", {"count": 1})
    assert again.text.startswith("[invalid_grant]") and len(stub.grants) == 2
