"""The simulated Verify's authorization server on authlib (harness/verify/authorization_server.py,
harness/verify/grants.py): its metadata, the grants it refuses, client authentication, and the
RFC 7662 / RFC 7009 endpoints, each over real HTTP with what must not have changed."""

from __future__ import annotations

import secrets

import httpx
import jwt
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9207 import AuthorizationServerMetadata as IssuerMetadata

from harness.lab import Lab
from iia.identity import WorkloadIdentity
from iia.protocol import CIBA_GRANT, TOKEN_EXCHANGE_GRANT
from tests.helpers import as_mcp_server, user_token
from tests.test_verify_oidc import authorize, redirect_params


def alice_sessions(lab: Lab) -> list[tuple[str, bool]]:
    user = lab.verify.directory.user_by_username("alice@example.com")
    assert user is not None and user.id is not None
    return sorted((s.sid, s.alive) for s in lab.verify.sessions.sessions_of(user.id))


def introspect(lab: Lab, identity: WorkloadIdentity, token: str) -> dict:
    response = as_mcp_server(identity, f"{lab.verify.issuer}/introspect", {"token": token})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_metadata_validates_as_rfc8414_and_lists_the_registered_grants(lab: Lab) -> None:
    meta = httpx.get(f"{lab.verify.base_url}/.well-known/oauth-authorization-server"
                     "/oidc/endpoint/default").json()
    AuthorizationServerMetadata(meta).validate(metadata_classes=[IssuerMetadata])
    assert meta["grant_types_supported"] == ["authorization_code", "refresh_token",
                                             TOKEN_EXCHANGE_GRANT, CIBA_GRANT,
                                             "client_credentials"]  # SSF stream management
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    # the validator is not a rubber stamp: the same document with a non-loopback http issuer
    # (RFC 8414 §2: https) is refused
    with pytest.raises(ValueError, match="issuer"):
        AuthorizationServerMetadata({**meta, "issuer": "http://verify.example"}).validate()


def test_plain_pkce_is_refused_before_any_login(lab: Lab) -> None:
    mark, sessions = len(lab.verify.audit), alice_sessions(lab)
    verifier = secrets.token_urlsafe(48)
    params = redirect_params(authorize(lab, code_challenge=verifier,
                                       code_challenge_method="plain"))
    assert params["error"] == "invalid_request" and "plain is refused" in \
        params["error_description"]
    assert params["state"] == "st" and params["iss"] == lab.verify.issuer  # RFC 9207 §2
    assert "code" not in params
    assert lab.verify.audit.since(mark) == [] and alice_sessions(lab) == sessions


def test_refresh_reuse_ends_the_session_and_every_token_of_it(
        lab: Lab, identity: WorkloadIdentity) -> None:
    tokens = user_token(lab)
    sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
            "client_id": "iia-ui"}
    rotated = httpx.post(f"{lab.verify.issuer}/token", data=form)
    assert rotated.status_code == 200 and rotated.headers["cache-control"] == "no-store"
    new = rotated.json()
    assert new["refresh_token"] != tokens["refresh_token"] and new["id_token"]
    reuse = httpx.post(f"{lab.verify.issuer}/token", data=form)
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert "session has been ended" in reuse.json()["error_description"]
    assert not {"access_token", "refresh_token", "id_token"} & set(reuse.json())
    assert not lab.verify.sessions.alive(sid)
    # the rotated refresh token and both access tokens died with the session
    for token in (new["refresh_token"], new["access_token"], tokens["access_token"]):
        assert introspect(lab, identity, token) == {"active": False}
    again = httpx.post(f"{lab.verify.issuer}/token", data={**form,
                                                            "refresh_token": new["refresh_token"]})
    assert again.json()["error"] == "invalid_grant" and "access_token" not in again.json()


def test_a_revoked_token_is_inactive_at_introspection(lab: Lab,
                                                     identity: WorkloadIdentity) -> None:
    tokens = user_token(lab)
    assert introspect(lab, identity, tokens["access_token"])["active"] is True
    for token in (tokens["access_token"], tokens["refresh_token"]):
        response = httpx.post(f"{lab.verify.issuer}/revoke",
                              data={"client_id": "iia-ui", "token": token})
        assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
        assert introspect(lab, identity, token) == {"active": False}
    refresh = httpx.post(f"{lab.verify.issuer}/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": "iia-ui"})
    assert refresh.json()["error"] == "invalid_grant" and "access_token" not in refresh.json()


def test_a_client_cannot_revoke_another_clients_token(lab: Lab,
                                                     identity: WorkloadIdentity) -> None:
    """RFC 7009 §2.1: the server checks the token was issued to the revoking client and refuses
    otherwise (the old code answered 200 and did nothing; authlib refuses, as the RFC says)."""
    tokens = user_token(lab)
    response = as_mcp_server(identity, f"{lab.verify.issuer}/revoke",
                             {"token": tokens["access_token"]})
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert introspect(lab, identity, tokens["access_token"])["active"] is True


def test_an_unknown_grant_type_is_unsupported_and_nothing_is_issued(
        lab: Lab, identity: WorkloadIdentity) -> None:
    mark, version = len(lab.verify.audit), lab.client_secret.version
    response = as_mcp_server(identity, f"{lab.verify.issuer}/token",
                             {"grant_type": "password"})
    assert response.status_code == 400 and response.json()["error"] == "unsupported_grant_type"
    assert "'password' is not supported" in response.json()["error_description"]
    assert response.headers["cache-control"] == "no-store"
    assert "access_token" not in response.json()
    assert lab.verify.audit.since(mark) == []
    assert lab.client_secret.version == version  # the request never reached authentication
    missing = httpx.post(f"{lab.verify.issuer}/token", data={"client_id": "iia-ui"})
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"


def test_two_client_authentication_methods_at_once_are_refused(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """RFC 6749 §2.3: the client MUST NOT use more than one authentication method."""
    cred = identity.credential()
    version, mark = lab.client_secret.version, len(lab.verify.audit)
    response = httpx.post(f"{lab.verify.issuer}/introspect", auth=(cred.client_id,
                                                                   cred.client_secret),
                          data={"token": "x", "client_secret": cred.client_secret})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert "one client authentication method" in response.json()["error_description"]
    assert lab.client_secret.version == version and lab.verify.audit.since(mark) == []


def test_a_wrong_basic_secret_is_401_with_a_basic_challenge(lab: Lab) -> None:
    version = lab.client_secret.version
    response = httpx.post(f"{lab.verify.issuer}/introspect", auth=("iia-mcp-server", "guess"),
                          data={"token": "x"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")
    assert "stale or wrong" in response.json()["error_description"]
    assert response.headers["cache-control"] == "no-store"
    assert lab.client_secret.version == version
    unknown = httpx.post(f"{lab.verify.issuer}/token", data={
        "grant_type": "refresh_token", "refresh_token": "x", "client_id": "nobody"})
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"
    assert "unknown client" in unknown.json()["error_description"]


def test_introspection_needs_a_token(lab: Lab, identity: WorkloadIdentity) -> None:
    """RFC 7662 §2.1: `token` is REQUIRED (the old code answered active=false)."""
    response = as_mcp_server(identity, f"{lab.verify.issuer}/introspect", {})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


def test_a_code_flow_access_token_is_rfc9068_with_the_current_kid(lab: Lab) -> None:
    response = authorize(lab)
    params = redirect_params(response)
    assert params["iss"] == lab.verify.issuer
    verifier = response.verifier  # type: ignore[attr-defined]
    tokens = httpx.post(f"{lab.verify.issuer}/token", data={
        "grant_type": "authorization_code", "code": params["code"], "client_id": "iia-ui",
        "redirect_uri": "http://127.0.0.1:5555/callback", "code_verifier": verifier}).json()
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": lab.verify.keys.current.kid}
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert {"iss", "sub", "aud", "exp", "iat", "jti", "client_id", "scope", "auth_time", "sid",
            "email"} <= set(claims)  # RFC 9068 §2.2 and this tenant's own
    assert claims["exp"] - claims["iat"] == tokens["expires_in"] == lab.verify.tokens.access_ttl
