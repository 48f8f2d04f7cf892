"""OIDC/OAuth conformance of the simulated Verify, judged by authlib's strict validators
(issue #18 item 4): RFC 8414 + RFC 9207 and OpenID Connect Discovery §3 on the live discovery
document, ID tokens through authlib.jose + CodeIDToken (RS256 by default, iss, aud, nonce,
at_hash), unknown and unregistered scopes refused with `invalid_scope`, `iss` on every
authorization response (RFC 9207 §2), including errors; and the negative case of each."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9207 import AuthorizationServerMetadata as IssuerMetadata
from authlib.oidc.core import CodeIDToken
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from harness.lab import Lab
from harness.verify.client_auth import Client
from tests.test_verify_oidc import authorize, redeem, redirect_params


def discovery(lab: Lab) -> dict:
    return httpx.get(f"{lab.verify.issuer}/.well-known/openid-configuration").json()


def test_the_live_discovery_document_passes_authlibs_strict_validators(lab: Lab) -> None:
    meta = discovery(lab)
    AuthorizationServerMetadata(meta).validate(metadata_classes=[IssuerMetadata])
    OpenIDProviderMetadata(meta).validate()
    assert meta["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    # the negative: what the tenant advertised before issue #18 is refused by the validator
    with pytest.raises(ValueError, match="RS256"):
        OpenIDProviderMetadata({**meta, "id_token_signing_alg_values_supported": ["ES256"]}
                               ).validate_id_token_signing_alg_values_supported()


def keys(lab: Lab) -> KeySet:
    return KeySet.import_key_set(httpx.get(discovery(lab)["jwks_uri"]).json())


def claims_of(lab: Lab, id_token: str, nonce: str, access_token: str | None) -> CodeIDToken:
    """The signature by joserfc (authlib's JOSE library; RS256 only), the claims by authlib's
    CodeIDToken (OpenID Connect Core §3.1.3.7: iss, aud, azp, exp, iat, nonce, at_hash)."""
    token = jwt.decode(id_token, keys(lab), algorithms=["RS256"])
    claims = CodeIDToken(token.claims, token.header, options={
        "iss": {"essential": True, "value": lab.verify.issuer},
        "aud": {"essential": True, "value": "iia-ui"}},
        params={"nonce": nonce, "client_id": "iia-ui", "access_token": access_token})
    claims.validate(now=int(time.time()), leeway=5)
    return claims


def test_an_id_token_passes_authlibs_code_id_token_validation(lab: Lab) -> None:
    response = authorize(lab, nonce="n-conf")
    tokens = redeem(lab, redirect_params(response)["code"],
                    response.verifier).json()  # type: ignore[attr-defined]
    claims = claims_of(lab, tokens["id_token"], "n-conf", tokens["access_token"])
    assert claims.header["alg"] == "RS256" and claims["at_hash"] and claims["azp"] == "iia-ui"
    # negatives: another nonce, another access token (at_hash), a tampered signature
    with pytest.raises(JoseError):
        claims_of(lab, tokens["id_token"], "n-other", tokens["access_token"])
    with pytest.raises(JoseError):
        claims_of(lab, tokens["id_token"], "n-conf", tokens["access_token"] + "x")
    head, body, sig = tokens["id_token"].split(".")
    with pytest.raises(JoseError):
        claims_of(lab, f"{head}.{body}.{sig[::-1]}", "n-conf", tokens["access_token"])


@pytest.fixture
def es256_client(lab: Lab) -> Iterator[Client]:
    iia_ui = lab.verify.clients.get("iia-ui")
    assert iia_ui is not None
    client = Client(client_id="es256-app", public=True, grant_types=iia_ui.grant_types,
                    redirect_uris=iia_ui.redirect_uris, scopes=frozenset({"openid"}),
                    id_token_signed_response_alg="ES256")
    lab.verify.clients.add(client)
    yield client
    lab.verify.clients.remove(client.client_id)


def test_a_client_registered_for_es256_gets_es256_id_tokens(lab: Lab,
                                                           es256_client: Client) -> None:
    response = authorize(lab, client_id=es256_client.client_id)
    tokens = httpx.post(f"{lab.verify.issuer}/token", data={
        "grant_type": "authorization_code", "code": redirect_params(response)["code"],
        "client_id": es256_client.client_id, "redirect_uri": "http://127.0.0.1:5555/callback",
        "code_verifier": response.verifier}).json()  # type: ignore[attr-defined]
    token = jwt.decode(tokens["id_token"], keys(lab), algorithms=["ES256"])
    assert token.header["alg"] == "ES256" and token.claims["aud"] == es256_client.client_id


def refused_with_iss(lab: Lab, response: httpx.Response, error: str) -> dict[str, str]:
    params = redirect_params(response)
    assert params["error"] == error, params
    assert params["iss"] == lab.verify.issuer and params["state"] == "st"
    assert "code" not in params
    return params


def test_unknown_and_unregistered_scopes_are_invalid_scope_with_iss(
        lab: Lab, es256_client: Client) -> None:
    sessions = len(lab.verify.sessions.sessions_of(
        lab.verify.directory.user_by_username("alice@example.com").id))
    params = refused_with_iss(lab, authorize(lab, scope="openid admin:all"), "invalid_scope")
    assert "admin:all" in params["error_description"]
    params = refused_with_iss(lab, authorize(lab, client_id=es256_client.client_id,
                                             scope="openid email"), "invalid_scope")
    assert "not registered for the scope email" in params["error_description"]
    # nothing changed: no session was started for either refusal
    assert len(lab.verify.sessions.sessions_of(
        lab.verify.directory.user_by_username("alice@example.com").id)) == sessions


def test_every_authorization_error_redirect_names_the_issuer(lab: Lab) -> None:
    refused_with_iss(lab, authorize(lab, code_challenge_method="plain"), "invalid_request")
    refused_with_iss(lab, authorize(lab, resource="http://127.0.0.1:1/elsewhere"),
                     "invalid_target")
    refused_with_iss(lab, authorize(lab, login_hint="nobody@example.com"), "login_required")
    refused_with_iss(lab, authorize(lab, response_type="token"), "unsupported_response_type")
    # a redirect_uri the client did not register: redirect nowhere (RFC 6749 §4.1.2.1)
    wrong = authorize(lab, redirect_uri="http://evil.example/cb")
    assert wrong.status_code == 400 and "location" not in wrong.headers
