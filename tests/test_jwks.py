"""iia.jwks.JwksCache is the one JWKS cache: the MCP server's resource server, every SSF receiver
and the simulated IdP's SPIFFE trust bundle use it.

The cache itself, over a real loopback JWKS endpoint: fetched once, one rate-limited refetch for
an unknown `kid`, a failed fetch refused at once until the interval passes. Then the IdP's actor
check: an unknown-kid flood of actor tokens costs at most one bundle fetch, and an unreachable
bundle is `temporarily_unavailable` (503, retry), never a token.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from harness.lab import Lab
from iia.identity import WorkloadIdentity
from iia.jwks import JwksCache, JwksUnavailableError
from tests.helpers import exchange, rar, user_token
from tests.transmitter import serve_jwks


class KeySet:
    """EC keys served as a JWKS; `add` publishes one more (a rotation)."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.add()
        self.server, self.url = serve_jwks(self.body)

    def add(self) -> str:
        kid = secrets.token_urlsafe(6)
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        return kid

    def body(self) -> bytes:
        jwks = []
        for kid, key in self.keys.items():
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
            jwks.append({**jwk, "kid": kid, "alg": "ES256", "use": "sig"})
        return json.dumps({"keys": jwks}).encode()


@pytest.fixture
def keyset() -> Iterator[KeySet]:
    keys = KeySet()
    yield keys
    keys.server.shutdown()
    keys.server.server_close()


def test_the_key_set_is_fetched_once_and_an_unknown_kid_refetches_once(keyset: KeySet) -> None:
    cache = JwksCache(keyset.url, min_refresh=3600)
    first = next(iter(keyset.keys))
    assert set(cache.keys()) == {first} and cache.fetches == 1
    assert cache.key(first) is not None and cache.keys(first).keys() == {first}
    assert cache.fetches == 1  # warm: no I/O
    rotated = keyset.add()
    # an unknown kid within min_refresh of the last fetch: no refetch
    assert cache.key(rotated) is None and cache.keys(rotated).keys() == {first}
    assert cache.fetches == 1
    cache.min_refresh = 0
    assert cache.key(rotated) is not None and set(cache.keys()) == {first, rotated}
    assert cache.fetches == 2


def test_an_unreachable_key_set_fails_at_once_until_the_interval_passes() -> None:
    cache = JwksCache("http://127.0.0.1:9/keys", min_refresh=3600, what="test keys",
                      dependency="nowhere")
    with pytest.raises(JwksUnavailableError) as caught:
        cache.keys("k1")
    assert caught.value.dependency == "nowhere" and caught.value.status == 503
    assert "cannot fetch the test keys" in caught.value.description
    with pytest.raises(JwksUnavailableError):
        cache.keys()
    with pytest.raises(JwksUnavailableError):
        cache.key("k2")
    assert (cache.failures, cache.fetches) == (1, 0)  # no second attempt in the interval


def test_the_idps_spiffe_bundle_is_the_shared_cache(lab: Lab) -> None:
    assert isinstance(lab.verify.exchange.spiffe.jwks, JwksCache)


def _decisions(lab: Lab) -> list[tuple[str, str | None]]:
    return [(d.outcome, d.error) for d in lab.verify.audit.decisions("token_exchange")]


def test_an_unknown_kid_flood_of_actor_tokens_costs_at_most_one_bundle_fetch(
        lab: Lab, identity: WorkloadIdentity, monkeypatch: pytest.MonkeyPatch) -> None:
    """Actor tokens of the trusted domain signed with keys the bundle does not hold: each is
    refused invalid_grant, and the bundle is fetched at most once for all of them."""
    bundle = lab.verify.exchange.spiffe.jwks
    monkeypatch.setattr(bundle, "min_refresh", 3600.0)
    subject = user_token(lab)["access_token"]
    agent = identity.svid(lab.verify.issuer)
    claims = jwt.decode(agent.token, options={"verify_signature": False})
    issued, mark, fetches = _issued(lab), len(lab.verify.audit), bundle.fetches
    for _ in range(6):
        forged = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                            headers={"kid": secrets.token_urlsafe(6)})
        response = exchange(lab, identity, subject, rar(lab, "verify_read_users"),
                            actor_token=forged)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_grant"
        assert "access_token" not in response.json()
    assert bundle.fetches - fetches <= 1
    assert _issued(lab) == issued
    assert [d.outcome for d in lab.verify.audit.since(mark, "token_exchange")] == ["denied"] * 6


def _issued(lab: Lab) -> int:
    return sum(1 for outcome, _ in _decisions(lab) if outcome == "issued")


def test_an_unreachable_spiffe_bundle_is_temporarily_unavailable_not_a_token(
        lab: Lab, identity: WorkloadIdentity, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tenant cannot fetch the trust domain's keys: 503 temporarily_unavailable (the MCP
    server retries), nothing minted; once the keys are back the same exchange succeeds."""
    bundle = lab.verify.exchange.spiffe.jwks
    subject = user_token(lab)["access_token"]
    details = rar(lab, "verify_read_users")
    monkeypatch.setattr(bundle, "uri", "http://127.0.0.1:9/keys")
    bundle.forget()
    try:
        issued, mark = _issued(lab), len(lab.verify.audit)
        response = exchange(lab, identity, subject, details)
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["error"] == "temporarily_unavailable" and "access_token" not in body
        assert "SPIFFE trust bundle is unreachable" in body["error_description"]
        assert _issued(lab) == issued
        assert all(d.outcome != "issued" for d in lab.verify.audit.since(mark, "token_exchange"))
    finally:
        monkeypatch.undo()
        bundle.forget()
    again = exchange(lab, identity, subject, details)
    assert again.status_code == 200, again.text
    assert again.json()["access_token"]
