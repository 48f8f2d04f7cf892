"""`TokenService.decode` does not verify again the signature of a token this service minted (an
on-behalf-of token) or verified before with `remember` (a token exchange's subject token): every
other check still runs at every call, and the shortcut holds only for exactly that string, with
exactly that `typ` and audience, while the key that signed it is live."""

from __future__ import annotations

import base64
import json

import pytest

from harness.keyset import RotatingKeySet
from harness.verify.sessions import SessionStore
from harness.verify.tokens import TokenInvalid, TokenService
from tests.conftest import FakeClock

ISSUER = "http://verify.test/oidc/endpoint/default"
ADMIN = "http://verify.test/v2.0"
MCP = "http://mcp.test/mcp"
DETAILS = [{"type": "verify_read_users", "actions": ["read"], "locations": [ADMIN], "tier": 1}]


@pytest.fixture
def world() -> tuple[TokenService, FakeClock]:
    clock = FakeClock()
    keys = RotatingKeySet(rotation_period=86400.0, retain=960.0, clock=clock)
    return TokenService(ISSUER, keys, SessionStore(clock), clock=clock), clock


def obo(tokens: TokenService) -> tuple[str, dict[str, object]]:
    session = tokens.sessions.create("u-1", "alice@example.com", "iia-mcp-server")
    subject = {"sub": "u-1", "sid": session.sid, "email": "alice@example.com"}
    return tokens.obo_token(subject, client_id="iia-mcp-server", actor="spiffe://iia.lab/a",
                            audience=ADMIN, authorization_details=DETAILS)


def user_token(tokens: TokenService) -> str:
    session = tokens.sessions.create("u-1", "alice@example.com", "iia-mcp-server")
    token, _ = tokens.access_token(session, client_id="iia-mcp-server", audience=MCP,
                                   scope="openid", may_act="spiffe://iia.lab/a")
    return token


def tampered(token: str) -> str:
    """The same token with one claim changed and the original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["email"] = "mallory@example.com"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_a_minted_obo_token_decodes_to_its_claims(world: tuple[TokenService, FakeClock]) -> None:
    tokens, _ = world
    token, claims = obo(tokens)
    decoded = tokens.decode(token, typ="at+jwt", audience=None)
    assert decoded == claims
    decoded["authorization_details"][0]["type"] = "verify_delete_user"  # a caller's own copy
    assert tokens.decode(token, typ="at+jwt", audience=None)["authorization_details"] == DETAILS


def test_a_known_token_altered_is_verified_and_refused(
        world: tuple[TokenService, FakeClock]) -> None:
    tokens, _ = world
    token, _ = obo(tokens)
    with pytest.raises(TokenInvalid, match="signature does not verify"):
        tokens.decode(tampered(token), typ="at+jwt", audience=None)
    subject = user_token(tokens)
    tokens.decode(subject, check_session=False, remember=True)
    with pytest.raises(TokenInvalid, match="signature does not verify"):
        tokens.decode(tampered(subject), check_session=False, remember=True)


def test_a_known_token_is_still_checked_for_typ_and_audience(
        world: tuple[TokenService, FakeClock]) -> None:
    tokens, _ = world
    token, _ = obo(tokens)
    with pytest.raises(TokenInvalid, match="token type 'at\\+jwt' is not 'JWT'"):
        tokens.decode(token, typ="JWT", audience=None)
    with pytest.raises(TokenInvalid, match="audience is not"):
        tokens.decode(token, typ="at+jwt", audience=MCP)


def test_a_known_token_is_refused_once_revoked_expired_or_its_session_ended(
        world: tuple[TokenService, FakeClock]) -> None:
    tokens, clock = world
    token, claims = obo(tokens)
    tokens.decode(token, typ="at+jwt", audience=None)
    tokens.revoke_jti(str(claims["jti"]), until=clock() + 3600)
    with pytest.raises(TokenInvalid, match="has been revoked"):
        tokens.decode(token, typ="at+jwt", audience=None)

    subject = user_token(tokens)
    sid = tokens.decode(subject, remember=True)["sid"]
    tokens.sessions.end(sid, "signed out")
    with pytest.raises(TokenInvalid, match="session has ended"):
        tokens.decode(subject, remember=True)
    assert tokens.decode(subject, check_session=False, remember=True)["sid"] == sid

    clock.advance(901)
    with pytest.raises(TokenInvalid, match="has expired"):
        tokens.decode(subject, check_session=False, remember=True)


def test_a_known_token_dies_with_its_key(world: tuple[TokenService, FakeClock]) -> None:
    tokens, clock = world
    token, _ = obo(tokens)
    subject = user_token(tokens)
    tokens.decode(subject, check_session=False, remember=True)
    tokens.keys.rotate()
    clock.advance(961)  # the retired key is past its retention: no longer live
    tokens.keys.tick()
    for presented, typ in ((token, "at+jwt"), (subject, "at+jwt")):
        # expiry is checked after the signature: the key's end is what refuses first
        with pytest.raises(TokenInvalid, match="not signed by a key of this tenant"):
            tokens.decode(presented, typ=typ, audience=None, check_session=False)


def test_the_signature_of_a_known_token_is_not_verified_again(
        world: tuple[TokenService, FakeClock], monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, _ = world
    token, claims = obo(tokens)
    subject = user_token(tokens)
    tokens.decode(subject, check_session=False, remember=True)
    other = user_token(tokens)  # never decoded with remember

    def no_verification(*args: object, **kwargs: object) -> None:
        raise AssertionError("verified again")

    monkeypatch.setattr("harness.verify.tokens.jwt.decode", no_verification)
    assert tokens.decode(token, typ="at+jwt", audience=None) == claims
    assert tokens.decode(subject, check_session=False)["aud"] == MCP
    with pytest.raises(AssertionError, match="verified again"):
        tokens.decode(other, check_session=False)
