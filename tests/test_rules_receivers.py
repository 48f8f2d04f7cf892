"""Security rules a mutation run found untested (issue #11): each test here fails when its rule
is removed, and is self-checking: after the refusal, the same request with only the defect put
right is accepted, so the refusal was for that one reason.

* the MCP server's SSF receiver (RFC 8935 push, iia/mcp_server/ssf_receiver.py) checks the SET's
  signature, `aud`, `iss`, and the push's Authorization header;
* the MCP server's resource server (iia/resource_server.py) accepts only `typ: at+jwt`;
* the simulated IdP's token decoding (harness/verify/tokens.py) checks `typ`: no access token
  as an ID token hint at logout, no ID token at introspection, no other JWT as subject_token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from harness.lab import Lab
from iia.antenna import CAEP
from iia.identity import WorkloadIdentity
from tests.helpers import as_mcp_server, exchange, rar, sid_of, user_token

MCP_HEADERS = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}


# -- the MCP server's SSF receiver --------------------------------------------------------------


@pytest.fixture
def session(lab: Lab) -> Iterator[tuple[str, str]]:
    """A fresh session of alice's, live at the MCP server: (access token, sid)."""
    token = user_token(lab)["access_token"]
    sid = sid_of(token)
    assert lab.mcp.revocations.reason(sid) is None
    yield token, sid


def revocation(lab: Lab, sid: str, **overrides: Any) -> dict[str, Any]:
    """The claims of a session-revoked SET Antenna would send the MCP server for `sid`."""
    claims = lab.antenna.signer.claims(
        audience=lab.mcp_url, event_type=CAEP["session-revoked"],
        event={"event_timestamp": int(time.time()),
               "reason_admin": {"en": "anomaly: test revocation"}},
        subject={"format": "complex", "session": {"format": "opaque", "id": sid},
                 "user": {"format": "email", "email": "alice@example.com"}})
    claims.update(overrides)
    return claims


def forge(lab: Lab, claims: dict[str, Any], key: Any) -> str:
    """A SET whose header names Antenna's current key id but is signed with `key`."""
    return jwt.encode(claims, key, algorithm="ES256",
                      headers={"typ": "secevent+jwt", "kid": lab.antenna.signer.kid})


def mcp_push_header(lab: Lab) -> str:
    """The Authorization header the MCP server demanded when it subscribed at Antenna."""
    stream = lab.antenna.store.stream(lab.streams["mcp"])
    assert stream is not None
    return str(stream[1]["delivery"]["authorization_header"])


def push(lab: Lab, token: str, authorization: str | None = "subscribed") -> httpx.Response:
    headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
    if authorization == "subscribed":
        authorization = mcp_push_header(lab)
    if authorization is not None:
        headers["Authorization"] = authorization
    origin = lab.mcp_url.rsplit("/mcp", 1)[0]
    return httpx.post(f"{origin}/ssf/events", content=token, headers=headers, timeout=10)


def tools_list(lab: Lab, token: str) -> httpx.Response:
    return httpx.post(lab.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                                         "params": {}},
                      headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}, timeout=10)


def assert_refused(lab: Lab, response: httpx.Response, status: int, err: str, token: str,
                   sid: str, jti: str) -> None:
    """An RFC 8935 §2.3 error, and nothing changed: the session is live at the MCP server, the
    SET was not recorded, the user's token still works."""
    assert response.status_code == status, response.text
    assert response.json()["err"] == err and response.json()["description"]
    assert lab.mcp.revocations.reason(sid) is None
    assert jti not in {c["jti"] for c in lab.mcp.ssf.received}
    assert tools_list(lab, token).status_code == 200


def assert_accepted(lab: Lab, set_token: str, token: str, sid: str) -> None:
    """The control: the same SET, put right, drops the session."""
    assert push(lab, set_token).status_code == 202
    assert "anomaly: test revocation" in (lab.mcp.revocations.reason(sid) or "")
    assert tools_list(lab, token).status_code == 401


def test_a_set_signed_by_an_attackers_key_is_refused(lab: Lab,
                                                     session: tuple[str, str]) -> None:
    token, sid = session
    claims = revocation(lab, sid)
    attacker = ec.generate_private_key(ec.SECP256R1())
    response = push(lab, forge(lab, claims, attacker))  # right kid, iss, aud, header
    assert_refused(lab, response, 400, "invalid_key", token, sid, claims["jti"])
    assert_accepted(lab, lab.antenna.signer.sign(claims), token, sid)


def test_a_set_for_another_audience_is_refused(lab: Lab, session: tuple[str, str]) -> None:
    token, sid = session
    claims = revocation(lab, sid, aud=lab.verify.issuer)  # a SET Antenna signed for the IdP
    response = push(lab, lab.antenna.signer.sign(claims))
    assert_refused(lab, response, 400, "invalid_audience", token, sid, claims["jti"])
    assert_accepted(lab, lab.antenna.signer.sign({**claims, "aud": lab.mcp_url}), token, sid)


def test_a_set_from_another_issuer_is_refused(lab: Lab, session: tuple[str, str]) -> None:
    token, sid = session
    claims = revocation(lab, sid, iss="https://evil.example")  # signed with a trusted key
    response = push(lab, lab.antenna.signer.sign(claims))
    assert_refused(lab, response, 400, "invalid_issuer", token, sid, claims["jti"])
    assert_accepted(lab, lab.antenna.signer.sign({**claims, "iss": lab.antenna.issuer}),
                    token, sid)


@pytest.mark.parametrize("authorization", [None, "Bearer not-the-subscribed-one", ""])
def test_a_push_without_the_subscribed_authorization_is_refused(
        lab: Lab, session: tuple[str, str], authorization: str | None) -> None:
    token, sid = session
    claims = revocation(lab, sid)
    set_token = lab.antenna.signer.sign(claims)  # a perfectly good SET
    response = push(lab, set_token, authorization)
    assert_refused(lab, response, 401, "authentication_failed", token, sid, claims["jti"])
    assert_accepted(lab, set_token, token, sid)


# -- the MCP server's resource server: typ at+jwt ----------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", "secevent+jwt", ""])
def test_a_signed_idp_token_of_another_typ_is_not_an_access_token(
        lab: Lab, session: tuple[str, str], typ: str) -> None:
    token, _ = session
    claims = jwt.decode(token, options={"verify_signature": False})
    other = lab.verify.keys.sign(claims, typ=typ)  # the IdP's key, every claim right
    history, decisions = len(lab.mcp.chain.history), len(lab.verify.audit)
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "list_users", "arguments": {"count": 1}}}
    response = httpx.post(lab.mcp_url, json=call, timeout=10,
                          headers={**MCP_HEADERS, "Authorization": f"Bearer {other}"})
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge and "at+jwt" in challenge
    assert response.json()["error"]["code"] == -32001
    assert len(lab.mcp.chain.history) == history  # no tool ran
    assert len(lab.verify.audit) == decisions  # nothing reached the IdP
    # the control: the same claims as at+jwt are accepted
    assert tools_list(lab, lab.verify.keys.sign(claims, typ="at+jwt")).status_code == 200


# -- the simulated IdP's token decoding: typ ---------------------------------------------------


def test_an_access_token_is_not_an_id_token_hint_at_logout(lab: Lab) -> None:
    tokens = user_token(lab)
    sid = sid_of(tokens["access_token"])
    marker = len(lab.verify.audit)
    response = httpx.get(f"{lab.verify.issuer}/logout",
                         params={"id_token_hint": tokens["access_token"]}, timeout=10)
    assert response.status_code == 400
    assert "id_token_hint" in response.text
    assert lab.verify.sessions.alive(sid)  # the holder of an access token cannot log out
    assert lab.verify.audit.since(marker, "logout") == []
    # the control: the ID token of the same login ends the session
    logout = httpx.get(f"{lab.verify.issuer}/logout",
                       params={"id_token_hint": tokens["id_token"]}, timeout=10)
    assert logout.status_code == 200
    assert not lab.verify.sessions.alive(sid)


def test_an_id_token_is_not_active_at_introspection(lab: Lab,
                                                    identity: WorkloadIdentity) -> None:
    tokens = user_token(lab)
    url = f"{lab.verify.issuer}/introspect"
    response = as_mcp_server(identity, url, {"token": tokens["id_token"]})
    assert response.status_code == 200
    assert response.json() == {"active": False}  # RFC 7662 §2.2: not a token for this
    assert as_mcp_server(identity, url, {"token": tokens["access_token"]}).json()["active"]


@pytest.mark.parametrize("typ", ["JWT", "secevent+jwt"])
def test_a_signed_idp_jwt_of_another_typ_is_not_a_subject_token(
        lab: Lab, identity: WorkloadIdentity, typ: str) -> None:
    token = user_token(lab)["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    other = lab.verify.keys.sign(claims, typ=typ)  # the IdP's key, every claim right
    marker = len(lab.verify.audit)
    response = exchange(lab, identity, other, rar(lab, "verify_read_users"))
    body = response.json()
    assert response.status_code == 400, body.get("error")  # never print a minted token
    assert body["error"] == "invalid_grant" and "at+jwt" in body["error_description"]
    assert "access_token" not in body  # no OBO token minted
    decisions = lab.verify.audit.since(marker, "token_exchange")
    assert [d.outcome for d in decisions if d.outcome == "issued"] == []
    assert any(d.outcome == "denied" and d.error == "invalid_grant" for d in decisions)
    # the control: the access token itself is exchanged
    assert exchange(lab, identity, token, rar(lab, "verify_read_users")).status_code == 200
