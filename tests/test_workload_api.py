"""The SPIFFE Workload API served by the harness, exercised with the real `spiffe` client."""

from __future__ import annotations

import json
import os
import time

import grpc
import jwt
import pytest
from grpclib import const as grpclib_const
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc
from spiffe.errors import PySpiffeError

from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from harness.spire import JwtAuthority, RegistrationEntry, Registry
from harness.spire.attestor import lab_substitutions
from harness.spire.validation import SvidValidationError, validate_jwt_svid

TD = TrustDomain("iia.lab")


@pytest.fixture
def client(lab: Lab):
    with WorkloadApiClient(lab.endpoints["spiffe_socket"], default_timeout=30) as c:
        yield c


def raw_stub(lab: Lab) -> tuple[grpc.Channel, workload_pb2_grpc.SpiffeWorkloadAPIStub]:
    path = lab.endpoints["spiffe_socket"].removeprefix("unix://")
    channel = grpc.insecure_channel(f"unix:{path}")
    return channel, workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)


def test_jwt_svid_claims_and_header(lab: Lab, client: WorkloadApiClient) -> None:
    before = time.time()
    svid = client.fetch_jwt_svid({"vault"})
    header = jwt.get_unverified_header(svid.token)
    claims = jwt.decode(svid.token, options={"verify_signature": False})
    assert str(svid.spiffe_id) == WORKLOAD_SPIFFE_ID == claims["sub"]
    assert claims["aud"] in ("vault", ["vault"])
    assert header["alg"] == "ES256" and header["typ"] == "JWT"
    assert header["kid"] == lab.authority.keys.current.kid
    assert claims["exp"] - claims["iat"] == 300  # 5-minute TTL
    assert before - 1 <= claims["iat"] <= time.time() + 1
    assert claims["iss"] == lab.endpoints["spiffe_oidc"]


def test_svid_validates_against_the_bundle(client: WorkloadApiClient) -> None:
    svid = client.fetch_jwt_svid({"vault", "verify"})
    bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(TD)
    assert bundle is not None
    parsed = JwtSvid.parse_and_validate(svid.token, bundle, {"verify"})
    assert str(parsed.spiffe_id) == WORKLOAD_SPIFFE_ID
    # ...and through the agent's own ValidateJWTSVID
    validated = client.validate_jwt_svid(svid.token, "vault")
    assert str(validated.spiffe_id) == WORKLOAD_SPIFFE_ID


def test_validate_refuses_wrong_audience_and_tampering(client: WorkloadApiClient) -> None:
    svid = client.fetch_jwt_svid({"vault"})
    with pytest.raises(PySpiffeError, match="INVALID_ARGUMENT"):
        client.validate_jwt_svid(svid.token, "someone-else")
    head, _, sig = svid.token.split(".")
    forged = jwt.utils.base64url_encode(json.dumps(
        {**jwt.decode(svid.token, options={"verify_signature": False}),
         "sub": "spiffe://iia.lab/admin"}).encode()).decode()
    with pytest.raises(PySpiffeError, match="signature"):
        client.validate_jwt_svid(f"{head}.{forged}.{sig}", "vault")


def test_request_without_security_header_is_invalid_argument(lab: Lab) -> None:
    channel, stub = raw_stub(lab)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["vault"]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "security header" in err.value.details()
    with raw_stub(lab)[0] as channel2:
        stub2 = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel2)
        with pytest.raises(grpc.RpcError) as err2:
            stub2.ValidateJWTSVID(workload_pb2.ValidateJWTSVIDRequest(audience="a", svid="b"),
                                  timeout=30)
        assert err2.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_bundle_stream_without_security_header_is_invalid_argument(lab: Lab) -> None:
    """FetchJWTBundles is a server stream: the refusal arrives as the stream's status."""
    calls = lab.workload_api.calls["FetchJWTBundles"]
    channel, stub = raw_stub(lab)
    with channel, pytest.raises(grpc.RpcError) as err:
        next(iter(stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), timeout=30)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "security header" in err.value.details()
    assert lab.workload_api.calls["FetchJWTBundles"] == calls + 1  # it reached the agent


def test_empty_audience_is_invalid_argument(lab: Lab) -> None:
    channel, stub = raw_stub(lab)
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=[]), timeout=30,
                          metadata=(("workload.spiffe.io", "true"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_requesting_an_identity_not_ours_is_denied(lab: Lab, client: WorkloadApiClient) -> None:
    from spiffe import SpiffeId

    issued = lab.workload_api.svids_issued_to["spiffe://iia.lab/admin"]
    with pytest.raises(PySpiffeError, match="PERMISSION_DENIED"):
        client.fetch_jwt_svid({"vault"}, subject=SpiffeId("spiffe://iia.lab/admin"))
    assert lab.workload_api.svids_issued_to["spiffe://iia.lab/admin"] == issued


def test_attestation_uses_the_callers_real_uid_and_path(lab: Lab,
                                                         client: WorkloadApiClient) -> None:
    """Swap in registries that want another uid / another executable: this very process,
    unchanged, stops being a registered workload; restore, and it is again."""
    me = lab_substitutions()
    original = lab.workload_api.registry
    wrong_uid = Registry("iia.lab", [RegistrationEntry(
        WORKLOAD_SPIFFE_ID, frozenset({f"unix:uid:{int(me['LAB_UID']) + 4242}"}))])
    wrong_path = Registry("iia.lab", [RegistrationEntry(
        WORKLOAD_SPIFFE_ID, frozenset({f"unix:uid:{me['LAB_UID']}", "unix:path:/usr/bin/env"}))])
    issued = lab.authority.svids_issued
    try:
        for registry in (wrong_uid, wrong_path):
            lab.workload_api.registry = registry
            with pytest.raises(PySpiffeError, match="PERMISSION_DENIED"):
                client.fetch_jwt_svid({"vault"})
        assert lab.authority.svids_issued == issued  # nothing was signed
    finally:
        lab.workload_api.registry = original
    assert lab.workload_api.last_peer is not None
    assert lab.workload_api.last_peer.pid == os.getpid()
    assert lab.workload_api.last_peer.exe == me["LAB_PYTHON"]
    assert str(client.fetch_jwt_svid({"vault"}).spiffe_id) == WORKLOAD_SPIFFE_ID


def _fetch_as_user(socket_path: str, uid: int) -> str:
    """Fork; in the child drop to `uid` *before* connecting (SO_PEERCRED records the
    credentials at connect time), ask for a JWT-SVID with a pure-Python gRPC client, and report
    the gRPC status through a pipe. No exec: the child needs no interpreter it may not read."""
    import asyncio
    import warnings

    from grpclib.client import Channel
    from grpclib.exceptions import GRPCError

    async def probe() -> str:
        channel = Channel(path=socket_path)
        try:
            method = channel.request("/SpiffeWorkloadAPI/FetchJWTSVID",
                                     grpclib_const.Cardinality.UNARY_UNARY,
                                     workload_pb2.JWTSVIDRequest, workload_pb2.JWTSVIDResponse,
                                     metadata={"workload.spiffe.io": "true"}, timeout=30)
            async with method as stream:
                await stream.send_message(workload_pb2.JWTSVIDRequest(audience=["vault"]),
                                          end=True)
                reply = await stream.recv_message()
                await stream.recv_trailing_metadata()
            return "ISSUED " + reply.svids[0].spiffe_id
        except GRPCError as exc:
            return exc.status.name
        finally:
            channel.close()

    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write_end, asyncio.run(probe()).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return result


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user; the "
                    "registry-swap test above covers attestation without root")
def test_a_process_of_another_user_is_refused(lab: Lab) -> None:
    issued = lab.authority.svids_issued
    socket_path = lab.endpoints["spiffe_socket"].removeprefix("unix://")
    assert _fetch_as_user(socket_path, 65534) == "PERMISSION_DENIED"
    assert lab.workload_api.last_peer is not None and lab.workload_api.last_peer.uid == 65534
    assert lab.authority.svids_issued == issued
    # the same probe as ourselves is issued an SVID: the refusal above is about the uid
    assert _fetch_as_user(socket_path, os.getuid()) == f"ISSUED {WORKLOAD_SPIFFE_ID}"


def test_x509_profile_is_reported_unimplemented(client: WorkloadApiClient) -> None:
    with pytest.raises(PySpiffeError, match="UNIMPLEMENTED"):
        client.fetch_x509_svid()


def test_rotation_keeps_older_svids_valid_and_streams_the_new_bundle(
        lab: Lab, client: WorkloadApiClient) -> None:
    old = client.fetch_jwt_svid({"vault"})
    old_kid = jwt.get_unverified_header(old.token)["kid"]
    updates: list[set[str]] = []
    client.stream_jwt_bundles(
        on_success=lambda bs: updates.append(
            set(bs.get_bundle_for_trust_domain(TD).jwt_authorities)),
        on_error=lambda e: None)
    deadline = time.time() + 5
    while not updates and time.time() < deadline:
        time.sleep(0.02)
    new_kid = lab.authority.keys.rotate()
    while not any(new_kid in u for u in updates) and time.time() < deadline:
        time.sleep(0.02)
    assert any({old_kid, new_kid} <= u for u in updates), updates
    new = client.fetch_jwt_svid({"vault"})
    assert jwt.get_unverified_header(new.token)["kid"] == new_kid
    bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(TD)
    for svid in (old, new):  # both still validate
        JwtSvid.parse_and_validate(svid.token, bundle, {"vault"})
        client.validate_jwt_svid(svid.token, "vault")


def test_retired_keys_leave_the_bundle_when_their_last_svid_expired() -> None:
    now = [1_000_000.0]
    authority = JwtAuthority("iia.lab", "http://issuer", svid_ttl=300, rotation_period=600,
                             clock=lambda: now[0])
    token = authority.sign_svid(WORKLOAD_SPIFFE_ID, ["vault"])
    first = authority.keys.current.kid
    now[0] += 600
    assert authority.keys.tick()  # due: rotates
    second = authority.keys.current.kid
    kids = {k["kid"] for k in authority.keys.jwks()["keys"]}
    assert kids == {first, second}
    bundles = {"iia.lab": authority.keys.public_keys()}
    # the old SVID expired at +300; but one signed just before retirement would live to +900
    now[0] += 299
    assert first in authority.keys.public_keys()
    now[0] += 2
    authority.keys.tick()
    assert {k["kid"] for k in authority.keys.jwks()["keys"]} == {second}
    with pytest.raises(SvidValidationError, match="expired"):
        validate_jwt_svid(token, bundles, "vault", now=now[0])
