"""The one SET validator (iia.ssf.SetValidator) at each of the lab's three SSF receivers, over real
HTTP: the MCP server's (iia/mcp_server/ssf_receiver.py), the simulated IdP's
(harness/verify/ssf_receiver.py) and the CAEP receiver (harness/caep_receiver.py).

Each rule of a pushed SET (RFC 8417, RFC 8935, SSF 1.0) has a case here that breaks that rule and
nothing else: the push is refused with its RFC 8935 `err` code and a sentence, and nothing changed
(the session is alive at the MCP server and at the IdP, no receiver recorded the SET, the IdP's
audit trail has the refusal). The happy paths (ES256 and RS256, the same claims, headers and
Authorization) show that the baseline each case departs from is accepted.

A test-side signer has keys of its own (P-256 and RSA-2048); while this module runs, every receiver
trusts a JWKS that holds Antenna's keys and the signer's, under Antenna's issuer, so Antenna's own
pushes keep being accepted meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from harness.lab import Lab
from iia.antenna import CAEP
from iia.ssf import AlreadyReceived, InvalidRequest, SetValidator, Transmitter
from iia.ssf.set_validation import SeenJtis
from tests.helpers import sid_of, user_token
from tests.transmitter import serve_jwks

USER = "trent@example.com"
REASON = "test: set validation"
RECEIVERS = ("mcp", "verify", "caep_receiver")
MCP_HEADERS = {"Accept": "application/json, text/event-stream",
               "Content-Type": "application/json", "MCP-Protocol-Version": "2025-11-25"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict[str, Any], claims: dict[str, Any],
            sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS put together by hand (for algorithms PyJWT will not sign with)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


class Signer:
    """Keys of the test's own, published (with Antenna's) on a loopback JWKS."""

    def __init__(self, antenna_jwks_uri: str) -> None:
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_kid, self.rsa_kid = "test-ec-" + secrets.token_hex(4), \
            "test-rsa-" + secrets.token_hex(4)
        ours = [{**json.loads(ECAlgorithm.to_jwk(self.ec.public_key())), "kid": self.ec_kid,
                 "alg": "ES256", "use": "sig"},
                {**json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key())), "kid": self.rsa_kid,
                 "alg": "RS256", "use": "sig"}]

        def body() -> bytes:
            antenna = httpx.get(antenna_jwks_uri, timeout=10).json()["keys"]
            return json.dumps({"keys": antenna + ours}).encode()

        self.server, self.jwks_uri = serve_jwks(body)

    def sign(self, claims: dict[str, Any], *, alg: str = "ES256", **header: Any) -> str:
        key, kid = (self.ec, self.ec_kid) if alg == "ES256" else (self.rsa, self.rsa_kid)
        headers = {"typ": "secevent+jwt", "kid": kid, **header}
        return jwt.encode(claims, key, algorithm=alg,
                          headers={k: v for k, v in headers.items() if v is not None})

    def ec_public_pem(self) -> bytes:
        return self.ec.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def validator_of(lab: Lab, name: str) -> SetValidator:
    return {"mcp": lab.mcp.ssf.validator, "verify": lab.verify.ssf.validator,
            "caep_receiver": lab.caep.validator}[name]


@pytest.fixture(scope="module")
def signer(lab: Lab) -> Iterator[Signer]:
    s = Signer(f"{lab.antenna.issuer}/jwks")
    before = {name: validator_of(lab, name).trusted for name in RECEIVERS}
    for name, trusted in before.items():
        assert trusted is not None and trusted.issuer == lab.antenna.issuer
        validator_of(lab, name).trust(Transmitter(trusted.issuer, s.jwks_uri,
                                                  trusted.authorization))
    try:
        yield s
    finally:
        for name, trusted in before.items():
            validator_of(lab, name).trust(trusted)
        s.close()


@dataclass
class Session:
    token: str
    sid: str


def login(lab: Lab) -> Session:
    token = user_token(lab, USER)["access_token"]
    session = Session(token, sid_of(token))
    assert lab.mcp.revocations.reason(session.sid) is None
    assert lab.verify.sessions.alive(session.sid)
    return session


@pytest.fixture
def session(lab: Lab, signer: Signer) -> Session:
    return login(lab)


def endpoint(lab: Lab, name: str) -> tuple[str, str]:
    """(push URL, the audience the receiver's stream names)."""
    if name == "mcp":
        return f"{lab.mcp_url.rsplit('/mcp', 1)[0]}/ssf/events", lab.mcp_url
    if name == "verify":
        return f"{lab.verify.base_url}/v1.0/ssf/events", lab.verify.issuer
    return lab.caep.audience, lab.caep.audience


def subscribed_header(lab: Lab, name: str) -> str:
    """The Authorization header the receiver demanded when it subscribed at Antenna."""
    stream = lab.antenna.store.stream(lab.streams[name])
    assert stream is not None
    return str(stream[1]["delivery"]["authorization_header"])


def push(lab: Lab, name: str, token: str, authorization: str | None = "subscribed"
         ) -> httpx.Response:
    headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
    if authorization == "subscribed":
        authorization = subscribed_header(lab, name)
    if authorization is not None:
        headers["Authorization"] = authorization
    return httpx.post(endpoint(lab, name)[0], content=token, headers=headers, timeout=10)


def revocation(lab: Lab, name: str, sid: str, **overrides: Any) -> dict[str, Any]:
    """A good session-revoked SET for `name` naming session `sid` of USER (claims)."""
    now = int(time.time())
    claims = {"iss": lab.antenna.issuer, "aud": endpoint(lab, name)[1], "iat": now,
              "jti": secrets.token_urlsafe(12), "txn": secrets.token_urlsafe(6),
              "sub_id": {"format": "complex", "session": {"format": "opaque", "id": sid},
                         "user": {"format": "email", "email": USER}},
              "events": {CAEP["session-revoked"]: {"event_timestamp": now,
                                                   "reason_admin": {"en": REASON}}}}
    claims.update(overrides)
    return claims


def tools_list(lab: Lab, token: str) -> httpx.Response:
    return httpx.post(lab.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list",
                                         "params": {}},
                      headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}, timeout=10)


def times_recorded(lab: Lab, name: str, jti: str) -> int:
    """How many times the receiver `name` recorded the SET `jti`."""
    if name == "mcp":
        return [c["jti"] for c in lab.mcp.ssf.received].count(jti)
    if name == "verify":
        return int(jti in lab.verify.ssf.received)
    return [e.jti for e in lab.caep.events()].count(jti)


@dataclass
class Marks:
    audit: int  # a marker into the IdP's decision record (for `since`)
    received: int  # of them, what the IdP's receiver and sessions recorded
    caep_refusals: int

    def __eq__(self, other: object) -> bool:  # the marker moves with background deliveries
        return (isinstance(other, Marks) and self.received == other.received
                and self.caep_refusals == other.caep_refusals)


def marks(lab: Lab) -> Marks:
    """What the receivers recorded. The IdP's own transmitter (deliveries to other tests' MCP
    servers' streams, in the background) records under `ssf_transmit`: not counted here."""
    decisions = lab.verify.audit.decisions()
    received = [d for d in decisions if d.kind != "ssf_transmit"]
    return Marks(len(decisions), len(received), len(lab.caep.refusals))


def assert_refused(lab: Lab, name: str, response: httpx.Response, status: int, err: str,
                   session: Session, jti: str, before: Marks, recorded: int = 0) -> None:
    """An RFC 8935 §2.3 error body, and nothing changed: the session is alive at the MCP server
    and at the IdP, the receiver recorded the SET no more often than before (`recorded`)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["err"] == err, body
    assert isinstance(body["description"], str) and len(body["description"]) > 10
    assert lab.mcp.revocations.reason(session.sid) is None
    assert lab.verify.sessions.alive(session.sid)
    assert tools_list(lab, session.token).status_code == 200
    assert times_recorded(lab, name, jti) == recorded
    if name == "verify":  # the IdP's decision record shows the refusal, and no acceptance
        decisions = lab.verify.audit.since(before.audit, "ssf")
        assert any(d.outcome == "refused" and d.error == err for d in decisions)
        assert not any(d.outcome == "accepted" and d.jti == jti for d in decisions)
    if name == "caep_receiver":
        assert err in lab.caep.refusals[before.caep_refusals:]


def assert_accepted(lab: Lab, name: str, response: httpx.Response, session: Session,
                    claims: dict[str, Any]) -> None:
    assert response.status_code == 202, response.text
    assert times_recorded(lab, name, claims["jti"]) == 1
    if name == "mcp":
        assert REASON in (lab.mcp.revocations.reason(session.sid) or "")
        assert tools_list(lab, session.token).status_code == 401
    elif name == "verify":
        assert not lab.verify.sessions.alive(session.sid)
        assert REASON in (lab.verify.sessions.get(session.sid).end_reason or "")
    else:
        [stored] = [e for e in lab.caep.events() if e.jti == claims["jti"]]
        assert stored.claims == claims and stored.event_type == CAEP["session-revoked"]


# -- each receiver uses the one validator --------------------------------------------------------


def test_every_receiver_uses_the_one_validator_of_iia(lab: Lab) -> None:
    validators = [validator_of(lab, name) for name in RECEIVERS]
    assert all(type(v) is SetValidator for v in validators)
    assert len({id(v) for v in validators}) == 3  # one each: a jti is remembered per receiver
    assert importlib.util.find_spec("harness.ssf") is None  # the harness's copy is gone


# -- the happy path --------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
@pytest.mark.parametrize("name", RECEIVERS)
def test_a_good_set_is_accepted(lab: Lab, signer: Signer, session: Session, name: str,
                                alg: str) -> None:
    claims = revocation(lab, name, session.sid)
    assert_accepted(lab, name, push(lab, name, signer.sign(claims, alg=alg)), session, claims)


# -- one case per rule -----------------------------------------------------------------------------


def _hs256_with_the_public_key(s: Signer, claims: dict[str, Any]) -> str:
    """The algorithm-confusion attack: HMAC keyed with the transmitter's public key (PEM)."""
    secret = s.ec_public_pem()
    return compact({"typ": "secevent+jwt", "alg": "HS256", "kid": s.ec_kid}, claims,
                   lambda data: hmac.new(secret, data, hashlib.sha256).digest())


def _unsigned(s: Signer, claims: dict[str, Any]) -> str:
    return compact({"typ": "secevent+jwt", "alg": "none", "kid": s.ec_kid}, claims,
                   lambda data: b"")


def _rs256_under_the_ec_kid(s: Signer, claims: dict[str, Any]) -> str:
    return s.sign(claims, alg="RS256", kid=s.ec_kid)


def _signed_by_another_key(s: Signer, claims: dict[str, Any]) -> str:
    return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                      headers={"typ": "secevent+jwt", "kid": s.ec_kid})


def _without(claim: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda c: {k: v for k, v in c.items() if k != claim}


# case -> (err, what changes in the claims, how it is signed)
CASES: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]],
                       Callable[[Signer, dict[str, Any]], str]]] = {
    "exp present": ("invalid_request", lambda c: {**c, "exp": c["iat"] + 3600},
                    lambda s, c: s.sign(c)),
    "top-level sub": ("invalid_request", lambda c: {**c, "sub": USER}, lambda s, c: s.sign(c)),
    "wrong typ": ("invalid_request", dict, lambda s, c: s.sign(c, typ="JWT")),
    "no kid": ("invalid_key", dict, lambda s, c: s.sign(c, kid=None)),
    "unknown kid": ("invalid_key", dict, lambda s, c: s.sign(c, kid="not-published")),
    "HS256 keyed with the public key": ("invalid_key", dict, _hs256_with_the_public_key),
    "alg none": ("invalid_key", dict, _unsigned),
    "RS256 under an EC key's kid": ("invalid_key", dict, _rs256_under_the_ec_kid),
    "signed by another key": ("invalid_key", dict, _signed_by_another_key),
    "two events": ("invalid_request",
                   lambda c: {**c, "events": {**c["events"], CAEP["credential-change"]: {}}},
                   lambda s, c: s.sign(c)),
    "zero events": ("invalid_request", lambda c: {**c, "events": {}}, lambda s, c: s.sign(c)),
    "wrong iss": ("invalid_issuer", lambda c: {**c, "iss": "https://evil.example"},
                  lambda s, c: s.sign(c)),
    "wrong aud": ("invalid_audience", lambda c: {**c, "aud": "https://someone-else.example"},
                  lambda s, c: s.sign(c)),
    "iat in the future": ("invalid_request", lambda c: {**c, "iat": c["iat"] + 600},
                          lambda s, c: s.sign(c)),
    "no iat": ("invalid_request", _without("iat"), lambda s, c: s.sign(c)),
    "no jti": ("invalid_request", _without("jti"), lambda s, c: s.sign(c)),
}


SAYS = {"exp present": "no exp", "top-level sub": "sub_id", "wrong typ": "secevent+jwt",
        "HS256 keyed with the public key": "algorithm 'HS256' is not accepted",
        "alg none": "algorithm 'none' is not accepted", "no kid": "names no key",
        "unknown kid": "not in the transmitter's JWKS", "signed by another key": "signature",
        "iat in the future": "future", "two events": "exactly one event",
        "zero events": "exactly one event"}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", RECEIVERS)
def test_a_set_breaking_one_rule_is_refused(lab: Lab, signer: Signer, session: Session,
                                            name: str, case: str) -> None:
    err, change, sign = CASES[case]
    good = revocation(lab, name, session.sid)
    before = marks(lab)
    response = push(lab, name, sign(signer, change(good)))
    assert_refused(lab, name, response, 400, err, session, good["jti"], before)
    if case in SAYS:  # the sentence names what is wrong
        assert SAYS[case] in response.json()["description"]


@pytest.mark.parametrize("authorization", [None, "Bearer not-the-subscribed-one"])
@pytest.mark.parametrize("name", RECEIVERS)
def test_a_push_without_the_subscribed_authorization_is_refused(
        lab: Lab, signer: Signer, session: Session, name: str,
        authorization: str | None) -> None:
    claims = revocation(lab, name, session.sid)
    before = marks(lab)
    response = push(lab, name, signer.sign(claims), authorization)  # a good SET
    assert_refused(lab, name, response, 401, "authentication_failed", session, claims["jti"],
                   before)


@pytest.mark.parametrize("name", RECEIVERS)
def test_a_replayed_set_is_acknowledged_and_acted_on_once(lab: Lab, signer: Signer,
                                                          name: str) -> None:
    """The same SET a second time: 202 as the first time (delivery is at least once: the
    transmitter may not have seen the first 202), and not acted on again. At the IdP the SET
    names the user (every session of theirs), so a replay acted on would end the session opened
    after."""
    first = login(lab)
    claims = revocation(lab, name, first.sid)
    if name == "verify":
        claims["sub_id"] = {"format": "email", "email": USER}
    token = signer.sign(claims)
    assert push(lab, name, token).status_code == 202
    assert times_recorded(lab, name, claims["jti"]) == 1
    if name == "verify":
        assert not lab.verify.sessions.alive(first.sid)
    if name == "mcp":
        assert REASON in (lab.mcp.revocations.reason(first.sid) or "")
    later = login(lab)
    before = marks(lab)
    # byte for byte what was accepted, and a fresh signature over the same claims (the same SET)
    for again in (token, signer.sign(claims, alg="RS256")):
        response = push(lab, name, again)
        assert response.status_code == 202 and response.content == b""
        assert times_recorded(lab, name, claims["jti"]) == 1
        assert lab.mcp.revocations.reason(later.sid) is None
        assert lab.verify.sessions.alive(later.sid)
        assert tools_list(lab, later.token).status_code == 200
    assert marks(lab) == before  # neither refused nor acted on


@pytest.mark.parametrize("name", RECEIVERS)
def test_unreachable_transmitter_keys_are_503_so_the_transmitter_retries(
        lab: Lab, signer: Signer, session: Session, name: str) -> None:
    """Not the SET's fault: a 400 would make Antenna drop the SET for good (RFC 8935 §2.3: a
    general error keeps its own status), and nothing is accepted on keys it could not read."""
    validator = validator_of(lab, name)
    trusted = validator.trusted
    assert trusted is not None
    claims = revocation(lab, name, session.sid)
    before = marks(lab)
    validator.trust(Transmitter(trusted.issuer, "http://127.0.0.1:9/jwks",
                                trusted.authorization))
    try:
        response = push(lab, name, signer.sign(claims))
    finally:
        validator.trust(trusted)
    assert_refused(lab, name, response, 503, "invalid_key", session, claims["jti"], before)
    # the same SET once the keys can be read again: not taken for a replay
    assert_accepted(lab, name, push(lab, name, signer.sign(claims)), session, claims)


# -- the replay memory is bounded -----------------------------------------------------------------


def test_the_replay_memory_is_bounded_and_refuses_what_it_forgot() -> None:
    seen = SeenJtis(capacity=2)
    seen.add("iss", "a", 100)
    seen.add("iss", "b", 101)
    seen.add("iss", "c", 102)  # "a" is forgotten: its iat becomes the floor
    assert len(seen) == 2 and seen.floor == 100
    with pytest.raises(InvalidRequest, match="cannot be checked for replay"):
        seen.add("iss", "a", 100)  # forgotten, but not accepted again
    with pytest.raises(AlreadyReceived, match="already received"):
        seen.add("iss", "c", 102)
    seen.add("other-iss", "c", 102)  # a jti is unique per issuer
    seen.add("iss", "d", 103)
    assert len(seen) == 2
