"""Antenna's stream management and poll, exactly per SSF 1.0 §8.1.1 and RFC 8936, and the CAEP
Interoperability Profile's signing (issue #19 items 3 and 4), checked over HTTP with the
spec-written receiver's helpers (tests/spec_receiver.py: httpx and jwt only).

Each refusal is a 400 with a reason AND the stream as it was (read back with GET).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from harness.caep_receiver import CaepReceiver
from harness.net import HttpService, ServiceLoop, bind_loopback
from iia.antenna import (
    AGENT,
    CAEP,
    POLL,
    PUSH,
    SUPPORTED,
    Antenna,
    OAuthManagement,
    antenna_app,
)
from iia.antenna.caep import session_revoked
from tests.spec_receiver import SetChecker, auth_headers, discover, poll, subscribe

TIMEOUT = 30.0  # a wait on a condition, generous for a loaded 2-core machine
ISSUED = AGENT["token-exchange-issued"]
REVOKED = CAEP["session-revoked"]
UNKNOWN = "https://example.com/secevent/not-supported"


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Transmitter:
    def __init__(self, antenna: Antenna, services: ServiceLoop) -> None:
        self.antenna = antenna
        self.services = services
        self.token = antenna.register_client("spec")
        self.config = discover(antenna.issuer)

    def call(self, method: str, path: str = "/ssf/streams", **kw: Any) -> httpx.Response:
        return httpx.request(method, self.antenna.issuer + path, timeout=TIMEOUT,
                             headers=auth_headers(self.token), **kw)

    def get(self, stream_id: str) -> dict[str, Any]:
        response = self.call("GET", params={"stream_id": stream_id})
        assert response.status_code == 200, response.text
        return dict(response.json())

    def poll_stream(self, events: list[str], **extra: Any) -> dict[str, Any]:
        return subscribe(self.config, self.token, {"method": POLL}, events, aud="urn:spec",
                         **extra)

    def sid(self, sid: str) -> None:
        self.antenna.publish(REVOKED, session_revoked(reason_admin="test"),
                             {"format": "opaque", "id": sid})


@pytest.fixture
def tx(tmp_path: Path) -> Iterator[Transmitter]:
    with ServiceLoop("antenna-conformance") as services:
        sock = bind_loopback()
        antenna = Antenna(f"http://127.0.0.1:{sock.getsockname()[1]}", tmp_path / "a.sqlite",
                          poll_wait=TIMEOUT).start()
        services.serve(HttpService("antenna", antenna_app(antenna), sock))
        try:
            yield Transmitter(antenna, services)
        finally:
            antenna.stop()


def refused(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "invalid_request"
    for word in words:
        assert word in body["error_description"], body


# -- SSF 1.0 §8.1.1 ---------------------------------------------------------------------------

def test_events_delivered_is_requested_intersect_supported(tx: Transmitter) -> None:
    stream = tx.poll_stream([ISSUED, UNKNOWN, REVOKED])
    assert stream["events_delivered"] == [ISSUED, REVOKED]
    assert stream["events_supported"] == SUPPORTED and stream["aud"] == "urn:spec"


def test_create_refuses_transmitter_supplied_fields_that_disagree(tx: Transmitter) -> None:
    cases = {
        "iss": {"iss": "https://other.example"},
        "events_delivered": {"events_delivered": [UNKNOWN]},
        "stream_id": {"stream_id": "mine"},
    }
    for field, extra in cases.items():
        response = tx.call("POST", json={"delivery": {"method": POLL},
                                         "events_requested": [ISSUED], **extra})
        refused(response, field)
    assert tx.call("GET").json() == []  # nothing was made


def test_put_replaces_the_updatable_fields_and_never_aud_or_iss(tx: Transmitter) -> None:
    stream = tx.poll_stream([ISSUED], alg=None)
    # a spec-shaped PUT: the receiver-supplied fields only, no aud
    put = tx.call("PUT", json={"stream_id": stream["stream_id"],
                               "delivery": {"method": POLL}, "events_requested": [REVOKED],
                               "description": "replaced"})
    assert put.status_code == 200, put.text
    after = tx.get(stream["stream_id"])
    assert after["aud"] == "urn:spec" and after["iss"] == tx.antenna.issuer
    assert after["events_requested"] == [REVOKED] and after["events_delivered"] == [REVOKED]
    assert after["description"] == "replaced" and put.json() == after
    # the whole configuration read back, changed, PUT: fine while aud and iss say the same
    again = {**after, "description": "round trip"}
    assert tx.call("PUT", json=again).status_code == 200
    before = tx.get(stream["stream_id"])
    for field, value in (("aud", "urn:someone-else"), ("iss", "https://other.example"),
                         ("events_delivered", [ISSUED])):
        refused(tx.call("PUT", json={**before, field: value}), field)
        assert tx.get(stream["stream_id"]) == before  # nothing changed
    refused(tx.call("PUT", json={"stream_id": stream["stream_id"]}), "delivery")
    assert tx.get(stream["stream_id"]) == before


def test_patch_changes_what_it_names_and_never_aud_or_iss(tx: Transmitter) -> None:
    stream = tx.poll_stream([ISSUED, REVOKED])
    patched = tx.call("PATCH", json={"stream_id": stream["stream_id"],
                                     "description": "patched"})
    assert patched.status_code == 200, patched.text
    after = tx.get(stream["stream_id"])
    assert after == {**stream, "description": "patched"}  # the rest stays
    for field, value in (("aud", "urn:someone-else"), ("iss", "https://other.example"),
                         ("events_delivered", [ISSUED])):
        refused(tx.call("PATCH", json={"stream_id": stream["stream_id"], field: value}),
                field)
        assert tx.get(stream["stream_id"]) == after
    # events_requested changed with the events_delivered that follows from it: fine
    ok = tx.call("PATCH", json={"stream_id": stream["stream_id"], "events_requested": [ISSUED],
                                "events_delivered": [ISSUED]})
    assert ok.status_code == 200 and tx.get(stream["stream_id"])["events_delivered"] == [ISSUED]
    assert tx.call("PATCH", json={"description": "x"}).status_code == 400  # no stream_id
    assert tx.call("PATCH", json={"stream_id": "nope"}).status_code == 404


# -- RFC 8936 poll ----------------------------------------------------------------------------

def _endpoint(stream: dict[str, Any]) -> str:
    return str(stream["delivery"]["endpoint_url"])


def test_poll_waits_by_default_until_a_set_comes(tx: Transmitter) -> None:
    stream = tx.poll_stream([REVOKED])
    checker = SetChecker(tx.config, "urn:spec")
    got: list[Any] = []
    # returnImmediately left out: RFC 8936 §2.4 says false, so the poll waits for a SET
    thread = threading.Thread(target=lambda: got.append(
        poll(_endpoint(stream), tx.token, checker, ack=[], return_immediately=None)))
    thread.start()
    waiters = tx.antenna._poll_waiters._waiters  # type: ignore[attr-defined]
    eventually(lambda: len(waiters) == 1, "the poll to wait")
    tx.sid("s-long")
    thread.join(TIMEOUT)
    [(sets, more)] = got
    assert [s["sub_id"]["id"] for s in sets] == ["s-long"] and more is False
    # returnImmediately true with nothing pending: an empty answer at once
    empty, _ = poll(_endpoint(stream), tx.token, checker, ack=[sets[0]["jti"]],
                    return_immediately=True)
    assert empty == []


def test_a_long_poll_is_bounded(tmp_path: Path) -> None:
    antenna = Antenna("http://127.0.0.1:9", tmp_path / "a.sqlite", poll_wait=0.05)
    try:
        owner = "r"
        stream = antenna.create_stream(owner, {"delivery": {"method": POLL}})
        answer = antenna.poll(owner, stream["stream_id"], max_events=10, ack=[],
                              return_immediately=False)
        assert answer == {"sets": {}, "moreAvailable": False}
    finally:
        antenna.stop()


def test_set_errors_are_recorded_and_shown(tx: Transmitter) -> None:
    stream = tx.poll_stream([REVOKED])
    checker = SetChecker(tx.config, "urn:spec")
    tx.sid("s-bad")
    tx.sid("s-good")
    sets, _ = poll(_endpoint(stream), tx.token, checker, ack=[], return_immediately=True)
    bad, good = sets
    errs = {bad["jti"]: {"err": "invalid_request", "description": "subject unknown here"}}
    rest, _ = poll(_endpoint(stream), tx.token, checker, ack=[good["jti"]], set_errs=errs,
                   return_immediately=True)
    assert rest == []  # neither is handed out again
    status = tx.call("GET", "/ssf/status", params={"stream_id": stream["stream_id"]}).json()
    assert status["set_errors"] == [{"jti": bad["jti"],
                                     "error": "invalid_request: subject unknown here"}]
    assert tx.antenna.store.counts(stream["stream_id"]) == {"failed": 1, "delivered": 1}


def test_acks_and_errors_of_unknown_jtis_change_nothing(tx: Transmitter) -> None:
    stream = tx.poll_stream([REVOKED])
    checker = SetChecker(tx.config, "urn:spec")
    tx.sid("s-1")
    # RFC 8936 has no error for an ack of a jti it did not hand out: 200, and the pending SET
    # is still there
    sets, _ = poll(_endpoint(stream), tx.token, checker, ack=["no-such-jti"],
                   set_errs={"other": {"err": "invalid_key", "description": "x"}},
                   return_immediately=True)
    assert [s["sub_id"]["id"] for s in sets] == ["s-1"]
    assert tx.antenna.store.counts(stream["stream_id"]) == {"pending": 1}


@pytest.mark.parametrize("request_body, word", [
    ({"maxEvents": "ten"}, "maxEvents"), ({"maxEvents": -1}, "maxEvents"),
    ({"maxEvents": True}, "maxEvents"), ({"maxEvents": 1.5}, "maxEvents"),
    ({"returnImmediately": "yes"}, "returnImmediately"), ({"ack": "jti"}, "ack"),
    ({"ack": [1]}, "ack"), ({"setErrs": ["jti"]}, "setErrs"),
    ({"setErrs": {"j": "bad"}}, "setErrs"), ({"setErrs": {"j": {"description": "x"}}}, "setErrs"),
])
def test_bad_poll_requests_are_400_with_the_reason(tx: Transmitter, request_body: dict[str, Any],
                                                   word: str) -> None:
    stream = tx.poll_stream([REVOKED])
    tx.sid("s-1")
    response = httpx.post(_endpoint(stream), json={"returnImmediately": True, **request_body},
                          headers=auth_headers(tx.token), timeout=TIMEOUT)
    refused(response, word)
    assert tx.antenna.store.counts(stream["stream_id"]) == {"pending": 1}  # nothing changed


def test_max_events_zero_only_acknowledges(tx: Transmitter) -> None:
    stream = tx.poll_stream([REVOKED])
    checker = SetChecker(tx.config, "urn:spec")
    tx.sid("s-1")
    tx.sid("s-2")
    [first], more = poll(_endpoint(stream), tx.token, checker, ack=[], max_events=1)
    assert more is True
    none, more = poll(_endpoint(stream), tx.token, checker, ack=[first["jti"]], max_events=0)
    assert none == [] and more is True
    assert tx.antenna.store.counts(stream["stream_id"]) == {"delivered": 1, "pending": 1}


# -- CAEP Interoperability Profile ------------------------------------------------------------

def test_metadata_names_oauth_and_both_algorithms(tx: Transmitter) -> None:
    assert tx.config["authorization_schemes"] == [{"spec_urn": "urn:ietf:rfc:6749"}]
    assert tx.config["set_signing_alg_values_supported"] == ["ES256", "RS256"]
    keys = httpx.get(tx.config["jwks_uri"]).json()["keys"]
    assert sorted((k["alg"], k["kty"]) for k in keys) == [("ES256", "EC"), ("RS256", "RSA")]
    assert len({k["kid"] for k in keys}) == 2


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_a_stream_gets_sets_signed_with_the_algorithm_it_chose(tx: Transmitter,
                                                               alg: str) -> None:
    stream = tx.poll_stream([REVOKED], alg=alg)
    assert stream["set_signing_alg"] == alg
    strict = SetChecker(tx.config, "urn:spec", algs=(alg,))
    tx.sid("s-1")
    sets, _ = poll(_endpoint(stream), tx.token, strict, ack=[], return_immediately=True)
    assert len(sets) == 1 and strict.seen_algs == [alg]
    other = "RS256" if alg == "ES256" else "ES256"
    with pytest.raises(ValueError, match="not accepted"):  # the checker has teeth
        poll(_endpoint(stream), tx.token, SetChecker(tx.config, "urn:spec", algs=(other,)),
             ack=[], return_immediately=True)


def test_the_default_is_es256_and_an_unknown_algorithm_is_refused(tx: Transmitter) -> None:
    assert tx.poll_stream([REVOKED])["set_signing_alg"] == "ES256"
    refused(tx.call("POST", json={"delivery": {"method": POLL}, "set_signing_alg": "HS256"}),
            "set_signing_alg")
    assert len(tx.call("GET").json()) == 1


def test_iias_receivers_take_rs256_sets_by_key(tx: Transmitter) -> None:
    """harness/caep_receiver.py (iia.ssf's validator) takes an RS256 stream's pushed SETs."""
    sock = bind_loopback()
    receiver = CaepReceiver(f"http://127.0.0.1:{sock.getsockname()[1]}/events")
    receiver.subscribe(tx.antenna.issuer, f"{tx.antenna.issuer}/jwks")
    tx.services.serve(HttpService("caep", receiver.app(), sock))
    made = tx.call("POST", json={"delivery": {"method": PUSH, "endpoint_url": receiver.audience},
                                 "events_requested": [REVOKED], "aud": receiver.audience,
                                 "set_signing_alg": "RS256"})
    assert made.status_code == 201, made.text
    tx.sid("s-rs")
    eventually(lambda: bool(receiver.events()), "the RS256 SET at the receiver")
    assert receiver.events()[0].claims["sub_id"] == {"format": "opaque", "id": "s-rs"}


def test_management_fails_closed_naming_the_idp_when_its_keys_are_unreachable(
        tmp_path: Path) -> None:
    with ServiceLoop("antenna-idp-down") as services:
        sock = bind_loopback()
        issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
        down = bind_loopback()  # bound, never served: nothing answers there
        antenna = Antenna(issuer, tmp_path / "a.sqlite", management=OAuthManagement(
            issuer="https://idp.example", audience=issuer,
            jwks_uri=f"http://127.0.0.1:{down.getsockname()[1]}/jwks")).start()
        services.serve(HttpService("antenna", antenna_app(antenna), sock))
        try:
            bearer = jwt.encode({"iss": "https://idp.example", "aud": issuer},
                                ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                                headers={"typ": "at+jwt", "kid": "k1"})
            response = httpx.post(f"{issuer}/ssf/streams", timeout=TIMEOUT,
                                  headers=auth_headers(bearer),
                                  json={"delivery": {"method": POLL}})
            assert response.status_code == 503, response.text
            assert response.json()["dependency"] == "idp"
            assert antenna.store.streams() == []
        finally:
            antenna.stop()
            down.close()


def test_a_push_streams_config_read_back_and_put_keeps_its_authorization(
        tx: Transmitter) -> None:
    """GET masks the push Authorization header; PUT of that copy keeps the real one."""
    sock = bind_loopback()
    receiver = CaepReceiver(f"http://127.0.0.1:{sock.getsockname()[1]}/events")
    header = "Bearer push-secret-for-the-test"
    receiver.subscribe(tx.antenna.issuer, f"{tx.antenna.issuer}/jwks", header)
    tx.services.serve(HttpService("caep", receiver.app(), sock))
    made = tx.call("POST", json={"delivery": {"method": PUSH, "endpoint_url": receiver.audience,
                                              "authorization_header": header},
                                 "events_requested": [REVOKED], "aud": receiver.audience})
    assert made.status_code == 201, made.text
    copy = tx.get(made.json()["stream_id"])
    assert copy["delivery"]["authorization_header"] == "(set)"
    assert tx.call("PUT", json={**copy, "description": "again"}).status_code == 200
    tx.sid("s-auth")
    eventually(lambda: bool(receiver.events()), "the SET pushed with the kept header")
