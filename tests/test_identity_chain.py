"""`iia.identity` against the lab's real Workload API, OpenBao and Verify token endpoint."""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

import pytest

from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from harness.openbao import OpenBaoServer
from iia.errors import ConfigurationError
from iia.events import EventBus
from iia.identity import (
    IdentitySettings,
    VaultSealedError,
    VaultUnavailableError,
    WorkloadApiUnavailableError,
    WorkloadIdentity,
    WorkloadNotAttestedError,
)
from iia.oauth import InvalidClientError
from iia.oauth.client import AuthorizationServerClient
from tests.conftest import FakeClock


def test_the_chain_yields_the_verify_credential(identity: WorkloadIdentity,
                                                events: EventBus, lab: Lab) -> None:
    credential = identity.credential()
    assert credential.client_id == "iia-mcp-server"
    assert credential.version == lab.client_secret.version
    assert "client_secret" not in repr(credential)
    types = [e.type for e in events.recent()]
    assert types == ["spiffe:svid_fetched", "vault:login", "vault:secret_read"]
    for event in events.recent():
        assert isinstance(event.duration_ms, int) and event.duration_ms >= 0


def test_second_call_is_warm_and_says_so(identity: WorkloadIdentity, events: EventBus) -> None:
    identity.credential()
    events.clear()
    identity.credential()
    cached = events.recent(type="spiffe:svid_cached")
    assert len(cached) == 1
    wire = cached[0].to_dict()
    assert wire["durationMs"] == 0 and wire["spiffeId"] == WORKLOAD_SPIFFE_ID
    assert 0 <= wire["svidAgeS"] < 60 and 240 < wire["tokenRemainingS"] <= 300
    assert not events.recent(type="spiffe:svid_fetched") and not events.recent(type="vault:login")


def test_hundred_fetches_cost_one_svid_and_one_login(lab: Lab, lab_env: dict[str, str]) -> None:
    """Counted at the servers: the Workload API's issue count and OpenBao's audit log."""
    svids_before = lab.workload_api.svids_issued_to[WORKLOAD_SPIFFE_ID]
    logins_before = lab.openbao.login_count()
    ident = WorkloadIdentity(IdentitySettings.from_env(lab_env))
    try:
        versions = {ident.credential().version for _ in range(100)}
    finally:
        ident.close()
    assert lab.workload_api.svids_issued_to[WORKLOAD_SPIFFE_ID] - svids_before == 1
    assert lab.openbao.login_count() - logins_before == 1
    assert versions == {lab.client_secret.version}  # reads only; nothing used it


def test_svid_is_refetched_after_half_its_life(lab_env: dict[str, str], clock: FakeClock) -> None:
    ident = WorkloadIdentity(IdentitySettings.from_env(lab_env), clock=clock)
    try:
        first = ident.svid("vault")
        clock.advance(149)
        assert ident.svid("vault") is first
        clock.advance(2)  # past 150 s of a 300 s SVID
        second = ident.svid("vault")
        assert second is not first and ident.svids.fetches == 2
    finally:
        ident.close()


def test_vault_token_is_renewed_when_under_thirty_seconds(lab: Lab, lab_env: dict[str, str],
                                                          clock: FakeClock) -> None:
    ident = WorkloadIdentity(IdentitySettings.from_env(lab_env), clock=clock)
    try:
        ident.credential()
        clock.advance(269)  # 31 s left of 300
        ident.credential()
        assert ident.vault.logins == 1
        clock.advance(2)  # 29 s left: log in again (with a fresh SVID: the old one is stale)
        ident.credential()
        assert ident.vault.logins == 2 and ident.svids.fetches == 2
    finally:
        ident.close()


def test_per_audience_svids(identity: WorkloadIdentity, lab: Lab) -> None:
    for_verify = identity.svid(lab.verify.issuer)
    for_vault = identity.svid("vault")
    assert for_verify.audience == lab.verify.issuer and for_vault.audience == "vault"
    assert for_verify.token != for_vault.token
    assert identity.svid(lab.verify.issuer) is for_verify


# -- rotation at the IdP, and the retry on a stale secret -------------------------------------

@pytest.fixture
def idp(lab: Lab):
    client = AuthorizationServerClient(lab.verify.issuer)
    yield client
    client.close()


def use_once(idp: AuthorizationServerClient, cred):
    """One use of the credential at Verify: an introspection call authenticates the client."""
    return idp.introspect("probe", cred)


def test_each_use_rotates_the_secret_and_the_old_one_has_a_grace_window(
        lab: Lab, identity: WorkloadIdentity, idp: AuthorizationServerClient, grace: None) -> None:
    lab.client_secret.grace_seconds = 30
    first = identity.credential()
    use_once(idp, first)
    second = identity.credential()
    assert second.version == first.version + 1
    assert second.client_secret != first.client_secret
    # a concurrent caller that read the old secret before the rotation still gets through
    use_once(idp, first)
    assert identity.credential().version == second.version  # ...without another rotation


def test_a_secret_past_its_grace_window_is_invalid_client(
        lab: Lab, identity: WorkloadIdentity, idp: AuthorizationServerClient, grace: None) -> None:
    lab.client_secret.grace_seconds = 0
    first = identity.credential()
    use_once(idp, first)
    version = lab.client_secret.version
    with pytest.raises(InvalidClientError) as err:
        use_once(idp, first)
    assert err.value.code == "invalid_client" and "stale" in err.value.description
    assert lab.client_secret.version == version  # a refused secret rotates nothing


def test_stale_secret_is_reread_and_retried_once(
        lab: Lab, identity: WorkloadIdentity, events: EventBus,
        idp: AuthorizationServerClient, grace: None) -> None:
    lab.client_secret.grace_seconds = 0
    used_versions: list[int] = []

    def use(cred):
        if not used_versions:  # another replica uses the same secret first
            use_once(idp, cred)
        used_versions.append(cred.version)
        return use_once(idp, cred)

    result = identity.with_credential(use)
    assert result == {"active": False}
    assert used_versions == [used_versions[0], used_versions[0] + 1]
    retries = events.recent(type="vault:rotation_retry")
    assert len(retries) == 1 and retries[0].to_dict()["staleVersion"] == used_versions[0]
    # a tool-call event like any other: it says what the refused attempt cost
    assert isinstance(retries[0].duration_ms, int) and retries[0].duration_ms >= 0
    assert retries[0].to_dict()["durationMs"] == retries[0].duration_ms
    assert retries[0].to_dict()["clientId"] == identity.credential().client_id


def test_a_held_credential_that_went_stale_is_retried_the_same_way(
        lab: Lab, identity: WorkloadIdentity, events: EventBus,
        idp: AuthorizationServerClient, grace: None) -> None:
    """Inside `established` (step 3 of a tool call) the first use takes the credential read
    there; when that one went stale meanwhile, the retry and its event are the ordinary ones."""
    lab.client_secret.grace_seconds = 0
    used_versions: list[int] = []

    def use(cred):
        used_versions.append(cred.version)
        return use_once(idp, cred)

    with identity.established(lab.verify.issuer) as workload:
        use_once(idp, identity.credential())  # another replica used the same secret first
        events.clear()
        assert identity.with_credential(use) == {"active": False}
    assert used_versions == [workload.credential_version, workload.credential_version + 1]
    [retry] = events.recent(type="vault:rotation_retry")
    assert retry.to_dict()["clientId"] == identity.credential().client_id
    assert retry.to_dict()["staleVersion"] == workload.credential_version
    assert isinstance(retry.duration_ms, int)


def test_a_second_invalid_client_is_not_retried_again(
        identity: WorkloadIdentity, events: EventBus, idp: AuthorizationServerClient) -> None:
    calls = []

    def use(cred):
        calls.append(cred.version)
        wrong = type(cred)(client_id=cred.client_id, client_secret="not-the-secret",
                           version=cred.version)
        return use_once(idp, wrong)

    with pytest.raises(InvalidClientError):
        identity.with_credential(use)
    assert len(calls) == 2 and len(events.recent(type="vault:rotation_retry")) == 1


# -- failing closed ---------------------------------------------------------------------------

def test_spire_down_is_a_typed_error(lab_env: dict[str, str]) -> None:
    missing = f"unix://{tempfile.gettempdir()}/no-such-agent-{id(lab_env)}.sock"
    ident = WorkloadIdentity(IdentitySettings.from_env(lab_env, spiffe_socket=missing))
    with pytest.raises(WorkloadApiUnavailableError) as err:
        ident.credential()
    assert err.value.dependency == "spire" and err.value.code == "workload_api_unavailable"
    assert "no-such-agent" in err.value.description


def test_spire_going_away_after_first_use_is_a_typed_error(tmp_path: Path,
                                                           lab_env: dict[str, str]) -> None:
    """A socket that exists but has nobody listening (the agent died)."""
    path = tmp_path / "dead.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()
    ident = WorkloadIdentity(IdentitySettings.from_env(lab_env, spiffe_socket=f"unix://{path}"))
    with pytest.raises(WorkloadApiUnavailableError) as err:
        ident.svid("vault")
    assert err.value.upstream_code == "UNAVAILABLE"
    ident.close()


def test_unregistered_workload_is_a_typed_error(lab: Lab, lab_env: dict[str, str]) -> None:
    original = lab.workload_api.registry
    from harness.spire import Registry

    lab.workload_api.registry = Registry("iia.lab")
    ident = WorkloadIdentity(IdentitySettings.from_env(lab_env))
    try:
        with pytest.raises(WorkloadNotAttestedError) as err:
            ident.credential()
        assert err.value.upstream_code == "PERMISSION_DENIED"
    finally:
        lab.workload_api.registry = original
        ident.close()


def test_vault_down_is_a_typed_error(lab_env: dict[str, str], events: EventBus) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ident = WorkloadIdentity(IdentitySettings.from_env(lab_env,
                                                       vault_addr=f"http://127.0.0.1:{port}"),
                             events=events)
    with pytest.raises(VaultUnavailableError) as err:
        ident.credential()
    assert err.value.dependency == "vault" and str(port) in err.value.description
    assert not events.recent(type="vault:login") and not events.recent(type="vault:secret_read")
    ident.close()


def test_sealed_vault_is_a_typed_error(tmp_path: Path, lab_env: dict[str, str]) -> None:
    server = OpenBaoServer(tmp_path / "bao")
    server.start()
    try:
        server.seal()
        ident = WorkloadIdentity(IdentitySettings.from_env(lab_env, vault_addr=server.url))
        with pytest.raises(VaultSealedError) as err:
            ident.credential()
        assert err.value.code == "vault_sealed" and err.value.upstream_code == "503"
        ident.close()
    finally:
        server.stop()


def test_settings_are_validated_on_construction(lab_env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="SPIFFE_ENDPOINT_SOCKET"):
        IdentitySettings.from_env({k: v for k, v in lab_env.items()
                                   if k != "SPIFFE_ENDPOINT_SOCKET"})
    with pytest.raises(ConfigurationError, match="unix socket"):
        IdentitySettings.from_env(lab_env, spiffe_socket="tcp://127.0.0.1:8081")
    with pytest.raises(ConfigurationError, match="IIA_VAULT_ADDR"):
        IdentitySettings.from_env(lab_env, vault_addr="vault.local")
    with pytest.raises(ConfigurationError, match="SPIFFE ID"):
        IdentitySettings.from_env(lab_env, spiffe_id="agentic-workload")
    fallback = {k: v for k, v in lab_env.items() if k != "IIA_VAULT_ADDR"}
    fallback["VAULT_ADDR"] = lab_env["IIA_VAULT_ADDR"]
    assert IdentitySettings.from_env(fallback).vault_addr == lab_env["IIA_VAULT_ADDR"]


def test_events_never_carry_the_svid_or_secret(identity: WorkloadIdentity,
                                               events: EventBus) -> None:
    credential = identity.credential()
    identity.credential()
    svid = identity.svid("vault")
    dumped = json.dumps([e.to_dict() for e in events.recent()])
    assert credential.client_secret not in dumped and svid.token not in dumped
    assert len(events.recent()) >= 4
