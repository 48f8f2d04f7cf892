"""The simulated Verify's SSF receiver: CAEP session-revoked ends the session everywhere."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from harness.lab import Lab
from iia.identity import WorkloadIdentity
from tests.helpers import as_mcp_server, exchange, rar, sid_of, user_token
from tests.transmitter import TestTransmitter


@pytest.fixture(scope="module")
def transmitter(lab: Lab) -> Iterator[TestTransmitter]:
    t = TestTransmitter()
    with lab.verify.ssf.trusting(t.issuer, t.jwks_uri):  # Antenna is trusted again after
        yield t
    t.close()


def push(lab: Lab, token: str, content_type: str = "application/secevent+jwt") -> httpx.Response:
    return httpx.post(f"{lab.verify.base_url}/v1.0/ssf/events", content=token,
                      headers={"Content-Type": content_type, "Accept": "application/json"})


def session_subject(sid: str) -> dict:
    return {"format": "complex", "session": {"format": "opaque", "id": sid},
            "user": {"format": "email", "email": "alice@example.com"}}


def test_session_revoked_kills_the_session_everywhere(
        lab: Lab, identity: WorkloadIdentity, transmitter: TestTransmitter) -> None:
    tokens = user_token(lab)
    sid = sid_of(tokens["access_token"])
    obo = exchange(lab, identity, tokens["access_token"], rar(lab, "verify_read_users"))
    assert obo.status_code == 200
    response = push(lab, transmitter.set(lab.verify.issuer, session_subject(sid)))
    assert response.status_code == 202
    assert not lab.verify.sessions.alive(sid)
    assert "anomaly" in lab.verify.sessions.get(sid).end_reason
    introspected = as_mcp_server(identity, f"{lab.verify.issuer}/introspect",
                                 {"token": tokens["access_token"]}).json()
    assert introspected == {"active": False}
    again = exchange(lab, identity, tokens["access_token"], rar(lab, "verify_read_users"))
    assert again.json()["error"] == "invalid_grant" and "session" in \
        again.json()["error_description"]
    # the OBO token minted before the revocation dies with the session at the admin API
    api = httpx.get(f"{lab.verify.admin_api_url}/Users",
                    headers={"Authorization": f"Bearer {obo.json()['access_token']}"})
    assert api.status_code == 401


def test_duplicate_jti_is_acknowledged_and_acted_on_once(
        lab: Lab, transmitter: TestTransmitter) -> None:
    first_session = sid_of(user_token(lab, "bob@example.com")["access_token"])
    token = transmitter.set(lab.verify.issuer, {"format": "email", "email": "bob@example.com"})
    assert push(lab, token).status_code == 202
    assert not lab.verify.sessions.alive(first_session)
    later_session = sid_of(user_token(lab, "bob@example.com")["access_token"])
    again = push(lab, token)  # the same SET, replayed
    assert again.status_code == 202  # acknowledged again (delivery is at least once)...
    assert lab.verify.sessions.alive(later_session)  # ...was not acted on twice
    claims = jwt.decode(token, options={"verify_signature": False})
    acted_on = lab.verify.ssf.received[claims["jti"]].acted_on
    assert first_session in acted_on and later_session not in acted_on


@pytest.mark.parametrize("case,err", [
    ("bad signature", "invalid_key"),
    ("unknown kid", "invalid_key"),
    ("wrong issuer", "invalid_issuer"),
    ("wrong audience", "invalid_audience"),
    ("wrong typ", "invalid_request"),
    ("two events", "invalid_request"),
    ("not a JWT", "invalid_request"),
    ("wrong content type", "invalid_request"),
])
def test_bad_sets_are_refused_with_rfc8935_errors(lab: Lab, transmitter: TestTransmitter,
                                                  case: str, err: str) -> None:
    sid = sid_of(user_token(lab, "carol@example.com")["access_token"])
    subject = {**session_subject(sid),
               "user": {"format": "email", "email": "carol@example.com"}}
    aud = lab.verify.issuer
    content_type = "application/secevent+jwt"
    token = {
        "bad signature": lambda: transmitter.set(aud, subject,
                                                 key=ec.generate_private_key(ec.SECP256R1())),
        "unknown kid": lambda: transmitter.set(aud, subject, kid="nope"),
        "wrong issuer": lambda: transmitter.set(aud, subject, issuer="https://evil.test"),
        "wrong audience": lambda: transmitter.set("https://someone-else", subject),
        "wrong typ": lambda: transmitter.set(aud, subject, typ="JWT"),
        "two events": lambda: transmitter.set(aud, subject, events={"a": {}, "b": {}}),
        "not a JWT": lambda: "hello",
        "wrong content type": lambda: transmitter.set(aud, subject),
    }[case]()
    if case == "wrong content type":
        content_type = "application/json"
    response = push(lab, token, content_type)
    assert response.status_code == 400
    assert response.json()["err"] == err and response.json()["description"]
    assert lab.verify.sessions.alive(sid)  # nothing happened


def test_a_set_naming_someone_elses_session_does_nothing(
        lab: Lab, transmitter: TestTransmitter) -> None:
    sid = sid_of(user_token(lab, "erin@example.com")["access_token"])
    subject = {"format": "complex", "session": {"format": "opaque", "id": sid},
               "user": {"format": "email", "email": "frank@example.com"}}
    assert push(lab, transmitter.set(lab.verify.issuer, subject)).status_code == 202
    assert lab.verify.sessions.alive(sid)
