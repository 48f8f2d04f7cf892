"""A served admin API for the tests: the tenant's directory, sessions, tokens and RAR registry, and
the `AdminApi` mounted at `/v2.0` on a real loopback socket (uvicorn, on an asyncio loop in a
background thread), plus helpers to mint the OBO tokens token exchange would mint."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Mount

from harness.keyset import RotatingKeySet
from harness.net import HttpService, bind_loopback
from harness.paths import fixtures_dir
from harness.verify.admin_api import AdminApi
from harness.verify.audit import AuditTrail
from harness.verify.directory import Directory
from harness.verify.rar import RarRegistry
from harness.verify.sessions import Session, SessionStore
from harness.verify.tokens import TokenService
from tests.helpers import details

ISSUER = "https://verify.iia.lab/oidc/endpoint/default"
AGENT = "spiffe://iia.lab/agentic-workload"
MCP_CLIENT = "iia-mcp-server"
TIMEOUT = 30.0  # generous: a wait, not a measurement


@dataclass
class AdminWorld:
    api: AdminApi
    directory: Directory
    sessions: SessionStore
    keys: RotatingKeySet
    tokens: TokenService
    registry: RarRegistry
    audit: AuditTrail
    base_url: str

    # -- the people ------------------------------------------------------------------------

    def user_id(self, email: str) -> str:
        user = self.directory.user_by_username(email)
        assert user is not None and user.id is not None, email
        return user.id

    def group_id(self, name: str) -> str:
        group = self.directory.group_by_name(name)
        assert group is not None and group.id is not None, name
        return group.id

    def login(self, email: str, client_id: str = "iia-ui") -> Session:
        return self.sessions.create(self.user_id(email), email, client_id)

    # -- tokens ----------------------------------------------------------------------------

    def rar(self, type_: str, **fields: Any) -> dict[str, Any]:
        """One authorization_details object as the MCP server builds it (RFC 9396 §2), from
        this tenant's registry (`tests.helpers.details`)."""
        return details(self.registry, type_, self.base_url, **fields)

    def obo(self, type_: str | None = None, *, session: Session | None = None,
            audience: str | None = None, details: list[Mapping[str, Any]] | None = None,
            tokens: TokenService | None = None, **fields: Any) -> str:
        """An OBO token (RFC 8693 §4.1 `act`) for `session` (default: a fresh alice session)."""
        session = session or self.login("alice@example.com")
        if details is None:
            assert type_ is not None
            details = [self.rar(type_, **fields)]
        subject = {"sub": session.user_id, "sid": session.sid, "email": session.email}
        token, _ = (tokens or self.tokens).obo_token(
            subject, client_id=MCP_CLIENT, actor=AGENT, audience=audience or self.base_url,
            authorization_details=details)
        return token

    def snapshot(self) -> list[str]:
        """Everything the directory stores, to prove a refused request changed nothing."""
        return sorted(r.model_dump_json() for r in self.directory.storage.resources)


def _run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=TIMEOUT)


@contextlib.contextmanager
def served_admin_api(rar_types: Path | None = None) -> Iterator[AdminWorld]:
    """Serve a fresh tenant's admin API on 127.0.0.1; stop it on exit."""
    fixtures = fixtures_dir()
    directory = Directory(fixtures)
    sessions = SessionStore()
    keys = RotatingKeySet(rotation_period=3600, retain=3600)
    tokens = TokenService(ISSUER, keys, sessions)
    registry = RarRegistry(rar_types or fixtures / "policy" / "rar_types.json")
    audit = AuditTrail()
    sock = bind_loopback()
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v2.0"
    api = AdminApi(directory=directory, tokens=tokens, sessions=sessions, registry=registry,
                   audit=audit, base_url=base_url)
    service = HttpService("verify-admin", Starlette(routes=[Mount("/v2.0", app=api.app())]),
                          sock)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="admin-api", daemon=True)
    thread.start()
    try:
        _run(loop, service.start())
        yield AdminWorld(api, directory, sessions, keys, tokens, registry, audit, base_url)
    finally:
        with contextlib.suppress(Exception):
            _run(loop, service.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=TIMEOUT)
        loop.close()


# -- SCIM request bodies the admin-API tests send --------------------------------------------

PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}


def add_member(user_id: str) -> dict[str, Any]:
    return {"op": "add", "path": "members", "value": [{"value": user_id}]}
