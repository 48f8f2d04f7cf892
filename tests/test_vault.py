"""The lab's real OpenBao: JWT-SVID login for the workload only, a least-privilege policy, and
the rotating Verify credential."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import hvac
import hvac.exceptions
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness.keyset import SigningKey
from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from harness.spire import RegistrationEntry
from harness.spire.attestor import lab_substitutions
from iia.identity import IdentitySettings, VaultLoginRefusedError, WorkloadIdentity


def login(lab: Lab, token: str) -> dict:
    return hvac.Client(url=lab.endpoints["vault"]).auth.jwt.jwt_login(role="mcp-server",
                                                                       jwt=token, path="jwt")


def claims(lab: Lab, **overrides: object) -> dict:
    now = int(time.time())
    base = {"sub": WORKLOAD_SPIFFE_ID, "aud": "vault", "iat": now, "exp": now + 300,
            "iss": lab.endpoints["spiffe_oidc"]}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_the_workload_logs_in_and_reads_only_its_credential(lab: Lab) -> None:
    token = lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, ["vault"])
    auth = login(lab, token)["auth"]
    assert auth["lease_duration"] <= 300
    assert auth["policies"] == ["mcp-server-verify-credential"]
    client = hvac.Client(url=lab.endpoints["vault"], token=auth["client_token"])
    secret = client.secrets.kv.v2.read_secret_version(path="mcp-server", mount_point="ibm-verify",
                                                      raise_on_deleted_version=True)
    assert set(secret["data"]["data"]) == {"client_id", "client_secret"}
    assert secret["data"]["data"]["client_id"] == "iia-mcp-server"
    with pytest.raises(hvac.exceptions.Forbidden):  # may not write it
        client.secrets.kv.v2.create_or_update_secret(path="mcp-server", secret={"x": "y"},
                                                     mount_point="ibm-verify")
    with pytest.raises(hvac.exceptions.Forbidden):  # may not read anything else
        client.secrets.kv.v2.read_secret_version(path="other", mount_point="ibm-verify",
                                                 raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):  # may not list or change policy
        client.sys.list_policies()


def hs256_with_public_key(payload: dict, key: SigningKey) -> str:
    """Sign by hand (PyJWT rightly refuses to use a PEM public key as an HMAC secret)."""
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "kid": key.kid, "typ": "JWT"}
    signing_input = b".".join(jwt.utils.base64url_encode(json.dumps(part).encode())
                              for part in (header, payload))
    signature = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + jwt.utils.base64url_encode(signature)).decode()


def _refused(lab: Lab, token: str) -> str:
    before = lab.openbao.login_count()
    with pytest.raises((hvac.exceptions.InvalidRequest, hvac.exceptions.Forbidden)) as err:
        login(lab, token)
    assert lab.openbao.login_count() == before  # no token was issued
    return " ".join(err.value.errors or [])


def test_login_refused_for_another_workloads_svid(lab: Lab) -> None:
    """A legitimately attested *other* workload gets a valid SVID; Vault's role is bound to
    the MCP server's SPIFFE ID, so it is refused."""
    me = lab_substitutions()
    entry = lab.workload_api.registry.add(RegistrationEntry(
        "spiffe://iia.lab/other-workload", frozenset({f"unix:uid:{me['LAB_UID']}"})))
    settings = IdentitySettings.from_env(lab.iia_env(), spiffe_id="spiffe://iia.lab/other-workload")
    other = WorkloadIdentity(settings)
    try:
        with pytest.raises(VaultLoginRefusedError) as err:
            other.credential()
        assert err.value.code == "vault_login_refused" and err.value.dependency == "vault"
        assert "sub" in err.value.description
    finally:
        other.close()
        lab.workload_api.registry.remove(entry)


def test_login_refused_for_wrong_audience(lab: Lab) -> None:
    words = _refused(lab, lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, ["not-vault"]))
    assert "aud" in words


def test_login_refused_for_expired_svid(lab: Lab) -> None:
    now = int(time.time())
    words = _refused(lab, lab.authority.keys.sign(claims(lab, iat=now - 400, exp=now - 60)))
    assert "expired" in words


def test_login_refused_for_unknown_kid(lab: Lab) -> None:
    stranger = SigningKey.generate(time.time())
    assert "signature" in _refused(lab, lab.authority.keys.sign(claims(lab), key=stranger))


def test_login_refused_for_foreign_key_claiming_a_known_kid(lab: Lab) -> None:
    foreign = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(lab), foreign, algorithm="ES256",
                       headers={"kid": lab.authority.keys.current.kid, "typ": "JWT"})
    assert "signature" in _refused(lab, token)


def test_login_refused_for_alg_none(lab: Lab) -> None:
    token = jwt.encode(claims(lab), None, algorithm="none",
                       headers={"kid": lab.authority.keys.current.kid})
    assert 'algorithm "none"' in _refused(lab, token)


def test_login_refused_for_hs256_signed_with_the_public_key(lab: Lab) -> None:
    """The algorithm-confusion attack: HMAC keyed with the (public) verification key."""
    token = hs256_with_public_key(claims(lab), lab.authority.keys.current)
    assert 'algorithm "HS256"' in _refused(lab, token)


def test_vault_follows_a_spiffe_key_rotation(lab: Lab) -> None:
    """After the trust domain rotates its signing key, Vault fetches the new key from the
    discovery provider and accepts SVIDs signed with it; older SVIDs still work until expiry."""
    old_svid = lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, ["vault"])
    new_kid = lab.authority.keys.rotate()
    new_svid = lab.authority.sign_svid(WORKLOAD_SPIFFE_ID, ["vault"])
    assert jwt.get_unverified_header(new_svid)["kid"] == new_kid
    assert login(lab, new_svid)["auth"]["client_token"]
    assert login(lab, old_svid)["auth"]["client_token"]
