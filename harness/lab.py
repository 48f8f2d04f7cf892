"""The lab: every simulated service on 127.0.0.1, started and stopped together.

`Lab` runs its services on one asyncio loop in a background thread, so the same object serves
the `iia-lab up` process, the test suite (in-process, where tests can reach the simulated
products' state) and a notebook that starts its own lab.

Start order follows the dependencies: the SPIFFE OIDC discovery provider and the Workload API
first (Vault's JWT auth fetches the discovery document when it is configured), then OpenBao and
its bootstrap, then the Verify tenant, whose client secret rotates in Vault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from harness.authenticator import (
    SoftwareAuthenticator,
    enroll_demo_users,
    register_local,
    unregister_local,
)
from harness.caep_receiver import CaepReceiver
from harness.claude import MessagesApi, ScriptedModel
from harness.lab_settings import LabSettings
from harness.lab_state import write_state
from harness.net import HttpService, bind_loopback, reserve_loopback
from harness.openbao import OpenBaoServer, VaultLayout, bootstrap
from harness.spire import JwtAuthority, WorkloadApiServer, discovery_app, load_registry
from harness.verify import VerifyTenant
from harness.verify.rotation import RotatingClientSecret
from harness.verify.tokens import member_groups
from iia.agent import model_client
from iia.antenna import (
    CAEP,
    PUSH,
    SUPPORTED,
    AnomalyRules,
    Antenna,
    OAuthManagement,
    antenna_app,
)
from iia.chat import ChatApp
from iia.console import console_app
from iia.events import EventBus
from iia.identity import IdentitySettings, WorkloadIdentity
from iia.mcp_server import McpServer
from iia.settings import AgentSettings, ChatSettings, McpSettings

__all__ = ["Lab", "LabSettings"]

log = logging.getLogger(__name__)
T = TypeVar("T")

WORKLOAD_SPIFFE_ID = "spiffe://iia.lab/agentic-workload"


class Lab:
    """Start with `start()` (returns the endpoints), stop with `stop()`; also a context manager."""

    def __init__(self, settings: LabSettings | None = None) -> None:
        self.settings = settings or LabSettings.from_env()
        self.endpoints: dict[str, str] = {}
        self.runtime_dir: Path | None = None
        self.started_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: list[HttpService] = []
        self._ticker: asyncio.Task[None] | None = None
        self.events = EventBus()
        self._mcp_sock: socket.socket | None = None
        self.mcp_url = ""
        # the simulated products, reachable by tests and notebooks that started this lab
        self.authority: JwtAuthority
        self.workload_api: WorkloadApiServer
        self.openbao: OpenBaoServer
        self.vault_layout: VaultLayout
        self.client_secret: RotatingClientSecret
        self.verify: VerifyTenant
        self.authenticator: SoftwareAuthenticator  # the demo users' passkeys (their phones)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> dict[str, str]:
        if self._thread is not None:
            raise RuntimeError("this lab is already started")
        began = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="iia-lab", daemon=True)
        self._thread.start()
        try:
            self._run(self._start())
        except BaseException:
            self.stop()
            raise
        self.started_at = time.time()
        log.info("lab healthy in %.2f s", time.monotonic() - began)
        return dict(self.endpoints)

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="iia-lab-"))
        # Like SPIRE's socket directory: reachable by any local process, gated by attestation.
        os.chmod(self.runtime_dir, 0o755)  # noqa: S103

        # SPIFFE: discovery provider (its URL is the SVID issuer), then the Workload API.
        discovery_sock = bind_loopback()
        discovery_url = f"http://127.0.0.1:{discovery_sock.getsockname()[1]}"
        registry = load_registry(s.fixtures / "spire" / "entries.json")
        self.authority = JwtAuthority(registry.trust_domain, discovery_url, svid_ttl=s.svid_ttl,
                                      rotation_period=s.spiffe_key_rotation, clock=s.clock)
        await self._serve(HttpService("spiffe_oidc", discovery_app(self.authority),
                                      discovery_sock))
        socket_path = self.runtime_dir / "agent.sock"
        self.workload_api = WorkloadApiServer(self.authority, registry)
        await self.workload_api.start(str(socket_path))
        os.chmod(socket_path, 0o777)  # noqa: S103
        self.endpoints["spiffe_socket"] = f"unix://{socket_path}"
        self._ticker = asyncio.create_task(self._tick(), name="key-rotation")

        # Vault: a real OpenBao, bootstrapped from fixtures/vault (the calls into Vault run in a
        # worker thread: Vault calls back into the discovery provider served by this loop).
        self.openbao = OpenBaoServer(self.runtime_dir / "openbao")
        self.openbao.start(timeout=s.start_timeout)
        self.endpoints["vault"] = self.openbao.url
        self.vault_layout = VaultLayout.load(s.fixtures)
        root = self.openbao.root_client()
        await loop.run_in_executor(None, bootstrap, root, self.vault_layout, discovery_url)
        self.client_secret = RotatingClientSecret(
            root, client_id=self.vault_layout.client_id, kv_mount=self.vault_layout.kv_mount,
            path=self.vault_layout.secret_path, grace_seconds=s.secret_grace_seconds,
            clock=s.clock)
        await loop.run_in_executor(None, self.client_secret.initialize)

        # The MCP server's port is reserved now: its URL is the resource user tokens are for.
        self._mcp_sock = reserve_loopback()
        self.mcp_url = f"http://127.0.0.1:{self._mcp_sock.getsockname()[1]}/mcp"

        # The identity provider.
        verify_sock = bind_loopback()
        self.verify = VerifyTenant(
            f"http://127.0.0.1:{verify_sock.getsockname()[1]}", fixtures=s.fixtures,
            mcp_client_secret=self.client_secret, mcp_resource=self.mcp_url,
            spiffe_keys_url=f"{discovery_url}/keys", trust_domain=registry.trust_domain,
            obo_token_ttl=s.obo_ttl, clock=s.clock)
        self.verify.tokens.groups_of = member_groups(self.verify)  # the `groups` claim
        # the demo users' phones: a software authenticator holding one passkey per user,
        # enrolled by WebAuthn registration at the tenant; found in this process by origin
        self.authenticator = SoftwareAuthenticator()
        enroll_demo_users(self.verify, self.authenticator)
        register_local(self.verify.passkeys.origin, self.authenticator)
        await self._serve(HttpService("verify", self.verify.app(), verify_sock))

        # The scripted stand-in for Claude.
        self.claude = MessagesApi(ScriptedModel(s.fixtures / "scripts" / "claude.json"))
        await self._serve(HttpService("model", self.claude.app()))

        # The product (iia): the MCP server, pointed at this lab by the same IIA_* settings a
        # real deployment would use.
        env = self.iia_env()
        self.mcp_identity = WorkloadIdentity(IdentitySettings.from_env(env), events=self.events)
        self.mcp = McpServer(McpSettings.from_env(env), self.mcp_identity, self.events)
        sock, self._mcp_sock = self._mcp_sock, None
        assert sock is not None
        await self._serve(HttpService("mcp", self.mcp.app(), sock, lifespan=True),
                          url=self.mcp_url)
        # Antenna (iia's SSF transmitter) and a CAEP receiver; then every receiver subscribes
        # through Antenna's management API, as any SSF receiver would.
        # An outside receiver manages its streams with an access token of the IdP (client
        # credentials, scope ssf.manage, resource = Antenna's issuer), checked by its JWKS.
        antenna_sock = bind_loopback()
        antenna_url = f"http://127.0.0.1:{antenna_sock.getsockname()[1]}"
        self.antenna = Antenna(antenna_url, self.runtime_dir / "antenna.sqlite",
                               events=self.events,
                               rules=AnomalyRules.load(s.fixtures / "antenna" / "anomaly.json"),
                               management=OAuthManagement(
                                   issuer=self.verify.issuer,
                                   jwks_uri=f"{self.verify.issuer}/jwks",
                                   audience=antenna_url))
        self.antenna.start()
        await self._serve(HttpService("antenna", antenna_app(self.antenna), antenna_sock))
        caep_sock = bind_loopback()
        self.caep = CaepReceiver(f"http://127.0.0.1:{caep_sock.getsockname()[1]}/events")
        await self._serve(HttpService("caep_receiver", self.caep.app(), caep_sock))
        await loop.run_in_executor(None, self._subscribe_receivers)

        agent_settings = AgentSettings.from_env(env)
        self.chat = ChatApp(ChatSettings.from_env(env), agent_settings, self.events,
                            model=lambda: model_client(agent_settings), chain=self.mcp.chain)
        await self._serve(HttpService("chat", self.chat.app()))
        # the security console: a lab tool (off in `python -m iia.serve` unless --console), on
        # a loopback socket like every lab service
        await self._serve(HttpService("console", console_app(self.events, self.mcp.chain)))

    def _subscribe_receivers(self) -> None:
        """Create one push stream per receiver at Antenna: the IdP and the MCP server want
        session-revoked; the CAEP receiver wants every event type."""
        issuer = self.antenna.issuer
        origin = self.mcp_url.rsplit("/mcp", 1)[0]
        receivers = [
            ("verify", f"{self.verify.base_url}/v1.0/ssf/events", self.verify.issuer,
             [CAEP["session-revoked"]], self.verify.ssf.trust),
            ("mcp", f"{origin}/ssf/events", self.mcp_url, [CAEP["session-revoked"]],
             self.mcp.ssf.subscribe),
            ("caep_receiver", self.caep.audience, self.caep.audience, list(SUPPORTED),
             self.caep.subscribe),
        ]
        self.streams: dict[str, str] = {}
        with httpx.Client(timeout=10) as http:
            for name, endpoint, audience, events, subscribe in receivers:
                header = "Bearer " + secrets.token_urlsafe(24)  # what the receiver will demand
                subscribe(issuer, f"{issuer}/jwks", header)
                token = self.antenna.register_client(name)
                response = http.post(f"{issuer}/ssf/streams", headers={
                    "Authorization": f"Bearer {token}"}, json={
                    "delivery": {"method": PUSH, "endpoint_url": endpoint,
                                 "authorization_header": header},
                    "events_requested": events, "aud": audience,
                    "description": f"lab subscription of {name}"})
                response.raise_for_status()
                self.streams[name] = response.json()["stream_id"]

    async def _serve(self, service: HttpService, url: str | None = None) -> None:
        await service.start()
        self._http.append(service)
        self.endpoints[service.name] = url or service.url

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.authority.keys.tick()
            if hasattr(self, "verify"):
                self.verify.keys.tick()

    def stop(self) -> None:
        """Stop every service and remove the runtime directory. Safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                self._run(self._stop(), timeout=15)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            loop.close()
        if hasattr(self, "openbao"):
            self.openbao.stop()
        mcp_sock: socket.socket | None = getattr(self, "_mcp_sock", None)
        if mcp_sock is not None:
            mcp_sock.close()
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            self.runtime_dir = None
        if hasattr(self, "verify"):
            unregister_local(self.verify.passkeys.origin)
        self._loop = self._thread = None
        self.endpoints.clear()

    async def _stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if hasattr(self, "antenna"):
            self.antenna.stop()
        # clients first (the product's identity holds a channel to the Workload API)
        if hasattr(self, "mcp"):
            self.mcp.close()
            self.mcp_identity.close()
        if hasattr(self, "chat"):
            await self.chat.aclose()
        for service in reversed(self._http):
            await service.stop()
        self._http.clear()
        if hasattr(self, "workload_api"):
            await self.workload_api.stop()
        if hasattr(self, "openbao"):
            self.openbao.stop()  # from the loop thread that started it
        # whatever libraries left running on this loop (e.g. sse-starlette's shutdown
        # watcher) ends here, not as a "task destroyed but pending" at interpreter exit
        current = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks() if t is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what `iia` needs to find this lab --------------------------------------------------

    def iia_env(self) -> dict[str, str]:
        """The IIA_* settings (IDs and URLs only) that point `iia` at this lab."""
        layout = self.vault_layout
        return {
            "SPIFFE_ENDPOINT_SOCKET": self.endpoints["spiffe_socket"],
            "IIA_SPIFFE_ID": WORKLOAD_SPIFFE_ID,
            "IIA_VAULT_ADDR": self.endpoints["vault"],
            "IIA_VAULT_AUDIENCE": layout.role["bound_audiences"][0],
            "IIA_VAULT_JWT_MOUNT": layout.jwt_mount,
            "IIA_VAULT_ROLE": layout.role["name"],
            "IIA_VAULT_KV_MOUNT": layout.kv_mount,
            "IIA_VAULT_SECRET_PATH": layout.secret_path,
            "IIA_VERIFY_ISSUER": self.verify.issuer,
            "IIA_ADMIN_API_URL": self.verify.admin_api_url,
            "IIA_ADMIN_GROUP_ID": self.verify.directory.admin_group_id,
            "IIA_MCP_RESOURCE": self.mcp_url,
            "IIA_ANTHROPIC_BASE_URL": self.endpoints["model"],
            "IIA_MODEL": self.claude.model_name,
        }

    def write_state(self, directory: Path, pid: int) -> None:
        """Write `endpoints.json`, `iia.env` and `lab.json` (atomically, IDs and URLs only)."""
        write_state(directory, self.endpoints, self.iia_env(), {
            "pid": pid, "runtime_dir": str(self.runtime_dir), "started_at": self.started_at,
            "fixtures": str(self.settings.fixtures)})
