"""The simulated Verify's OpenID Provider: discovery, code + PKCE login, tokens that die with
their session, refresh rotation, introspection, revocation, logout."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from harness.lab import Lab
from harness.verify.login import LoginError, complete_passkey_login, login, passkey_request
from iia.identity import WorkloadIdentity
from tests.helpers import as_mcp_server, user_token


def authorize(lab: Lab, **params: str) -> httpx.Response:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    query = {"response_type": "code", "client_id": "iia-ui", "scope": "openid",
             "redirect_uri": "http://127.0.0.1:5555/callback", "state": "st",
             "code_challenge": challenge, "code_challenge_method": "S256",
             "login_hint": "alice@example.com"}
    query.update(params)
    with httpx.Client() as http:
        response = http.get(f"{lab.verify.issuer}/authorize",
                            params={k: v for k, v in query.items() if v is not None})
        email = query.get("login_hint")
        if email:  # the browser at the passkey sign-in page, with the user's passkey
            response = complete_passkey_login(http, response, email)
        elif response.status_code == 302:  # to the sign-in page at localhost
            response = http.get(response.headers["location"])
    response.verifier = verifier  # type: ignore[attr-defined]
    return response


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


def redeem(lab: Lab, code: str, verifier: str,
           redirect_uri: str = "http://127.0.0.1:5555/callback") -> httpx.Response:
    return httpx.post(f"{lab.verify.issuer}/token", data={
        "grant_type": "authorization_code", "code": code, "client_id": "iia-ui",
        "redirect_uri": redirect_uri, "code_verifier": verifier})


def test_discovery_document(lab: Lab) -> None:
    meta = httpx.get(f"{lab.verify.issuer}/.well-known/openid-configuration").json()
    assert meta["issuer"] == lab.verify.issuer
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri",
                "backchannel_authentication_endpoint", "introspection_endpoint",
                "revocation_endpoint", "end_session_endpoint"):
        assert meta[key].startswith(lab.verify.issuer), key
    assert {"authorization_code", "refresh_token",
            "urn:ietf:params:oauth:grant-type:token-exchange",
            "urn:openid:params:grant-type:ciba"} <= set(meta["grant_types_supported"])
    assert "verify_read_users" in meta["authorization_details_types_supported"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    jwks = httpx.get(meta["jwks_uri"]).json()
    assert {(k["kty"], k["alg"]) for k in jwks["keys"]} == {("EC", "ES256"), ("RSA", "RS256")}
    assert all(k["kid"] and k["use"] == "sig" for k in jwks["keys"])
    rfc8414 = httpx.get(f"{lab.verify.base_url}/.well-known/oauth-authorization-server"
                        "/oidc/endpoint/default").json()
    assert rfc8414["issuer"] == lab.verify.issuer


def test_login_yields_rfc9068_access_token_and_id_token(lab: Lab) -> None:
    response = authorize(lab, nonce="n-123")
    params = redirect_params(response)
    assert params["state"] == "st" and params["iss"] == lab.verify.issuer
    tokens = redeem(lab, params["code"], response.verifier).json()  # type: ignore[attr-defined]
    header = jwt.get_unverified_header(tokens["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    jwks = jwt.PyJWKClient(f"{lab.verify.issuer}/jwks")
    key = jwks.get_signing_key_from_jwt(tokens["access_token"]).key
    claims = jwt.decode(tokens["access_token"], key, algorithms=["ES256"],
                        audience=lab.mcp_url, issuer=lab.verify.issuer)
    user = lab.verify.directory.user_by_username("alice@example.com")
    assert claims["sub"] == user.id and claims["email"] == "alice@example.com"
    assert claims["client_id"] == "iia-ui" and claims["sid"] and claims["jti"]
    assert claims["exp"] - claims["iat"] <= 900
    id_key = jwks.get_signing_key_from_jwt(tokens["id_token"]).key
    assert jwt.get_unverified_header(tokens["id_token"])["alg"] == "RS256"  # the default
    id_claims = jwt.decode(tokens["id_token"], id_key, algorithms=["RS256"], audience="iia-ui")
    assert id_claims["nonce"] == "n-123" and id_claims["sid"] == claims["sid"]
    assert tokens["refresh_token"]


def test_pkce_is_required_and_plain_is_refused(lab: Lab) -> None:
    assert redirect_params(authorize(lab, code_challenge_method="plain"))["error"] == \
        "invalid_request"
    assert redirect_params(authorize(lab, code_challenge=None,
                                     code_challenge_method=None))["error"] == "invalid_request"
    response = authorize(lab)
    code = redirect_params(response)["code"]
    bad = redeem(lab, code, secrets.token_urlsafe(48))  # well-formed, not the one (§4.6)
    assert bad.json()["error"] == "invalid_grant" and "access_token" not in bad.json()
    # not a verifier at all (RFC 7636 §4.1: 43-128 unreserved characters): malformed request
    response = authorize(lab)
    malformed = redeem(lab, redirect_params(response)["code"], "not-the-verifier")
    assert malformed.json()["error"] == "invalid_request"
    assert "access_token" not in malformed.json()


def test_code_replay_ends_the_session(lab: Lab) -> None:
    response = authorize(lab)
    code = redirect_params(response)["code"]
    first = redeem(lab, code, response.verifier)  # type: ignore[attr-defined]
    assert first.status_code == 200
    again = redeem(lab, code, response.verifier)  # type: ignore[attr-defined]
    assert again.json()["error"] == "invalid_grant"
    sid = jwt.decode(first.json()["access_token"], options={"verify_signature": False})["sid"]
    assert not lab.verify.sessions.alive(sid)


def test_redirect_uris_are_checked_before_any_redirect(lab: Lab) -> None:
    evil = authorize(lab, redirect_uri="https://evil.example/callback")
    assert evil.status_code == 400 and "location" not in evil.headers
    other_port = authorize(lab, redirect_uri="http://127.0.0.1:61234/callback")
    assert "code" in redirect_params(other_port)  # RFC 8252 §7.3: any loopback port


def test_resource_must_be_the_mcp_server(lab: Lab) -> None:
    assert redirect_params(authorize(lab, resource="https://other.example/api"))["error"] == \
        "invalid_target"


def test_unknown_and_deactivated_users_cannot_log_in(lab: Lab) -> None:
    assert redirect_params(authorize(lab, login_hint="nobody@example.com"))["error"] == \
        "login_required"
    directory = lab.verify.directory
    user = directory.user_by_username("walter@example.com")
    user.active = False
    directory.storage.update(directory.user_type, user)
    try:
        with pytest.raises(LoginError, match="access_denied"):
            login(lab.verify.issuer, "walter@example.com", resource=lab.mcp_url)
    finally:
        user = directory.user_by_username("walter@example.com")
        user.active = True
        directory.storage.update(directory.user_type, user)


def test_login_page_is_a_passkey_ceremony_at_localhost(lab: Lab) -> None:
    page = authorize(lab, login_hint=None)
    assert page.status_code == 200 and str(page.url).startswith(lab.verify.passkeys.origin)
    assert "Sign in with a passkey" in page.text and "alice@example.com" not in page.text
    request = passkey_request(page.text)
    assert request is not None and request["publicKey"]["rpId"] == "localhost"
    assert request["publicKey"]["userVerification"] == "required"
    assert request["publicKey"].get("allowCredentials", []) == []  # any discoverable passkey
    hinted = authorize(lab, login_hint="<script>x</script>@example.com")
    assert redirect_params(hinted)["error"] == "login_required"  # no page for an unknown user


def test_refresh_rotates_and_reuse_ends_the_session(lab: Lab) -> None:
    tokens = user_token(lab)
    refreshed = httpx.post(f"{lab.verify.issuer}/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": "iia-ui"})
    assert refreshed.status_code == 200
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    sid = jwt.decode(new["access_token"], options={"verify_signature": False})["sid"]
    assert sid == jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    reuse = httpx.post(f"{lab.verify.issuer}/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": "iia-ui"})
    assert reuse.json()["error"] == "invalid_grant"
    assert not lab.verify.sessions.alive(sid)


def introspect(lab: Lab, identity: WorkloadIdentity, token: str) -> dict:
    response = as_mcp_server(identity, f"{lab.verify.issuer}/introspect", {"token": token})
    assert response.status_code == 200, response.text
    return response.json()


def test_introspection_follows_the_session(lab: Lab, identity: WorkloadIdentity) -> None:
    tokens = user_token(lab)
    active = introspect(lab, identity, tokens["access_token"])
    assert active["active"] is True and active["email"] == "alice@example.com"
    assert introspect(lab, identity, tokens["refresh_token"])["token_type"] == "refresh_token"
    logout = httpx.get(f"{lab.verify.issuer}/logout",
                       params={"id_token_hint": tokens["id_token"]})
    assert logout.status_code == 200
    assert introspect(lab, identity, tokens["access_token"]) == {"active": False}
    assert introspect(lab, identity, tokens["refresh_token"]) == {"active": False}
    assert introspect(lab, identity, "garbage") == {"active": False}


def test_logout_without_an_id_token_hint_ends_nothing(lab: Lab,
                                                     identity: WorkloadIdentity) -> None:
    tokens = user_token(lab)
    sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]
    for params in ({"sid": sid}, {}):
        assert httpx.get(f"{lab.verify.issuer}/logout", params=params).status_code == 200
    assert introspect(lab, identity, tokens["access_token"])["active"] is True
    forged = httpx.get(f"{lab.verify.issuer}/logout", params={"id_token_hint": "x.y.z"})
    assert forged.status_code == 400 and "not an ID token" in forged.text
    assert introspect(lab, identity, tokens["access_token"])["active"] is True


def test_introspection_is_for_confidential_clients(lab: Lab) -> None:
    response = httpx.post(f"{lab.verify.issuer}/introspect",
                          data={"client_id": "iia-ui", "token": "x"})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


def test_revocation_rfc7009(lab: Lab, identity: WorkloadIdentity) -> None:
    tokens = user_token(lab)
    response = httpx.post(f"{lab.verify.issuer}/revoke",
                          data={"client_id": "iia-ui", "token": tokens["access_token"]})
    assert response.status_code == 200
    assert introspect(lab, identity, tokens["access_token"]) == {"active": False}
    unknown = httpx.post(f"{lab.verify.issuer}/revoke",
                         data={"client_id": "iia-ui", "token": "never-issued"})
    assert unknown.status_code == 200  # §2.2: not an error


def test_logout_redirects_only_to_registered_uris(lab: Lab) -> None:
    tokens = user_token(lab)
    ok = httpx.get(f"{lab.verify.issuer}/logout", params={
        "id_token_hint": tokens["id_token"], "client_id": "iia-ui", "state": "s1",
        "post_logout_redirect_uri": "http://127.0.0.1:7000/"})
    assert ok.status_code == 302 and ok.headers["location"] == "http://127.0.0.1:7000/?state=s1"
    tokens2 = user_token(lab)
    evil = httpx.get(f"{lab.verify.issuer}/logout", params={
        "id_token_hint": tokens2["id_token"], "client_id": "iia-ui",
        "post_logout_redirect_uri": "https://evil.example/"})
    assert evil.status_code == 200 and "signed out" in evil.text
