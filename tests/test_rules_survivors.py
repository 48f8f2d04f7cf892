"""Rules the last `make mutants` run showed no test guarded (issue #11): each test here fails when
its rule is removed (the mutation named in its docstring, `mutants/rules.toml`), and each refusal
asserts the wire error and that nothing was minted, pushed or changed."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from harness.lab import Lab
from harness.verify.client_auth import Client
from iia.identity import WorkloadIdentity
from iia.rar import details_digest
from tests.helpers import as_mcp_server, bc_authorize, deactivated, exchange, rar, user_token
from tests.test_rules_receivers import tools_list
from tests.test_verify_oidc import authorize, redirect_params

ALICE = "alice@example.com"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def with_payload_of(token: str, claims: dict[str, Any]) -> str:
    """The token's header and signature over other claims: the IdP's published kid, a signature
    that does not verify."""
    header, _, signature = token.split(".")
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


def issued(lab: Lab) -> int:
    return sum(1 for d in lab.verify.audit.decisions("token_exchange") if d.outcome == "issued")


def test_mcp_refuses_a_token_whose_signature_does_not_verify(lab: Lab) -> None:
    """rs-signature: alice's token with bob's e-mail in it, under the IdP's own kid."""
    token = user_token(lab)["access_token"]
    forged = with_payload_of(token, {**claims_of(token), "email": "bob@example.com"})
    history = len(lab.mcp.chain.history)
    response = tools_list(lab, forged)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert len(lab.mcp.chain.history) == history
    assert tools_list(lab, token).status_code == 200  # the control: the real token is served


def test_the_idp_refuses_a_subject_token_whose_signature_does_not_verify(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """idp-decode-signature: the same forgery at token exchange."""
    token = user_token(lab)["access_token"]
    forged = with_payload_of(token, {**claims_of(token), "email": "bob@example.com"})
    minted = issued(lab)
    response = exchange(lab, identity, forged, rar(lab, "verify_read_users"))
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert issued(lab) == minted
    assert exchange(lab, identity, token, rar(lab, "verify_read_users")).status_code == 200


def test_may_act_must_name_the_actor(lab: Lab, identity: WorkloadIdentity) -> None:
    """tx-may-act-names-actor: a token (signed by the IdP) whose may_act names another workload,
    presented with the agent's SVID: the tenant's live record allows the agent, the token does
    not, and the token is what the user consented to."""
    token = user_token(lab)["access_token"]
    other = {**claims_of(token), "may_act": {"sub": "spiffe://iia.lab/another-workload"}}
    signed = lab.verify.keys.sign(other, typ="at+jwt")
    minted = issued(lab)
    response = exchange(lab, identity, signed, rar(lab, "verify_read_users"))
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert "may_act" in response.json()["error_description"]
    assert issued(lab) == minted


def test_an_object_with_a_field_its_type_does_not_have_is_refused(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """rar-unknown-fields: the extra field is covered by a correct digest, so only the registry's
    field check can refuse it."""
    token = user_token(lab)["access_token"]
    obj = {**rar(lab, "verify_read_users"), "scope_everything": True}
    obj["digest"] = details_digest(obj)
    minted = issued(lab)
    response = exchange(lab, identity, token, obj)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_authorization_details"
    assert "scope_everything" in response.json()["error_description"]
    assert issued(lab) == minted


def test_no_push_reaches_a_user_deactivated_after_login(lab: Lab,
                                                       identity: WorkloadIdentity) -> None:
    """ciba-active-user: her token and session are alive, the tenant deactivated her since."""
    email = "nina@example.com"
    token = user_token(lab, email)["access_token"]
    pushes = len(lab.verify.approvals.all())
    with deactivated(lab, email):
        response = bc_authorize(lab, identity, email, rar(lab, "verify_read_users"),
                                login_hint=None, login_hint_token=token)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "unknown_user_id"
        assert len(lab.verify.approvals.all()) == pushes  # nothing on any phone


def test_a_client_may_use_only_the_grants_it_is_registered_for(
        lab: Lab, identity: WorkloadIdentity) -> None:
    """idp-grant-types: the MCP server's client (token exchange and CIBA only) asks for a refresh;
    the refresh token is a real one of alice's."""
    tokens = user_token(lab)
    response = as_mcp_server(identity, f"{lab.verify.issuer}/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "unauthorized_client"
    assert "access_token" not in response.json()


@pytest.fixture
def second_app(lab: Lab) -> Iterator[str]:
    lab.verify.clients.add(Client(client_id="second-app", public=True,
                                  grant_types=frozenset({"authorization_code"}),
                                  redirect_uris=("http://127.0.0.1/callback",)))
    try:
        yield "second-app"
    finally:
        lab.verify.clients.remove("second-app")


def test_a_code_is_redeemed_only_by_the_client_it_was_issued_to(lab: Lab,
                                                                second_app: str) -> None:
    """oidc-code-client: iia-ui's code, its verifier and redirect_uri, presented by another
    registered public client."""
    response = authorize(lab)
    code = redirect_params(response)["code"]
    stolen = httpx.post(f"{lab.verify.issuer}/token", data={
        "grant_type": "authorization_code", "code": code, "client_id": second_app,
        "redirect_uri": "http://127.0.0.1:5555/callback",
        "code_verifier": response.verifier})  # type: ignore[attr-defined]
    assert stolen.status_code == 400, stolen.text
    assert stolen.json()["error"] == "invalid_grant"
    assert "access_token" not in stolen.json()


def test_a_digest_that_is_not_sha256_is_refused_as_such(lab: Lab,
                                                        identity: WorkloadIdentity) -> None:
    """rar-digest-format: the sentence says what a digest must look like, not only that it does
    not match (which any wrong digest also is)."""
    token = user_token(lab)["access_token"]
    obj = {**rar(lab, "verify_read_users"), "digest": "md5:0123"}
    minted = issued(lab)
    response = exchange(lab, identity, token, obj)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_authorization_details"
    assert "digest must be 'sha256:' and 64 hex digits" in response.json()["error_description"]
    assert issued(lab) == minted
