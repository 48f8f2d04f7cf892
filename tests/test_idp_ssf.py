"""The simulated Verify as an SSF 1.0 transmitter, and the MCP server subscribed to it: a session
that ends at the IdP (logout, an admin revocation, a deactivation, a refresh-token reuse, a
withdrawn delegation) is a CAEP session-revoked SET pushed to the MCP server, which drops the
session, so the user's next call is 401 before any step of the chain runs."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from harness.lab import Lab
from harness.verify.client_auth import Client
from harness.verify.login import login
from harness.verify.ssf_transmitter import CAEP_EVENTS, MANAGE_SCOPE, VERIFICATION
from iia.agent import SessionEndedError
from iia.mcp_server.ssf_subscription import IDP_PUSH_PATH, IdpStream, origin
from iia.protocol import SET_MEDIA_TYPE, SET_TYP, TOKEN_EXCHANGE_GRANT
from iia.ssf import SetValidator
from tests.agent_helpers import mcp_call, phone, user_id
from tests.helpers import as_mcp_server, idp_stream_paused, sid_of, user_token, wait_for

SESSION_REVOKED = CAEP_EVENTS["session-revoked"]


def steps(lab: Lab, identity_too: bool = True) -> dict[str, int]:
    """What runs when a tool call's chain runs: the call itself, the SVID and Vault read of
    step 3 and the token exchange of step 5."""
    mcp = lab.mcp
    counted = {"chain_calls": mcp.chain.calls,
               "token_exchanges": mcp.idp.grants.get(TOKEN_EXCHANGE_GRANT, 0)}
    if identity_too:
        counted.update(vault_reads=mcp.identity.vault.reads,
                       svid_fetches=mcp.identity.svids.fetches)
    return counted


@contextmanager
def nothing_runs(lab: Lab, identity_too: bool = True) -> Iterator[None]:
    """No step of the chain runs in the block: no SVID, no Vault read, no exchange (with
    `identity_too=False`, the SVID and Vault are not counted: a subscription retrying in the
    background uses them)."""
    before = steps(lab, identity_too)
    yield
    assert steps(lab, identity_too) == before


def dropped(lab: Lab, sid: str) -> str:
    return wait_for(lambda: lab.mcp.revocations.reason(sid), "the MCP server to drop the "
                    "session", timeout=30)


def test_the_idp_publishes_its_transmitter_metadata_and_the_mcp_server_is_subscribed(
        lab: Lab) -> None:
    meta = httpx.get(f"{lab.verify.base_url}/.well-known/ssf-configuration").json()
    assert meta["issuer"] == lab.verify.base_url != lab.verify.issuer  # its own issuer
    assert meta["spec_version"] == "1_0"
    assert meta["delivery_methods_supported"] == ["urn:ietf:rfc:8935"]
    keys = httpx.get(meta["jwks_uri"]).json()["keys"]
    token_kids = {k["kid"] for k in httpx.get(f"{lab.verify.issuer}/jwks").json()["keys"]}
    assert keys and not {k["kid"] for k in keys} & token_kids  # its own keys
    stream = lab.mcp.idp_stream
    assert stream.ready and stream.refusal() is None
    trusted = lab.mcp.ssf.idp_validator.trusted
    assert trusted is not None and trusted.issuer == meta["issuer"]


def test_logout_at_the_idp_makes_the_next_call_401_before_any_step(lab: Lab) -> None:
    tokens = user_token(lab)
    token, sid = tokens["access_token"], sid_of(tokens["access_token"])
    assert not mcp_call(lab, token, "list_groups", {"count": 1}).is_error
    logout = httpx.get(f"{lab.verify.issuer}/logout",
                       params={"id_token_hint": tokens["id_token"]})
    assert logout.status_code == 200
    assert "logout" in dropped(lab, sid)
    with nothing_runs(lab), pytest.raises(SessionEndedError, match="logout"):
        mcp_call(lab, token, "list_groups", {"count": 1})
    assert lab.mcp.revocations.first_refusal(sid) is not None


def test_the_drop_is_an_event(lab: Lab) -> None:
    got: list[Any] = []
    unsubscribe = lab.events.subscribe(got.append)
    try:
        tokens = user_token(lab)
        sid = sid_of(tokens["access_token"])
        httpx.get(f"{lab.verify.issuer}/logout", params={"id_token_hint": tokens["id_token"]})
        dropped(lab, sid)
        event = wait_for(lambda: next((e for e in got if e.type == "ssf:session_revoked"
                                       and e.session_id == sid), None), "the event", 30)
        assert "logout" in (event.reason or "")
        # a drop a transmitter told of is not published again by Antenna
        assert not [e for e in got if e.type == "caep:session_revoked" and e.session_id == sid]
    finally:
        unsubscribe()


def test_admin_revocation_of_sessions_reaches_the_mcp_server(lab: Lab) -> None:
    bob = user_token(lab, "bob@example.com")["access_token"]
    sid = sid_of(bob)
    alice = user_token(lab)["access_token"]
    with phone(lab, plan=True):
        result = mcp_call(lab, alice, "revoke_user_sessions",
                          {"user_id": user_id(lab, "bob@example.com")})
    assert not result.is_error, result.text
    assert "admin API" in dropped(lab, sid)
    with nothing_runs(lab), pytest.raises(SessionEndedError):
        mcp_call(lab, bob, "list_groups", {"count": 1})


def test_deactivation_reaches_the_mcp_server(lab: Lab) -> None:
    target = user_id(lab, "nina@example.com")
    nina = user_token(lab, "nina@example.com")["access_token"]
    sid = sid_of(nina)
    alice = user_token(lab)["access_token"]
    try:
        with phone(lab, plan=True):
            result = mcp_call(lab, alice, "deactivate_user", {"user_id": target})
        assert not result.is_error, result.text
        assert "deactivated" in dropped(lab, sid)
        with nothing_runs(lab), pytest.raises(SessionEndedError):
            mcp_call(lab, nina, "list_groups", {"count": 1})
    finally:
        directory = lab.verify.directory
        user = directory.user(target)
        user.active = True
        directory.storage.update(directory.user_type, user)


def test_refresh_token_reuse_reaches_the_mcp_server(lab: Lab) -> None:
    tokens = login(lab.verify.issuer, "alice@example.com", resource=lab.mcp_url,
                   scope="openid email profile offline_access")
    sid = sid_of(tokens["access_token"])
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": "iia-ui", "resource": lab.mcp_url}
    assert httpx.post(f"{lab.verify.issuer}/token", data=form).status_code == 200
    reused = httpx.post(f"{lab.verify.issuer}/token", data=form)
    assert reused.json()["error"] == "invalid_grant"
    assert "reuse" in dropped(lab, sid)
    with nothing_runs(lab), pytest.raises(SessionEndedError):
        mcp_call(lab, tokens["access_token"], "list_groups", {"count": 1})


def test_delegation_withdrawal_reaches_the_mcp_server(lab: Lab) -> None:
    token = user_token(lab, "carol@example.com")["access_token"]
    sid = sid_of(token)
    try:
        lab.verify.set_delegation("carol@example.com", False)
        assert "delegation" in dropped(lab, sid)
        assert lab.verify.sessions.alive(sid)  # the IdP session goes on: the agent's is over
        with nothing_runs(lab), pytest.raises(SessionEndedError):
            mcp_call(lab, token, "list_groups", {"count": 1})
    finally:
        lab.verify.set_delegation("carol@example.com", True)


# -- refused SETs: the RFC 8935 error, and no session dropped -----------------------------------


def forged(lab: Lab, sid: str, *, key: Any, kid: str, iss: str,
           authorization: str | None = "subscribed") -> httpx.Response:
    claims = {"iss": iss, "aud": lab.mcp_url, "iat": int(time.time()),
              "jti": secrets.token_hex(8), "events": {SESSION_REVOKED: {
                  "event_timestamp": int(time.time())}},
              "sub_id": {"format": "complex", "session": {"format": "opaque", "id": sid}}}
    token = jwt.encode(claims, key, algorithm="ES256", headers={"typ": SET_TYP, "kid": kid})
    trusted = lab.mcp.ssf.idp_validator.trusted
    assert trusted is not None and trusted.authorization
    headers = {"Content-Type": SET_MEDIA_TYPE}
    if authorization is not None:
        headers["Authorization"] = (trusted.authorization if authorization == "subscribed"
                                    else authorization)
    return httpx.post(origin(lab.mcp_url) + IDP_PUSH_PATH, content=token, headers=headers)


def test_a_set_signed_by_an_unknown_key_is_refused(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    sid = sid_of(token)
    response = forged(lab, sid, key=ec.generate_private_key(ec.SECP256R1()), kid="not-theirs",
                      iss=lab.verify.transmitter.issuer)
    assert response.status_code == 400 and response.json()["err"] == "invalid_key"
    assert lab.mcp.revocations.reason(sid) is None
    assert not mcp_call(lab, token, "list_groups", {"count": 1}).is_error


def test_a_set_from_the_wrong_issuer_is_refused(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    sid = sid_of(token)
    transmitter = lab.verify.transmitter
    response = forged(lab, sid, key=transmitter._key, kid=transmitter.kid,
                      iss="https://attacker.example")
    assert response.status_code == 400 and response.json()["err"] == "invalid_issuer"
    assert lab.mcp.revocations.reason(sid) is None
    assert not mcp_call(lab, token, "list_groups", {"count": 1}).is_error


@pytest.mark.parametrize("authorization", [None, "Bearer not-the-subscribed-one"])
def test_a_push_without_the_subscribed_authorization_is_refused(
        lab: Lab, authorization: str | None) -> None:
    token = user_token(lab)["access_token"]
    sid = sid_of(token)
    transmitter = lab.verify.transmitter
    response = forged(lab, sid, key=transmitter._key, kid=transmitter.kid,
                      iss=transmitter.issuer, authorization=authorization)
    assert response.status_code == 401 and response.json()["err"] == "authentication_failed"
    assert lab.mcp.revocations.reason(sid) is None


def test_the_mcp_servers_own_drop_is_published_by_antenna(lab: Lab) -> None:
    """The IdP's stream paused (its SETs held), a logout at the IdP reaches the MCP server
    only at the next token exchange: the MCP server drops the session itself, and Antenna
    tells every subscriber (here: the CAEP receiver) by CAEP session-revoked."""
    tokens = user_token(lab)
    token, sid = tokens["access_token"], sid_of(tokens["access_token"])
    with idp_stream_paused(lab):
        httpx.get(f"{lab.verify.issuer}/logout", params={"id_token_hint": tokens["id_token"]})
        result = mcp_call(lab, token, "list_groups", {"count": 1})
        assert result.is_error and result.text.startswith("[session_revoked]")
        assert lab.mcp.revocations.reason(sid) is not None
        published = wait_for(lambda: [
            e for e in lab.caep.events(SESSION_REVOKED)
            if e.claims["iss"] == lab.antenna.issuer
            and e.claims["sub_id"].get("session", {}).get("id") == sid], "Antenna's SET", 30)
        reason = published[0].claims["events"][SESSION_REVOKED]["reason_admin"]
        assert "MCP server dropped" in str(reason)


# -- stream management ------------------------------------------------------------------------


def management_token(lab: Lab, identity: Any) -> str:
    response = as_mcp_server(identity, f"{lab.verify.issuer}/token",
                             {"grant_type": "client_credentials", "scope": MANAGE_SCOPE})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_stream_management_needs_the_idp_token_and_keeps_streams_apart(
        lab: Lab, identity: Any) -> None:
    base = f"{lab.verify.base_url}/v1.0/ssf"
    body = {"delivery": {"method": "urn:ietf:rfc:8935",
                         "endpoint_url": f"{lab.caep.audience}"},
            "events_requested": [SESSION_REVOKED, "urn:example:unknown"], "aud": "x"}
    refused = httpx.post(f"{base}/streams", json=body)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
    wrong_scope = as_mcp_server(identity, f"{lab.verify.issuer}/token",
                                {"grant_type": "client_credentials", "scope": "openid"})
    assert wrong_scope.json()["error"] == "invalid_scope"
    count = len(lab.verify.transmitter._streams)
    token = management_token(lab, identity)
    auth = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{base}/streams", json=body, headers=auth)
    assert created.status_code == 201
    stream = created.json()
    assert stream["events_delivered"] == [SESSION_REVOKED]  # requested ∩ supported
    sid = stream["stream_id"]
    assert httpx.get(f"{base}/streams", params={"stream_id": sid}, headers=auth).json() == stream
    fixed = httpx.patch(f"{base}/streams", json={"stream_id": sid, "aud": "y"}, headers=auth)
    assert fixed.status_code == 400
    assert httpx.post(f"{base}/verify", json={"stream_id": sid, "state": "s1"},
                      headers=auth).status_code == 204
    assert httpx.delete(f"{base}/streams", params={"stream_id": sid},
                        headers=auth).status_code == 204
    assert httpx.get(f"{base}/streams", params={"stream_id": sid},
                     headers=auth).status_code == 404
    assert len(lab.verify.transmitter._streams) == count
    # a stream is its client's: another client's token does not see or delete it
    other = Client(client_id="another-receiver", public=False,
                   grant_types=frozenset({"client_credentials"}))
    theirs = lab.verify.ssf_tokens.grant(other, {"scope": MANAGE_SCOPE})
    their_auth = {"Authorization": "Bearer " + json.loads(bytes(theirs.body))["access_token"]}
    mine = lab.mcp.idp_stream.stream_id
    assert httpx.get(f"{base}/streams", params={"stream_id": mine},
                     headers=their_auth).status_code == 404
    assert httpx.delete(f"{base}/streams", params={"stream_id": mine},
                        headers=their_auth).status_code == 404
    assert httpx.get(f"{base}/streams", headers=their_auth).json() == []
    assert lab.mcp.idp_stream.ready and mine in lab.verify.transmitter._streams


def test_verification_event_reaches_the_subscriber(lab: Lab, identity: Any) -> None:
    stream = lab.mcp.idp_stream
    token = management_token(lab, identity)
    state = secrets.token_hex(4)
    before = len(lab.mcp.ssf.received)
    verify = f"{lab.verify.base_url}/v1.0/ssf/verify"
    unknown = httpx.post(verify, json={"stream_id": "nope", "state": state},
                         headers={"Authorization": f"Bearer {token}"})
    assert unknown.status_code == 404
    assert httpx.post(verify, json={"stream_id": stream.stream_id, "state": state},
                      headers={"Authorization": f"Bearer {token}"}).status_code == 204
    got = wait_for(lambda: next((c for c in lab.mcp.ssf.received[before:]
                                 if VERIFICATION in c["events"]), None), "verification", 30)
    assert got["events"][VERIFICATION] == {"state": state}


# -- the IdP's transmitter down at start: calls refused, naming it; retried ------------------


def test_transmitter_down_fails_closed_and_is_retried(lab: Lab) -> None:
    mcp = lab.mcp
    real = mcp.idp_stream
    down = IdpStream(idp=mcp.idp, identity=mcp.identity, validator=mcp.ssf.idp_validator,
                     audience=mcp.settings.resource, endpoint_url=real.endpoint_url,
                     retry=0.05)
    port = _free_port()
    down.configuration_url = f"http://127.0.0.1:{port}/.well-known/ssf-configuration"
    token = user_token(lab)["access_token"]
    mcp.idp_stream = down
    try:
        assert down.start() is False
        with nothing_runs(lab, identity_too=False):
            result = mcp_call(lab, token, "list_groups", {"count": 1})
        assert result.is_error and result.text.startswith("[temporarily_unavailable]")
        assert f"127.0.0.1:{port}" in result.text
        down.configuration_url = real.configuration_url  # it comes back
        wait_for(lambda: down.ready, "the retried subscription", 30)
        assert not mcp_call(lab, token, "list_groups", {"count": 1}).is_error
    finally:
        mcp.idp_stream = real
        down.close()
        # the validator trusts the real stream's header again
        real.close()
        real._stop.clear()
        assert real.start()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_receiver_that_is_down_delays_only_its_own_stream(lab: Lab, identity: Any) -> None:
    """A stream whose receiver is gone (say, an MCP server killed without deleting it) keeps
    retrying its SET; the live MCP server's session-revoked goes past it."""
    base = f"{lab.verify.base_url}/v1.0/ssf"
    auth = {"Authorization": f"Bearer {management_token(lab, identity)}"}
    dead = httpx.post(f"{base}/streams", headers=auth, json={
        "delivery": {"method": "urn:ietf:rfc:8935",
                     "endpoint_url": f"http://127.0.0.1:{_free_port()}/events"},
        "events_requested": [SESSION_REVOKED], "aud": "gone"}).json()["stream_id"]
    try:
        assert httpx.post(f"{base}/verify", json={"stream_id": dead},
                          headers=auth).status_code == 204  # queued first, never delivered
        tokens = user_token(lab)
        sid = sid_of(tokens["access_token"])
        httpx.get(f"{lab.verify.issuer}/logout", params={"id_token_hint": tokens["id_token"]})
        dropped(lab, sid)
        waiting = [i.stream_id for i in lab.verify.transmitter._queue]
        assert dead in waiting  # still retrying, and the drop did not wait for it
    finally:
        httpx.delete(f"{base}/streams", params={"stream_id": dead}, headers=auth)


def test_a_stream_the_idp_lost_is_subscribed_anew(lab: Lab) -> None:
    """The IdP forgets the stream (here deleted through its API, as a restarted IdP would have
    lost it): the MCP server finds out on its next read-back, subscribes again, and a logout
    after that still reaches it."""
    stream = lab.mcp.idp_stream
    old, management = stream.stream_id, stream._management
    assert old is not None and management is not None
    assert httpx.delete(management[0], params={"stream_id": old}, headers={
        "Authorization": f"Bearer {management[1]}"}).status_code == 204
    wait_for(lambda: stream.ready and stream.stream_id != old, "a new subscription", 30)
    tokens = user_token(lab)
    sid = sid_of(tokens["access_token"])
    httpx.get(f"{lab.verify.issuer}/logout", params={"id_token_hint": tokens["id_token"]})
    assert "logout" in dropped(lab, sid)


def test_a_configuration_naming_another_issuer_is_not_trusted(lab: Lab) -> None:
    """SSF 1.0 §6.2: the issuer in the transmitter configuration must be the origin it was
    fetched from; one that names another issuer is not trusted and no stream is created."""
    posted: list[str] = []

    def other_host(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posted.append(str(request.url))
            return httpx.Response(201, json={"stream_id": "s"})
        return httpx.Response(200, json={
            "issuer": "https://attacker.example", "jwks_uri": "https://attacker.example/jwks",
            "delivery_methods_supported": ["urn:ietf:rfc:8935"],
            "configuration_endpoint": "https://attacker.example/streams"})

    validator = SetValidator(lab.mcp_url)
    mcp = lab.mcp
    stream = IdpStream(idp=mcp.idp, identity=mcp.identity, validator=validator,
                       audience=mcp.settings.resource, endpoint_url="http://127.0.0.1:1/x",
                       http=lambda: httpx.Client(transport=httpx.MockTransport(other_host)))
    try:
        assert stream.subscribe_once() is False
        assert stream.problem is not None and "SSF 1.0 §6.2" in stream.problem
        assert validator.trusted is None and posted == [] and not stream.ready
    finally:
        validator.close()
