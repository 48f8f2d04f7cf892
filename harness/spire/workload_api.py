"""The SPIFFE Workload API (the SPIRE agent's side), served over gRPC on a unix socket.

Messages are the ones shipped with py-spiffe (`spiffe._proto.workload_pb2`), so the real
`spiffe` client talks to this server unchanged. The server is `grpclib` rather than `grpcio`
because the unix attestor needs the kernel's peer credentials for each connection (SO_PEERCRED),
which grpcio does not expose to a servicer.

Implemented: FetchJWTSVID, FetchJWTBundles (a stream that pushes a new bundle on every key
rotation), ValidateJWTSVID. The X.509 profile is not implemented (UNIMPLEMENTED), as the lab's
chain uses JWT-SVIDs only.

Per the Workload API spec every request must carry the metadata `workload.spiffe.io: true`
(otherwise INVALID_ARGUMENT), and a caller that matches no registration entry gets
PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import weakref
from collections import Counter
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2
from grpclib.const import Cardinality, Handler, Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream
from spiffe._proto import workload_pb2 as pb

from harness.spire.attestor import PeerCredentials, RegistrationEntry, Registry, peer_credentials
from harness.spire.authority import JwtAuthority
from harness.spire.validation import SvidValidationError, validate_jwt_svid

__all__ = ["WorkloadApiServer"]

log = logging.getLogger(__name__)

SECURITY_HEADER = "workload.spiffe.io"


class WorkloadApiServer:
    """Serves the Workload API for one trust domain. `calls` counts requests by method and
    `svids_issued_to` counts JWT-SVIDs by SPIFFE ID, so tests can assert on caching."""

    def __init__(self, authority: JwtAuthority, registry: Registry) -> None:
        if registry.trust_domain != authority.trust_domain:
            raise ValueError("registry and authority must share a trust domain")
        self.authority = authority
        self.registry = registry
        self._server: Server | None = None
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.svids_issued_to: Counter[str] = Counter()
        self.last_peer: PeerCredentials | None = None
        self._transports: weakref.WeakSet[Any] = weakref.WeakSet()

    # -- grpclib plumbing -------------------------------------------------------------------

    def __mapping__(self) -> dict[str, Handler]:
        def unimplemented(name: str) -> Handler:
            async def handler(stream: Stream) -> None:
                raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not implemented by this lab "
                                "agent (the lab uses JWT-SVIDs only)")
            return Handler(handler, Cardinality.UNARY_STREAM, pb.X509SVIDRequest,
                           pb.X509SVIDResponse)

        return {
            "/SpiffeWorkloadAPI/FetchJWTSVID": Handler(
                self.fetch_jwt_svid, Cardinality.UNARY_UNARY, pb.JWTSVIDRequest,
                pb.JWTSVIDResponse),
            "/SpiffeWorkloadAPI/FetchJWTBundles": Handler(
                self.fetch_jwt_bundles, Cardinality.UNARY_STREAM, pb.JWTBundlesRequest,
                pb.JWTBundlesResponse),
            "/SpiffeWorkloadAPI/ValidateJWTSVID": Handler(
                self.validate_jwt_svid, Cardinality.UNARY_UNARY, pb.ValidateJWTSVIDRequest,
                pb.ValidateJWTSVIDResponse),
            "/SpiffeWorkloadAPI/FetchX509SVID": unimplemented("FetchX509SVID"),
            "/SpiffeWorkloadAPI/FetchX509Bundles": unimplemented("FetchX509Bundles"),
        }

    async def start(self, path: str) -> None:
        self._server = Server([self])
        await self._server.start(path=path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            # grpclib leaves accepted connections open; a client that outlives us must not
            # leave a transport dangling on a closed loop.
            for transport in list(self._transports):
                transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
            self._server = None

    # -- attestation ------------------------------------------------------------------------

    def _attest(self, stream: Stream, method: str) -> list[RegistrationEntry]:
        with self._lock:
            self.calls[method] += 1
        metadata: Mapping[str, str | bytes] = stream.metadata or {}
        if metadata.get(SECURITY_HEADER) != "true":
            raise GRPCError(Status.INVALID_ARGUMENT, "security header missing from request")
        peer = stream.peer
        # grpclib's Peer exposes the transport; the transport exposes the accepted socket.
        transport = peer._transport if peer is not None else None
        if transport is not None:
            self._transports.add(transport)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is None:
            raise GRPCError(Status.INTERNAL, "cannot read the caller's credentials")
        try:
            creds = peer_credentials(sock)
        except OSError as exc:
            raise GRPCError(Status.INTERNAL, f"workload attestation failed: {exc}") from exc
        self.last_peer = creds
        entries = self.registry.match(creds)
        if not entries:
            log.info("workload attestation: no entry matches pid=%s uid=%s exe=%s",
                     creds.pid, creds.uid, creds.exe)
            raise GRPCError(Status.PERMISSION_DENIED, "no identity issued")
        return entries

    # -- JWT profile ------------------------------------------------------------------------

    async def fetch_jwt_svid(self, stream: Stream) -> None:
        entries = self._attest(stream, "FetchJWTSVID")
        request = await stream.recv_message()
        assert request is not None
        audiences = [a for a in request.audience if a]
        if not audiences:
            raise GRPCError(Status.INVALID_ARGUMENT, "audience must be specified")
        if request.spiffe_id:
            entries = [e for e in entries if e.spiffe_id == request.spiffe_id]
            if not entries:
                raise GRPCError(Status.PERMISSION_DENIED, "no identity issued")
        svids = []
        for entry in entries:
            token = self.authority.sign_svid(entry.spiffe_id, audiences)
            with self._lock:
                self.svids_issued_to[entry.spiffe_id] += 1
            svids.append(pb.JWTSVID(spiffe_id=entry.spiffe_id, svid=token, hint=entry.hint))
        await stream.send_message(pb.JWTSVIDResponse(svids=svids))

    def _bundles_message(self) -> pb.JWTBundlesResponse:
        jwks = json.dumps(self.authority.bundle.jwks(use="jwt-svid")).encode()
        return pb.JWTBundlesResponse(bundles={self.authority.trust_domain: jwks})

    async def fetch_jwt_bundles(self, stream: Stream) -> None:
        self._attest(stream, "FetchJWTBundles")
        await stream.recv_message()
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:  # called from whichever thread rotated the keys
            loop.call_soon_threadsafe(changed.set)

        remove = self.authority.bundle.on_change(wake)
        try:
            while True:
                changed.clear()
                await stream.send_message(self._bundles_message())
                await changed.wait()
        finally:
            remove()

    async def validate_jwt_svid(self, stream: Stream) -> None:
        self._attest(stream, "ValidateJWTSVID")
        request = await stream.recv_message()
        assert request is not None
        if not request.audience:
            raise GRPCError(Status.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            raise GRPCError(Status.INVALID_ARGUMENT, "svid must be specified")
        bundles = {self.authority.trust_domain: self.authority.bundle.public_keys()}
        try:
            claims = validate_jwt_svid(request.svid, bundles, request.audience)
        except SvidValidationError as exc:
            raise GRPCError(Status.INVALID_ARGUMENT, str(exc)) from exc
        struct = struct_pb2.Struct()
        struct.update(_struct_safe(claims))
        await stream.send_message(pb.ValidateJWTSVIDResponse(spiffe_id=claims["sub"],
                                                             claims=struct))


def _struct_safe(claims: dict[str, Any]) -> dict[str, Any]:
    # protobuf Struct holds numbers as doubles and lists/dicts/strings as-is.
    return json.loads(json.dumps(claims))
