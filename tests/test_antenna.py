"""Antenna, the SSF 1.0 transmitter: the SET profile (checked with an independent JOSE library),
stream management, durable push delivery (RFC 8935), poll delivery (RFC 8936), and the CAEP
receiver on the other end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt as jose_jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from harness.caep_receiver import CaepReceiver
from harness.net import HttpService, ServiceLoop, bind_loopback
from iia.antenna import AGENT, CAEP, POLL, PUSH, SUPPORTED, VERIFICATION, Antenna, antenna_app
from iia.events import EventBus

TIMEOUT = 30.0  # a wait on a condition, generous for a loaded 2-core machine


def eventually(check, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class World:
    antenna: Antenna
    bus: EventBus
    receiver: CaepReceiver
    services: ServiceLoop
    receiver_service: HttpService
    token: str  # the receiver's management token

    def api(self, method: str, path: str, **kw) -> httpx.Response:
        return httpx.request(method, self.antenna.issuer + path, timeout=TIMEOUT,
                             headers={"Authorization": f"Bearer {self.token}"}, **kw)

    def stream(self, events: list[str], method: str = PUSH) -> str:
        delivery = {"method": method}
        if method == PUSH:
            delivery["endpoint_url"] = self.receiver.audience
        response = self.api("POST", "/ssf/streams", json={
            "delivery": delivery, "events_requested": events, "aud": self.receiver.audience})
        assert response.status_code == 201, response.text
        return response.json()["stream_id"]

    def decision(self, n: int = 1, sid: str = "s-1") -> None:
        for i in range(n):
            self.bus.emit("agent:token_exchange_success", session_id=sid,
                          user_email="alice@example.com", tool_name="list_users", tier=1,
                          rar_type="verify_read_users", rar_summary=f"call {i}", duration_ms=3,
                          call_id=f"c{i}")

    def receiver_down(self) -> None:
        self.services.stop_service(self.receiver_service)

    def receiver_up(self) -> None:
        port = int(self.receiver.audience.split(":")[2].split("/")[0])
        self.receiver_service = self.services.serve(
            HttpService("caep", self.receiver.app(), bind_loopback(port)))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    bus = EventBus()
    with ServiceLoop("antenna-test") as services:
        sock = bind_loopback()
        antenna = Antenna(f"http://127.0.0.1:{sock.getsockname()[1]}", tmp_path / "a.sqlite",
                          events=bus).start()
        services.serve(HttpService("antenna", antenna_app(antenna), sock))
        rsock = bind_loopback()
        receiver = CaepReceiver(f"http://127.0.0.1:{rsock.getsockname()[1]}/events")
        receiver.subscribe(antenna.issuer, f"{antenna.issuer}/jwks")
        rservice = services.serve(HttpService("caep", receiver.app(), rsock))
        try:
            yield World(antenna, bus, receiver, services, rservice,
                        antenna.register_client("caep"))
        finally:
            antenna.stop()


def test_sets_follow_the_ssf_profile_checked_with_an_independent_library(world: World) -> None:
    """The SET the receiver got over the wire (not one re-signed here), checked with joserfc
    against the JWKS Antenna publishes over HTTP."""
    world.stream([AGENT["token-exchange-issued"]])
    world.decision()
    eventually(lambda: world.receiver.events(), what="a SET")
    received = world.receiver.events()[0]
    wire = received.token
    assert wire.count(".") == 2  # a compact JWS, as pushed
    meta = httpx.get(f"{world.antenna.issuer}/.well-known/ssf-configuration").json()
    jwks = httpx.get(meta["jwks_uri"]).json()
    keys = KeySet.import_key_set(jwks)
    decoded = jose_jwt.decode(wire, keys, algorithms=["ES256"])  # verifies the signature
    assert decoded.header["typ"] == "secevent+jwt" and decoded.header["alg"] == "ES256"
    assert decoded.header["kid"] in {k["kid"] for k in jwks["keys"]}
    claims = decoded.claims
    jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": world.antenna.issuer},
        aud={"essential": True, "value": world.receiver.audience},
        jti={"essential": True, "value": received.jti},
        iat={"essential": True}).validate(claims)
    assert isinstance(claims["iat"], int) and abs(claims["iat"] - time.time()) < 60
    assert claims["txn"] == "c0"
    assert "exp" not in claims and "sub" not in claims  # SSF: sub_id instead; SETs never expire
    assert claims["sub_id"] == {"format": "complex",
                                "session": {"format": "opaque", "id": "s-1"},
                                "user": {"format": "email", "email": "alice@example.com"}}
    [(event_type, payload)] = claims["events"].items()  # exactly one event
    assert event_type == AGENT["token-exchange-issued"]
    assert payload["toolName"] == "list_users" and payload["tier"] == 1
    assert claims == received.claims  # what the receiver stored is what was signed
    # the check has teeth: one flipped byte in the signature and joserfc refuses the token
    head, body, sig = wire.split(".")
    forged = ".".join([head, body, ("A" if sig[0] != "A" else "B") + sig[1:]])
    with pytest.raises(BadSignatureError):
        jose_jwt.decode(forged, keys, algorithms=["ES256"])
    # the raw SET stays in memory: not in the record's repr, not in GET /received
    assert wire not in repr(received)
    listed = httpx.get(world.receiver.audience.rsplit("/events", 1)[0] + "/received")
    assert listed.status_code == 200 and wire not in listed.text and sig not in listed.text


def test_transmitter_metadata(world: World) -> None:
    meta = httpx.get(f"{world.antenna.issuer}/.well-known/ssf-configuration").json()
    assert meta["issuer"] == world.antenna.issuer and meta["jwks_uri"].endswith("/jwks")
    assert set(meta["delivery_methods_supported"]) == {PUSH, POLL}
    assert meta["configuration_endpoint"].endswith("/ssf/streams")
    assert CAEP["session-revoked"] in SUPPORTED and AGENT["approval-denied"] in SUPPORTED


def test_stream_management_needs_the_owners_token(world: World) -> None:
    stream_id = world.stream([CAEP["session-revoked"]])
    anonymous = httpx.get(f"{world.antenna.issuer}/ssf/streams", params={"stream_id": stream_id})
    assert anonymous.status_code == 401
    other = world.antenna.register_client("someone-else")
    foreign = httpx.get(f"{world.antenna.issuer}/ssf/streams", params={"stream_id": stream_id},
                        headers={"Authorization": f"Bearer {other}"})
    assert foreign.status_code == 404
    got = world.api("GET", "/ssf/streams", params={"stream_id": stream_id}).json()
    assert got["events_delivered"] == [CAEP["session-revoked"]]
    updated = world.api("PATCH", "/ssf/streams", json={
        "stream_id": stream_id, "events_requested": [CAEP["session-revoked"], "urn:unknown"]})
    assert updated.json()["events_delivered"] == [CAEP["session-revoked"]]
    assert world.api("DELETE", "/ssf/streams", params={"stream_id": stream_id}).status_code \
        == 204
    assert world.api("GET", "/ssf/streams", params={"stream_id": stream_id}).status_code == 404
    bad = world.api("POST", "/ssf/streams", json={"delivery": {"method": "carrier-pigeon"}})
    assert bad.status_code == 400


def test_verification_event(world: World) -> None:
    stream_id = world.stream([VERIFICATION])
    assert world.api("POST", "/ssf/verify", json={"stream_id": stream_id,
                                                  "state": "abc"}).status_code == 204
    eventually(lambda: world.receiver.events(VERIFICATION), what="the verification event")
    assert world.receiver.events(VERIFICATION)[0].claims["events"][VERIFICATION] == \
        {"state": "abc"}


def test_receiver_down_then_up_loses_nothing_and_acts_once(world: World) -> None:
    stream_id = world.stream([AGENT["token-exchange-issued"]])
    world.receiver_down()
    world.decision(20)
    time.sleep(0.3)
    assert world.antenna.store.counts(stream_id).get("pending") == 20
    world.receiver_up()
    eventually(lambda: len(world.receiver.events()) == 20
               and world.antenna.store.counts(stream_id) == {"delivered": 20},
               timeout=40, what="all 20 SETs received and marked delivered")
    assert len({e.jti for e in world.receiver.events()}) == 20  # none twice in effect


def test_a_failing_receiver_does_not_block_other_streams(world: World, tmp_path: Path) -> None:
    dead = world.api("POST", "/ssf/streams", json={
        "delivery": {"method": PUSH, "endpoint_url": "http://127.0.0.1:9/nowhere"},
        "events_requested": [AGENT["token-exchange-issued"]], "aud": "x"}).json()["stream_id"]
    live = world.stream([AGENT["token-exchange-issued"]])
    world.decision(5)
    eventually(lambda: world.antenna.store.counts(live) == {"delivered": 5}, what="live stream")
    assert world.antenna.store.counts(dead).get("pending") == 5


def test_a_fault_inside_the_worker_does_not_stop_delivery(world: World,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The signer fails once (a key being swapped, a bug): the worker logs it, pauses, and
    delivers everything afterwards; nothing is lost or marked failed."""
    real_sign, calls = world.antenna.signer.sign, []

    def flaky(claims: dict, **kwargs: Any) -> str:
        calls.append(claims["jti"])
        if len(calls) == 1:
            raise RuntimeError("signer unavailable")
        return real_sign(claims, **kwargs)

    monkeypatch.setattr(world.antenna.signer, "sign", flaky)
    stream_id = world.stream([AGENT["token-exchange-issued"]])
    world.decision(3)
    # the receiver stores a SET before its 202 reaches the worker: wait for the outbox too
    eventually(lambda: len(world.receiver.events()) == 3
               and world.antenna.store.counts(stream_id) == {"delivered": 3},
               what="delivery after the fault")
    assert world.antenna._workers[stream_id].faults == 1 and len(calls) == 4


def test_duplicate_jti_is_acknowledged_and_stored_once(world: World) -> None:
    world.stream([AGENT["token-exchange-issued"]])
    world.decision()
    eventually(lambda: world.receiver.events(), what="a SET")
    token = world.receiver.events()[0].token  # replay exactly what was pushed
    for _ in range(2):
        again = httpx.post(world.receiver.audience, content=token,
                           headers={"Content-Type": "application/secevent+jwt"})
        assert again.status_code == 202  # at-least-once delivery: acknowledged again...
    assert len(world.receiver.events()) == 1  # ...and stored once
    assert world.receiver.deliveries == 3 and world.receiver.refusals.kept() == 0


def test_paused_holds_and_disabled_drops(world: World) -> None:
    stream_id = world.stream([AGENT["token-exchange-issued"]])
    world.api("POST", "/ssf/status", json={"stream_id": stream_id, "status": "paused"})
    world.decision(3)
    time.sleep(0.3)
    assert world.receiver.events() == []
    assert world.api("GET", "/ssf/status", params={"stream_id": stream_id}).json()["status"] \
        == "paused"
    world.api("POST", "/ssf/status", json={"stream_id": stream_id, "status": "enabled"})
    eventually(lambda: len(world.receiver.events()) == 3, what="the held SETs")
    world.api("POST", "/ssf/status", json={"stream_id": stream_id, "status": "disabled",
                                           "reason": "maintenance"})
    world.decision(4)
    world.api("POST", "/ssf/status", json={"stream_id": stream_id, "status": "enabled"})
    world.decision(1)
    eventually(lambda: len(world.receiver.events()) == 4, what="the one after re-enabling")
    time.sleep(0.3)
    assert len(world.receiver.events()) == 4  # the 4 sent while disabled were dropped


def test_poll_delivery_rfc8936(world: World) -> None:
    stream_id = world.stream([AGENT["token-exchange-issued"]], method=POLL)
    config = world.api("GET", "/ssf/streams", params={"stream_id": stream_id}).json()
    poll_url = config["delivery"]["endpoint_url"]
    world.decision(3)
    headers = {"Authorization": f"Bearer {world.token}"}
    first = httpx.post(poll_url, json={"maxEvents": 2, "returnImmediately": True},
                       headers=headers).json()
    assert len(first["sets"]) == 2 and first["moreAvailable"] is True
    keys = KeySet.import_key_set(httpx.get(f"{world.antenna.issuer}/jwks").json())
    for jti, token in first["sets"].items():
        assert jose_jwt.decode(token, keys, algorithms=["ES256"]).claims["jti"] == jti
    second = httpx.post(poll_url, json={"maxEvents": 10, "ack": list(first["sets"])},
                        headers=headers).json()
    assert len(second["sets"]) == 1 and second["moreAvailable"] is False
    third = httpx.post(poll_url, json={"ack": list(second["sets"]), "returnImmediately": True},
                       headers=headers).json()
    assert third == {"sets": {}, "moreAvailable": False}


@pytest.mark.parametrize("case,err", [("bad signature", "invalid_key"),
                                      ("wrong issuer", "invalid_issuer"),
                                      ("wrong audience", "invalid_audience"),
                                      ("wrong typ", "invalid_request")])
def test_the_caep_receiver_refuses_bad_sets(world: World, case: str, err: str) -> None:
    from tests.transmitter import TestTransmitter

    impostor = TestTransmitter(issuer=world.antenna.issuer)  # same name, other key
    subject = {"format": "opaque", "id": "s"}
    try:
        token = {
            "bad signature": lambda: impostor.set(world.receiver.audience, subject,
                                                  kid=world.antenna.signer.kid),
            "wrong issuer": lambda: world.antenna.signer.sign({
                **world.antenna.signer.claims(audience=world.receiver.audience,
                                              event_type=VERIFICATION, event={},
                                              subject=subject), "iss": "https://evil"}),
            "wrong audience": lambda: world.antenna.signer.sign(world.antenna.signer.claims(
                audience="https://someone-else", event_type=VERIFICATION, event={},
                subject=subject)),
            "wrong typ": lambda: world.antenna.signer.sign(world.antenna.signer.claims(
                audience=world.receiver.audience, event_type=VERIFICATION, event={},
                subject=subject), typ="JWT"),
        }[case]()
    finally:
        impostor.close()
    response = httpx.post(world.receiver.audience, content=token,
                          headers={"Content-Type": "application/secevent+jwt"})
    assert response.status_code == 400 and response.json()["err"] == err
    assert world.receiver.events() == []


def test_the_store_is_readable_by_its_owner_only(world: World, tmp_path: Path) -> None:
    import stat

    from iia.antenna.store import Store

    world.stream([AGENT["token-exchange-issued"]])
    world.decision()
    eventually(lambda: world.receiver.events(), what="a SET")
    files = [p for p in tmp_path.iterdir() if p.name.startswith("a.sqlite")]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), \
        {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    loose = tmp_path / "loose.sqlite"
    loose.touch(mode=0o644)
    Store(loose).close()
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def test_an_expired_approval_becomes_one_approval_expired_set_per_stream(world: World) -> None:
    """`agent:hitl_expired` (a push nobody answered) is a decision like any other: each stream
    that asked for approval-expired gets exactly one SET for it; others get nothing."""
    first = world.stream([AGENT["approval-expired"]])
    second = world.stream([AGENT["approval-expired"], AGENT["approval-denied"]])
    denied_only = world.stream([AGENT["approval-denied"]])
    event = world.bus.emit("agent:hitl_expired", outcome="expired", session_id="s-9",
                           user_email="alice@example.com", tool_name="deactivate_user", tier=3,
                           reason="no answer on the phone within 60 s", duration_ms=60000,
                           call_id="c-exp", correlation={"approvalId": "req-1"})
    eventually(lambda: len(world.receiver.events(AGENT["approval-expired"])) == 2
               and world.antenna.store.counts(first) == {"delivered": 1}
               and world.antenna.store.counts(second) == {"delivered": 1},
               what="one approval-expired SET per stream, marked delivered")
    time.sleep(0.2)  # nothing else trickles in
    received = world.receiver.events()
    assert [e.event_type for e in received] == [AGENT["approval-expired"]] * 2
    assert world.antenna.store.counts(denied_only) == {}
    for got in received:
        payload = got.claims["events"][AGENT["approval-expired"]]
        assert payload["outcome"] == "expired" and payload["durationMs"] == 60000
        assert payload["correlation"] == {"approvalId": "req-1"}
        assert payload["bus_event_id"] == event.event_id
        assert got.claims["sub_id"]["session"]["id"] == "s-9"


def test_an_unanswered_push_neither_counts_as_a_denial_nor_resets_the_streak() -> None:
    from iia.antenna import AnomalyDetector, AnomalyRules
    from iia.events import SecurityEvent

    revoked: list[tuple[str, str | None, str]] = []
    detector = AnomalyDetector(AnomalyRules(denied_pushes_in_a_row=3),
                               lambda sid, email, why: revoked.append((sid, email, why)))

    def push(sid: str, *outcomes: str) -> None:
        for kind in outcomes:
            detector.observe(SecurityEvent(type=f"agent:hitl_{kind}", session_id=sid,
                                           user_email="bob@example.com"))

    push("idle", "expired", "expired", "expired", "expired", "expired")
    assert revoked == []  # an unattended phone ends no session
    push("mixed", "denied", "expired", "denied", "expired")
    assert revoked == []  # two denials so far: the expiries did not count...
    push("mixed", "denied")
    assert revoked == [("mixed", "bob@example.com",
                        "anomaly: 3 push approvals denied in a row")]  # ...nor reset the streak
    push("reset", "denied", "denied", "approved", "denied", "expired", "denied")
    assert [sid for sid, _, _ in revoked] == ["mixed"]  # an approval does reset it


# CAEP 1.0 event-specific claims, from the spec (openid-caep-1_0, §3), written out here rather
# than taken from iia.antenna.caep so the check does not grade its own homework.
CAEP_REQUIRED = {
    CAEP["session-revoked"]: {},
    CAEP["token-claims-change"]: {"claims": dict},
    CAEP["credential-change"]: {"credential_type": str, "change_type": str},
    CAEP["assurance-level-change"]: {"namespace": str, "current_level": str},
}


def assert_caep_1_0(event_type: str, payload: dict) -> None:
    for name, kind in CAEP_REQUIRED[event_type].items():
        assert isinstance(payload.get(name), kind) and payload[name], (event_type, name)
    assert isinstance(payload.get("event_timestamp", 0), int)
    assert payload.get("initiating_entity", "policy") in ("admin", "user", "policy", "system")
    for reason in ("reason_admin", "reason_user"):
        assert reason not in payload or (isinstance(payload[reason], dict) and payload[reason])
    if event_type == CAEP["credential-change"]:
        assert payload["change_type"] in ("create", "revoke", "update", "delete")
    if event_type == CAEP["assurance-level-change"]:
        assert payload.get("change_direction", "increase") in ("increase", "decrease")
        if "previous_level" in payload:  # SHOULD say which way it went
            assert "change_direction" in payload


def test_antenna_transmits_every_caep_event_type_it_advertises(world: World) -> None:
    from iia.antenna import caep

    assert set(CAEP.values()) <= set(SUPPORTED)
    world.stream(list(CAEP.values()))
    user = {"format": "email", "email": "alice@example.com"}
    sent = {
        CAEP["session-revoked"]: caep.session_revoked(reason_admin="anomaly: test"),
        CAEP["token-claims-change"]: caep.token_claims_change(
            {"groups": ["Sales"]}, initiating_entity="admin", reason_admin="group removed"),
        CAEP["credential-change"]: caep.credential_change(
            "password", "update", initiating_entity="user", friendly_name="password"),
        CAEP["assurance-level-change"]: caep.assurance_level_change(
            "NIST-AAL", "nist-aal2", previous_level="nist-aal1", change_direction="increase",
            initiating_entity="user"),
    }
    jtis = {t: world.antenna.publish(t, payload, user, txn="t-caep")
            for t, payload in sent.items()}
    eventually(lambda: len(world.receiver.events()) == 4, what="the four CAEP SETs")
    for got in world.receiver.events():
        assert [got.jti] == jtis[got.event_type]
        assert list(got.claims["events"]) == [got.event_type]  # one event per SET
        payload = got.claims["events"][got.event_type]
        assert payload == sent[got.event_type]
        assert_caep_1_0(got.event_type, payload)
        assert got.claims["sub_id"] == user and got.claims["txn"] == "t-caep"


@pytest.mark.parametrize("event_type,payload", [
    (CAEP["credential-change"], {"credential_type": "password"}),  # no change_type
    (CAEP["credential-change"], {"credential_type": "password", "change_type": "rotate"}),
    (CAEP["assurance-level-change"], {"namespace": "NIST-AAL"}),  # no current_level
    (CAEP["assurance-level-change"], {"namespace": "NIST-AAL", "current_level": "nist-aal2",
                                      "change_direction": "sideways"}),
    (CAEP["token-claims-change"], {"claims": {}}),
    (CAEP["session-revoked"], {"initiating_entity": "robot"}),
])
def test_antenna_refuses_to_sign_a_caep_event_the_spec_does_not_allow(
        world: World, event_type: str, payload: dict) -> None:
    from iia.antenna.caep import CaepEventError

    stream_id = world.stream(list(CAEP.values()))
    with pytest.raises(CaepEventError) as err:
        world.antenna.publish(event_type, payload, {"format": "opaque", "id": "x"})
    assert err.value.code == "invalid_event"
    assert world.antenna.store.counts(stream_id) == {}


def test_a_stale_client_secret_becomes_one_credential_change_set(world: World) -> None:
    """The one natural CAEP credential-change in the product: the MCP server's Vault-held Verify
    client secret was found stale and re-read (`vault:rotation_retry`). Ordinary reads, logins
    and SVID fetches are not SETs."""
    world.stream(list(CAEP.values()))
    with_session = {"session_id": "s-2", "user_email": "alice@example.com", "call_id": "c-rot"}
    world.bus.emit("spiffe:svid_fetched", duration_ms=4, **with_session)
    world.bus.emit("vault:login", duration_ms=6, **with_session)
    world.bus.emit("vault:secret_read", duration_ms=2, details={"version": 7}, **with_session)
    world.bus.emit("vault:rotation_retry", outcome="retry", duration_ms=9,
                   reason="the client secret of mcp-server is stale",
                   details={"staleVersion": 7, "clientId": "mcp-server"}, **with_session)
    eventually(lambda: world.receiver.events(), what="the credential-change SET")
    time.sleep(0.2)
    [got] = world.receiver.events()
    assert got.event_type == CAEP["credential-change"]
    payload = got.claims["events"][CAEP["credential-change"]]
    assert_caep_1_0(CAEP["credential-change"], payload)
    assert payload["credential_type"] == "client-secret" and payload["change_type"] == "update"
    assert payload["initiating_entity"] == "system" and "version 7" in payload["reason_admin"]["en"]
    # about the client whose secret changed, not about the user's session
    assert got.claims["sub_id"] == {"format": "opaque", "id": "mcp-server"}
    assert got.claims["txn"] == "c-rot"


def test_a_bus_events_id_leads_to_the_sets_the_receiver_got(world: World,
                                                             tmp_path: Path) -> None:
    """One record joins user, agent, operation, approval, token and SET: the bus event carries
    userEmail, spiffeId, rarType, correlation.approvalId and .oboJti; `antenna.sets_for(eventId)`
    gives the jti of each SET it became; each SET names the event back (`bus_event_id`) and
    shares `txn` (the callId) with the other SETs of the same tool call."""
    from iia.antenna.store import Store

    streams = {world.stream([AGENT["token-exchange-issued"]]) for _ in range(2)}
    world.stream([AGENT["approval-given"]])  # wants something else: no SET from this event
    other = world.bus.emit("agent:token_exchange_success", session_id="s-1", call_id="c-0",
                           user_email="bob@example.com", tool_name="list_groups", tier=1)
    event = world.bus.emit(
        "agent:token_exchange_success", session_id="s-1", call_id="c-1",
        user_email="alice@example.com", tool_name="create_user", tier=2,
        rar_type="verify_write_users", duration_ms=12,
        spiffe_id="spiffe://iia.lab/agentic-workload",
        correlation={"approvalId": "req-7", "oboJti": "obo-jti-1"})
    issued = world.antenna.sets_for(event.event_id)
    assert {stream for stream, _ in issued} == streams and len(issued) == 2
    eventually(lambda: len(world.receiver.events()) == 4, what="two SETs per event")
    received = {e.jti: e for e in world.receiver.events()}
    for _, jti in issued:
        got = received[jti]  # the receiver got exactly these jtis...
        payload = got.claims["events"][AGENT["token-exchange-issued"]]
        assert payload["bus_event_id"] == event.event_id and got.claims["txn"] == "c-1"
        assert payload["correlation"] == {"approvalId": "req-7", "oboJti": "obo-jti-1"}
        assert payload["userEmail"] == "alice@example.com"
        assert payload["spiffeId"] == "spiffe://iia.lab/agentic-workload"
    others = {jti for _, jti in world.antenna.sets_for(other.event_id)}
    assert others == set(received) - {jti for _, jti in issued}  # ...and the rest are the other's
    assert world.antenna.sets_for("no-such-event") == []
    # the index is durable: it is in the outbox's database, not in memory
    reopened = Store(tmp_path / "a.sqlite")
    try:
        assert reopened.sets_for(event.event_id) == issued
    finally:
        reopened.close()


def test_sets_from_concurrent_emitters_reach_the_receiver_once_each_in_order(
        world: World) -> None:
    """Through the outbox's writer (batched commits) to the CAEP receiver over RFC 8935: every
    SET once, each session's in the order its decisions were emitted (DESIGN §7: FIFO)."""
    import threading

    stream_id = world.stream([AGENT["token-exchange-issued"]])
    sessions = [f"s-{k}" for k in range(4)]
    threads = [threading.Thread(target=world.decision, args=(10, sid)) for sid in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    eventually(lambda: len(world.receiver.events()) == 40
               and world.antenna.store.counts(stream_id) == {"delivered": 40},
               what="40 SETs received and marked delivered")
    received = world.receiver.events()
    assert len({e.jti for e in received}) == 40
    for sid in sessions:
        mine = [e.claims["events"][AGENT["token-exchange-issued"]]["rarSummary"]
                for e in received if e.claims["sub_id"]["session"]["id"] == sid]
        assert mine == [f"call {i}" for i in range(10)]
