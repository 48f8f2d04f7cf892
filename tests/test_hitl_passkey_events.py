"""The MCP server's approval events name the passkey that signed the answer (issue #16 item 2),
and only as the IdP attests it: `agent:hitl_approved` / `agent:hitl_denied` carry
`credentialIdDigest` and `userVerified` read from the ID Token of the CIBA answer, which the MCP
server validates (iia.oauth.ciba_id_token). An approval whose ID Token does not validate is no
approval: the call stops with `approval_unverified` and nothing changes."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest

from harness.keyset import SigningKey
from harness.lab import Lab
from harness.verify.passkeys import RP_ID, credential_digest
from iia.events import looks_like_secret
from iia.oauth.ciba_id_token import CibaIdTokenVerifier, InvalidIdTokenError, PasskeyAnswer
from iia.oauth.client import AuthorizationServerClient
from iia.protocol import CIBA_AUTH_REQ_ID_CLAIM, PASSKEY_ANSWER_CLAIM
from tests.agent_helpers import mcp_call, phone, user_id
from tests.helpers import sid_of, user_token

ALICE = "alice@example.com"


@pytest.fixture
def alice(lab: Lab) -> str:
    return user_token(lab)["access_token"]


def session_events(lab: Lab, token: str, start: int) -> list[Any]:
    sid = sid_of(token)
    return [e for e in lab.events.since(start)[0] if e.session_id == sid]


def alices_passkeys(lab: Lab) -> set[str]:
    return {credential_digest(p.credential_id) for p in lab.authenticator.passkeys(RP_ID)
            if p.user_name == ALICE}


def answered_push(lab: Lab, known: set[str]) -> Any:
    pushes = [p for p in lab.verify.approvals.all() if p.id not in known and p.email == ALICE]
    assert len(pushes) == 1
    return pushes[0]


# -- the events carry what the IdP attests --------------------------------------------------------

def test_an_approval_event_names_the_passkey_and_user_verification(lab: Lab,
                                                                  alice: str) -> None:
    start, known = lab.events.cursor(), {p.id for p in lab.verify.approvals.all()}
    redacted = lab.events.redactions  # the lab is shared: other tests' events count too
    with phone(lab):
        result = mcp_call(lab, alice, "revoke_user_sessions",
                          {"user_id": user_id(lab, "peggy@example.com")})
    assert not result.is_error, result.text
    push = answered_push(lab, known)
    assert push.status == "approved" and push.answered_with in alices_passkeys(lab)
    approved = [e for e in session_events(lab, alice, start) if e.type == "agent:hitl_approved"]
    assert len(approved) == 1
    wire = approved[0].to_dict()
    assert wire["credentialIdDigest"] == push.answered_with  # the passkey the IdP verified
    assert wire["userVerified"] is True
    dumped = json.dumps(wire)
    assert not looks_like_secret(dumped) and push.auth_req_id not in dumped
    assert lab.events.redactions == redacted  # nothing in this call's events looked secret


def test_a_denial_event_names_the_passkey_and_user_verification(lab: Lab, alice: str) -> None:
    target = user_id(lab, "laura@example.com")
    start, known = lab.events.cursor(), {p.id for p in lab.verify.approvals.all()}
    with phone(lab, plan=False):
        result = mcp_call(lab, alice, "deactivate_user", {"user_id": target})
    assert result.is_error and result.text.startswith("[approval_denied]")
    push = answered_push(lab, known)
    assert push.status == "denied" and push.answered_with in alices_passkeys(lab)
    denied = [e for e in session_events(lab, alice, start) if e.type == "agent:hitl_denied"]
    assert len(denied) == 1
    wire = denied[0].to_dict()
    assert wire["credentialIdDigest"] == push.answered_with and wire["userVerified"] is True
    assert not looks_like_secret(json.dumps(wire))
    assert lab.verify.directory.user(target).active is True


# -- an approval whose ID Token does not validate is no approval ----------------------------------

Forge = Callable[[Lab, dict[str, Any]], str]


def _foreign_key(lab: Lab, claims: dict[str, Any]) -> str:
    """The IdP's kid, another key: a signature that does not verify."""
    other = SigningKey.generate(0.0)
    return jwt.encode(claims, other.private_key, algorithm="ES256",
                      headers={"kid": lab.verify.keys.current.kid, "typ": "JWT"})


def _another_client(lab: Lab, claims: dict[str, Any]) -> str:
    return lab.verify.keys.sign({**claims, "aud": "iia-ui"})


def _another_push(lab: Lab, claims: dict[str, Any]) -> str:
    return lab.verify.keys.sign({**claims, CIBA_AUTH_REQ_ID_CLAIM: "another-push-auth-req-id"})


def _another_answer(lab: Lab, claims: dict[str, Any]) -> str:
    answer = {**claims[PASSKEY_ANSWER_CLAIM], "answer": "deny"}
    return lab.verify.keys.sign({**claims, PASSKEY_ANSWER_CLAIM: answer})


@pytest.fixture
def forged_id_tokens(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        Callable[[Forge], None]]:
    """Make the IdP's CIBA token responses carry an ID Token `forge` made of the real one's
    claims (as a man in the middle or a broken IdP would)."""
    def install(forge: Forge) -> None:
        original = lab.verify.tokens.id_token

        def forged(*args: Any, **kwargs: Any) -> str:
            real = original(*args, **kwargs)
            claims = jwt.decode(real, options={"verify_signature": False})
            return forge(lab, claims) if CIBA_AUTH_REQ_ID_CLAIM in claims else real

        monkeypatch.setattr(lab.verify.tokens, "id_token", forged)
    yield install


@pytest.mark.parametrize("forge", [_foreign_key, _another_client, _another_push, _another_answer],
                         ids=["signature", "audience", "auth-req-id", "answer"])
def test_an_approval_with_an_id_token_that_does_not_validate_changes_nothing(
        lab: Lab, alice: str, forged_id_tokens: Callable[[Forge], None], forge: Forge) -> None:
    target = user_id(lab, "laura@example.com")
    exchanges = len(lab.verify.audit.decisions("token_exchange"))
    requests = len(lab.verify.admin_api.requests)
    start, known = lab.events.cursor(), {p.id for p in lab.verify.approvals.all()}
    forged_id_tokens(forge)
    with phone(lab):
        result = mcp_call(lab, alice, "deactivate_user", {"user_id": target})
    assert result.is_error and result.text.startswith("[approval_unverified]"), result.text
    assert "ID Token" in result.text and "nothing was approved" in result.text
    assert answered_push(lab, known).status == "approved"  # the IdP said yes...
    assert lab.verify.directory.user(target).active is True  # ...and nothing happened
    assert len(lab.verify.audit.decisions("token_exchange")) == exchanges
    assert len(lab.verify.admin_api.requests) == requests
    types = [e.type for e in session_events(lab, alice, start)]
    assert "agent:hitl_approved" not in types and "agent:token_exchange_success" not in types
    error = next(e for e in session_events(lab, alice, start) if e.type == "agent:tool_error")
    assert error.details["error"] == "approval_unverified"


# -- the validator on its own, against the IdP's published keys -----------------------------------

@pytest.fixture
def verifier(lab: Lab) -> Iterator[CibaIdTokenVerifier]:
    server = AuthorizationServerClient(lab.verify.issuer)
    yield CibaIdTokenVerifier(lab.verify.issuer, lambda: server.endpoint("jwks_uri"))
    server.close()


def id_token(lab: Lab, **claims: Any) -> str:
    base: dict[str, Any] = {
        "iss": lab.verify.issuer, "sub": "u-alice", "aud": "iia-mcp-server",
        "iat": int(lab.verify.approvals.clock()), "exp": int(lab.verify.approvals.clock()) + 60,
        CIBA_AUTH_REQ_ID_CLAIM: "req-1",
        PASSKEY_ANSWER_CLAIM: {"credentialIdDigest": "A" * 22, "userVerified": True,
                               "answer": "approve"}}
    base.update(claims)
    return lab.verify.keys.sign({k: v for k, v in base.items() if v is not None})


def check(verifier: CibaIdTokenVerifier, token: object, answer: str = "approve"
          ) -> PasskeyAnswer | None:
    return verifier.verify(token, client_id="iia-mcp-server", auth_req_id="req-1",
                           answer=answer)


def test_the_validator_reads_the_attested_answer(lab: Lab,
                                                 verifier: CibaIdTokenVerifier) -> None:
    assert check(verifier, id_token(lab)) == PasskeyAnswer("A" * 22, True)
    unverified = id_token(lab, **{PASSKEY_ANSWER_CLAIM: {
        "credentialIdDigest": "B" * 22, "userVerified": False, "answer": "approve"}})
    assert check(verifier, unverified) == PasskeyAnswer("B" * 22, False)
    # no passkey answer, or one not bound to this request by auth_req_id: nothing attested
    assert check(verifier, id_token(lab, **{PASSKEY_ANSWER_CLAIM: None})) is None
    assert check(verifier, id_token(lab, **{CIBA_AUTH_REQ_ID_CLAIM: None})) is None


@pytest.mark.parametrize(("token", "words"), [
    (lambda lab: None, "carries no ID Token"),
    (lambda lab: "not-a-jwt", "not a JWT"),
    (lambda lab: id_token(lab, iss="https://elsewhere.example"), "does not validate"),
    (lambda lab: id_token(lab, exp=1000), "does not validate"),
    (lambda lab: id_token(lab, sub=None), "does not validate"),
    (lambda lab: id_token(lab, aud=["iia-mcp-server", "iia-ui"]), "azp"),
    (lambda lab: id_token(lab, **{PASSKEY_ANSWER_CLAIM: "yes"}), "not an object"),
    (lambda lab: id_token(lab, **{PASSKEY_ANSWER_CLAIM: {
        "credentialIdDigest": "x" * 200, "userVerified": True, "answer": "approve"}}),
     "malformed"),
    (lambda lab: id_token(lab, **{PASSKEY_ANSWER_CLAIM: {
        "credentialIdDigest": "A" * 22, "userVerified": "yes", "answer": "approve"}}),
     "malformed"),
], ids=["missing", "not-a-jwt", "issuer", "expired", "no-sub", "azp", "claim-type",
        "digest", "uv-type"])
def test_the_validator_refuses(lab: Lab, verifier: CibaIdTokenVerifier,
                               token: Callable[[Lab], object], words: str) -> None:
    with pytest.raises(InvalidIdTokenError) as refused:
        check(verifier, token(lab))
    assert refused.value.code == "invalid_id_token" and words in refused.value.description
