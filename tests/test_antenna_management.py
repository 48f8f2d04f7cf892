"""Outside receivers manage streams at Antenna with an access token of the IdP (issue #19 item 2).

The receiver is tests/spec_receiver.py run as its own process: it gets a client credentials
token (scope ssf.manage, resource = Antenna's issuer) for the registered client
`iia-ssf-receiver`, creates a push stream and takes SETs, checking each from the specs.
Refusals: no token, a token for another audience, the IdP's opaque token for its own
transmitter, a user's access token, one without the scope, an expired one, one signed by a key
the IdP does not publish: 401 each, and no stream is made. Management credentials and streams
survive a restart of Antenna (SQLite).
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from harness.lab import Lab
from iia.antenna import CAEP, POLL, Antenna, OAuthManagement
from iia.antenna.caep import session_revoked
from tests.spec_receiver import client_credentials_token, discover

TIMEOUT = 60.0  # a wait on a condition, generous for a loaded 2-core machine
ROOT = Path(__file__).resolve().parent.parent
CLIENT = "iia-ssf-receiver"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"


def receiver_secret(lab: Lab) -> str:
    client = lab.verify.clients.get(CLIENT)
    assert client is not None and client.secret is not None
    return str(client.secret.value)  # type: ignore[union-attr]


def token(lab: Lab, resource: str | None = None) -> str:
    return client_credentials_token(lab.verify.issuer, CLIENT, receiver_secret(lab),
                                    resource=resource or lab.antenna.issuer)


def streams_of(lab: Lab, owner: str) -> list[Any]:
    return list(lab.antenna.get_streams(owner, None))


class Process:
    """`python -m tests.spec_receiver` with its stdout read line by line."""

    def __init__(self, lab: Lab, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.spec_receiver", lab.antenna.issuer,
             lab.verify.issuer, CLIENT, *args], cwd=ROOT, env=env, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(receiver_secret(lab) + "\n")  # the secret on stdin, not argv
        self.proc.stdin.flush()
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, key: str) -> Any:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    assert self.proc.stderr is not None
                    raise AssertionError(f"the receiver exited: {self.proc.stderr.read()}"
                                         ) from None
                continue
            assert "errors" not in line, line["errors"]
            if key in line:
                return line
        raise AssertionError(f"timed out waiting for {key}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the receiver's signal to stop
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_an_outside_receiver_subscribes_from_its_own_process(lab: Lab, alg: str) -> None:
    receiver = Process(lab, "--alg", alg)
    try:
        stream = receiver.next("stream")["stream"]
        assert stream["iss"] == lab.antenna.issuer and stream["set_signing_alg"] == alg
        assert set(stream["events_delivered"]) == {CAEP["session-revoked"], VERIFICATION}
        found = lab.antenna.store.stream(stream["stream_id"])
        assert found is not None and found[0] == f"oauth:{CLIENT}"  # the IdP's client owns it
        first = receiver.next("set")  # the verification SET it asked for
        assert VERIFICATION in first["set"]["events"] and first["alg"] == alg
        sid = "outside-" + secrets.token_hex(4)
        lab.antenna.publish(CAEP["session-revoked"], session_revoked(reason_admin="test"),
                            {"format": "opaque", "id": sid})
        revoked = receiver.next("set")
        assert revoked["set"]["sub_id"] == {"format": "opaque", "id": sid}
        assert revoked["alg"] == alg and revoked["set"]["aud"] == stream["aud"]
    finally:
        receiver.close()
        for s in streams_of(lab, f"oauth:{CLIENT}"):
            lab.antenna.delete_stream(f"oauth:{CLIENT}", s["stream_id"])


def _forged(lab: Lab, **changes: Any) -> str:
    """A management token signed with the IdP's current key, with `changes` to its claims."""
    now = int(time.time())
    claims = {"iss": lab.verify.issuer, "sub": CLIENT, "client_id": CLIENT,
              "aud": lab.antenna.issuer, "scope": "ssf.manage", "iat": now, "exp": now + 300,
              "jti": secrets.token_urlsafe(8)}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return lab.verify.keys.sign(claims, typ="at+jwt")


def test_management_needs_the_idps_token_for_antenna(lab: Lab) -> None:
    config = discover(lab.antenna.issuer)
    assert config["authorization_schemes"] == [{"spec_urn": "urn:ietf:rfc:6749"}]
    body = {"delivery": {"method": POLL}, "events_requested": [CAEP["session-revoked"]]}
    opaque = httpx.post(f"{lab.verify.issuer}/token", auth=(CLIENT, receiver_secret(lab)),
                        data={"grant_type": "client_credentials", "scope": "ssf.manage"},
                        timeout=10).json()["access_token"]  # for the IdP's own transmitter
    stranger = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    refused = {
        "no token": None,
        "another audience": token(lab, resource="https://elsewhere.example/ssf"),
        "the IdP's opaque token": opaque,
        "no ssf.manage scope": _forged(lab, scope="openid"),
        "expired": _forged(lab, iat=now - 900, exp=now - 600),
        "another issuer": _forged(lab, iss="https://idp.example"),
        "not an access token (typ JWT)": lab.verify.keys.sign(
            {"iss": lab.verify.issuer, "aud": lab.antenna.issuer, "scope": "ssf.manage",
             "client_id": CLIENT, "iat": now, "exp": now + 300}, typ="JWT"),
        "a key the IdP does not publish": jwt.encode(
            {"iss": lab.verify.issuer, "aud": lab.antenna.issuer, "scope": "ssf.manage",
             "client_id": CLIENT, "iat": now, "exp": now + 300}, stranger, algorithm="ES256",
            headers={"typ": "at+jwt", "kid": lab.verify.keys.current.kid}),
    }
    before = len(streams_of(lab, f"oauth:{CLIENT}"))
    for why, bearer in refused.items():
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        response = httpx.post(config["configuration_endpoint"], json=body, headers=headers,
                              timeout=10)
        assert response.status_code == 401, (why, response.text)
        assert response.json()["error"] == "invalid_token", why
        assert "Bearer" in response.headers["www-authenticate"], why
    assert len(streams_of(lab, f"oauth:{CLIENT}")) == before  # nothing was made
    # the token for Antenna works, and only for its own client's streams
    good = {"Authorization": f"Bearer {token(lab)}"}
    made = httpx.post(config["configuration_endpoint"], json=body, headers=good, timeout=10)
    assert made.status_code == 201, made.text
    stream_id = made.json()["stream_id"]
    other = {"Authorization": f"Bearer {lab.antenna.register_client('someone')}"}
    assert httpx.get(config["configuration_endpoint"], params={"stream_id": stream_id},
                     headers=other, timeout=10).status_code == 404
    gone = httpx.delete(config["configuration_endpoint"], params={"stream_id": stream_id},
                        headers=good, timeout=10)
    assert gone.status_code == 204


def test_the_idp_issues_management_tokens_only_for_a_transmitters_url(lab: Lab) -> None:
    response = httpx.post(f"{lab.verify.issuer}/token", auth=(CLIENT, receiver_secret(lab)),
                          data={"grant_type": "client_credentials", "scope": "ssf.manage",
                                "resource": "not a url"}, timeout=10)
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"
    claims = jwt.decode(token(lab), options={"verify_signature": False})
    assert claims["aud"] == lab.antenna.issuer and claims["scope"] == "ssf.manage"
    assert claims["client_id"] == CLIENT and claims["exp"] - claims["iat"] <= 900
    assert jwt.get_unverified_header(token(lab))["typ"] == "at+jwt"


def test_credentials_and_streams_survive_a_restart(lab: Lab, tmp_path: Path) -> None:
    db, audience = tmp_path / "antenna.sqlite", "http://127.0.0.1:9"

    def antenna() -> Antenna:
        return Antenna(audience, db, management=OAuthManagement(
            issuer=lab.verify.issuer, jwks_uri=f"{lab.verify.issuer}/jwks", audience=audience))

    bearer = token(lab, resource=audience)
    first = antenna()
    local = first.register_client("local-receiver")
    owner = first.client(bearer)
    assert owner == f"oauth:{CLIENT}"
    made = first.create_stream(owner, {"delivery": {"method": POLL}, "aud": "urn:r",
                                       "events_requested": [CAEP["session-revoked"]],
                                       "set_signing_alg": "RS256"})
    local_stream = first.create_stream("local-receiver", {"delivery": {"method": POLL}})
    first.set_status(owner, made["stream_id"], "paused", "maintenance")
    first.stop()

    second = antenna()
    try:
        assert second.client(bearer) == owner and second.client(local) == "local-receiver"
        assert second.get_streams(owner, made["stream_id"]) == made
        assert second.status(owner, made["stream_id"]) == {
            "stream_id": made["stream_id"], "status": "paused", "reason": "maintenance"}
        assert second.get_streams("local-receiver", None) == [local_stream]
        assert second.client("not-a-token") is None
    finally:
        second.stop()
