"""Each dependency down fails the call closed, with an error that names it, and changes nothing.

The chain is built exactly as the MCP server builds it, with one dependency pointed at a port
where nothing listens (or a socket nobody serves)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.lab import Lab
from iia.admin_api import AdminApiClient
from iia.enforcement import EnforcementChain
from iia.events import EventBus
from iia.hitl import CibaApprovalChannel, ConsentCache
from iia.identity import IdentitySettings, WorkloadIdentity
from iia.oauth.client import AuthorizationServerClient
from iia.resource_server import Caller
from iia.sessions import SessionRevocations
from tests.agent_helpers import ask, phone, user_id
from tests.helpers import user_token


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def caller(lab: Lab) -> Caller:
    import jwt

    token = user_token(lab)["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    return Caller(token=token, sub=claims["sub"], email=claims["email"], sid=claims["sid"],
                  claims=claims)


_OPEN: list = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def chain(lab: Lab, *, identity: dict[str, str] | None = None, issuer: str | None = None,
          admin: str | None = None) -> tuple[EnforcementChain, EventBus]:
    events = EventBus()
    ident = WorkloadIdentity(IdentitySettings.from_env(lab.iia_env(), **(identity or {})),
                             events=events)
    idp = AuthorizationServerClient(issuer or lab.verify.issuer)
    built = EnforcementChain(
        identity=ident, server=idp, admin=AdminApiClient(admin or lab.verify.admin_api_url),
        approvals=CibaApprovalChannel(idp, ident, timeout=10), consents=ConsentCache(),
        events=events, revocations=SessionRevocations(),
        admin_api_url=lab.verify.admin_api_url)
    _OPEN.extend([ident, idp, built.admin])
    return built, events


@pytest.fixture
def quiet(lab: Lab) -> Iterator[tuple[int, int]]:
    """Snapshot what the IdP and the admin API saw; the test asserts it did not grow."""
    yield len(lab.verify.audit.decisions("token_exchange")), len(lab.verify.admin_api.requests)


def test_spire_down(lab: Lab, tmp_path: Path, quiet: tuple[int, int]) -> None:
    built, events = chain(lab, identity={"spiffe_socket": f"unix://{tmp_path}/gone.sock"})
    target = user_id(lab, "grace@example.com")
    with phone(lab) as p:
        outcome = built.call("deactivate_user", {"user_id": target}, caller(lab))
    assert not outcome.ok and outcome.code == "workload_api_unavailable"
    assert "SPIFFE Workload API" in outcome.error
    assert p.answered == []  # nobody was asked to approve what could not run
    assert events.recent(type="agent:tool_error")[0].to_dict()["dependency"] == "spire"
    assert (len(lab.verify.audit.decisions("token_exchange")),
            len(lab.verify.admin_api.requests)) == quiet
    assert lab.verify.directory.user(target).active


def test_vault_down(lab: Lab, quiet: tuple[int, int]) -> None:
    built, events = chain(lab, identity={"vault_addr": dead_url()})
    outcome = built.call("list_users", {}, caller(lab))
    assert not outcome.ok and outcome.code == "vault_unavailable" and "Vault" in outcome.error
    assert events.recent(type="agent:tool_error")[0].to_dict()["dependency"] == "vault"
    assert (len(lab.verify.audit.decisions("token_exchange")),
            len(lab.verify.admin_api.requests)) == quiet


def test_idp_down(lab: Lab, quiet: tuple[int, int]) -> None:
    built, events = chain(lab, issuer=dead_url() + "/oidc/endpoint/default")
    outcome = built.call("list_users", {}, caller(lab))
    assert not outcome.ok and outcome.code == "idp_unavailable"
    assert "unreachable" in outcome.error
    assert events.recent(type="agent:tool_error")[0].to_dict()["dependency"] == "idp"
    assert len(lab.verify.admin_api.requests) == quiet[1]


def test_admin_api_down(lab: Lab) -> None:
    built, events = chain(lab, admin=dead_url() + "/v2.0")
    outcome = built.call("list_users", {}, caller(lab))
    assert not outcome.ok and outcome.code == "admin_api_unavailable"
    assert events.recent(type="agent:tool_error")[0].to_dict()["dependency"] == "admin_api"
    # the exchange happened (the token was minted), the API call could not: nothing changed
    assert events.recent(type="agent:token_exchange_success")


def test_model_down(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    result = ask(lab, token, "list users", anthropic_base_url=dead_url())
    assert result.stop == "model_unavailable" and "APIConnectionError" in result.reason
    assert result.tool_calls == []
