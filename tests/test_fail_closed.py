"""Each dependency down fails the call closed, with an error that names it, and changes nothing.

SPIRE, Vault, the admin API and the model are taken down end to end: the request goes over
HTTP to the lab's MCP server (or through the agent loop), whose dependency is pointed at a port
where nothing listens (or a socket nobody serves). The IdP-down case builds the chain exactly as
the MCP server builds it, with the issuer pointed at a dead port."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hvac
import jwt
import pytest

from harness.lab import Lab
from iia.admin_api import AdminApiClient
from iia.enforcement import EnforcementChain
from iia.events import EventBus, SecurityEvent
from iia.hitl import CibaApprovalChannel, ConsentCache
from iia.identity import IdentitySettings, WorkloadIdentity
from iia.oauth.client import AuthorizationServerClient
from iia.sessions import SessionRevocations
from tests.agent_helpers import ask, group_id, mcp_call, phone, user_id
from tests.helpers import as_mcp_server, caller_of, user_token


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


_OPEN: list = []


@pytest.fixture(autouse=True)
def close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def chain(lab: Lab, *, issuer: str) -> tuple[EnforcementChain, EventBus]:
    events = EventBus()
    ident = WorkloadIdentity(IdentitySettings.from_env(lab.iia_env()), events=events)
    idp = AuthorizationServerClient(issuer)
    built = EnforcementChain(
        identity=ident, server=idp, admin=AdminApiClient(lab.verify.admin_api_url),
        approvals=CibaApprovalChannel(idp, ident, timeout=10), consents=ConsentCache(),
        events=events, revocations=SessionRevocations(),
        admin_api_url=lab.verify.admin_api_url)
    _OPEN.extend([ident, idp, built.admin])
    return built, events


@contextmanager
def mcp_server_with(lab: Lab, *, identity: dict[str, Any] | None = None,
                    admin: str | None = None) -> Iterator[None]:
    """The lab's running MCP server with one dependency pointed elsewhere, as if its process
    had been configured so (a fresh identity has no cached SVID or Vault token either)."""
    mcp = lab.mcp
    saved = mcp.identity, mcp.chain.identity, mcp.approvals.identity, mcp.chain.admin
    try:
        if identity is not None:
            broken = WorkloadIdentity(IdentitySettings.from_env(lab.iia_env(), **identity),
                                      events=lab.events)
            _OPEN.append(broken)
            mcp.identity = mcp.chain.identity = mcp.approvals.identity = broken
        if admin is not None:
            client = AdminApiClient(admin)
            _OPEN.append(client)
            mcp.chain.admin = client
        yield
    finally:
        mcp.identity, mcp.chain.identity, mcp.approvals.identity, mcp.chain.admin = saved


class Quiet:
    """What the IdP and the admin API saw when the test began; `assert_nothing_happened` checks
    that no push, no token exchange and no admin API request followed."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.pushes = len(lab.verify.approvals.all())
        self.ciba = len(lab.verify.audit.decisions("ciba"))
        self.exchanges = len(lab.verify.audit.decisions("token_exchange"))
        self.admin = len(lab.verify.admin_api.requests)
        self.events = lab.events.cursor()  # the bus history is bounded: a cursor, not an index

    def assert_nothing_happened(self, *, exchanges: int = 0) -> None:
        verify = self.lab.verify
        assert len(verify.approvals.all()) == self.pushes  # no push reached the IdP
        assert len(verify.audit.decisions("ciba")) == self.ciba
        assert len(verify.audit.decisions("token_exchange")) == self.exchanges + exchanges
        assert len(verify.admin_api.requests) == self.admin  # the admin API saw nothing

    def events_of(self, token: str) -> list[SecurityEvent]:
        sid = jwt.decode(token, options={"verify_signature": False})["sid"]
        return [e for e in self.lab.events.since(self.events)[0] if e.session_id == sid]


@pytest.fixture
def quiet(lab: Lab) -> Quiet:
    return Quiet(lab)


def members(lab: Lab, group: str) -> set[str]:
    return {m.value for m in lab.verify.directory.group(group_id(lab, group)).members or []}


def test_spire_down(lab: Lab, tmp_path: Path, quiet: Quiet) -> None:
    token = user_token(lab)["access_token"]
    target = user_id(lab, "grace@example.com")
    with mcp_server_with(lab, identity={"spiffe_socket": f"unix://{tmp_path}/gone.sock"}), \
            phone(lab) as p:
        result = mcp_call(lab, token, "deactivate_user", {"user_id": target})
    assert result.is_error and result.text.startswith("[workload_api_unavailable]")
    assert "SPIFFE Workload API" in result.text
    assert p.answered == []  # nobody was asked to approve what could not run
    mine = quiet.events_of(token)
    assert not [e for e in mine if e.type.startswith(("agent:hitl", "agent:push"))]
    errors = [e.to_dict() for e in mine if e.type == "agent:tool_error"]
    assert len(errors) == 1 and errors[0]["dependency"] == "spire"
    assert errors[0]["error"] == "workload_api_unavailable"
    quiet.assert_nothing_happened()
    assert lab.verify.directory.user(target).active


@pytest.mark.parametrize("name,arguments", [
    ("add_user_to_group", {"user_id": "dave@example.com", "group_id": "Engineering"}),  # tier 2
    ("deactivate_user", {"user_id": "grace@example.com"}),  # tier 3
])
def test_vault_down_fails_before_anyone_is_asked(lab: Lab, quiet: Quiet, name: str,
                                                 arguments: dict[str, str]) -> None:
    token = user_token(lab)["access_token"]  # a fresh session: no write consent yet
    user = user_id(lab, arguments["user_id"])
    args = {"user_id": user}
    if "group_id" in arguments:
        args["group_id"] = group_id(lab, arguments["group_id"])
        before = members(lab, arguments["group_id"])
    with mcp_server_with(lab, identity={"vault_addr": dead_url()}), phone(lab) as p:
        result = mcp_call(lab, token, name, args)
    assert result.is_error and result.text.startswith("[vault_unavailable]")
    assert "Vault at http://127.0.0.1:" in result.text and "unreachable" in result.text
    assert p.answered == []
    mine = quiet.events_of(token)
    assert "agent:hitl_required" not in [e.type for e in mine]  # nobody was asked anything
    assert not [e for e in mine if e.type.startswith(("agent:push", "agent:token_exchange"))]
    errors = [e.to_dict() for e in mine if e.type == "agent:tool_error"]
    assert len(errors) == 1 and errors[0]["dependency"] == "vault"
    assert errors[0]["error"] == "vault_unavailable"
    quiet.assert_nothing_happened()
    assert lab.verify.directory.user(user).active
    if "group_id" in arguments:
        assert members(lab, arguments["group_id"]) == before


def test_idp_down(lab: Lab, quiet: Quiet) -> None:
    built, events = chain(lab, issuer=dead_url() + "/oidc/endpoint/default")
    outcome = built.call("list_users", {}, caller_of(user_token(lab)["access_token"]))
    assert not outcome.ok and outcome.code == "idp_unavailable"
    assert "unreachable" in outcome.error
    assert events.recent(type="agent:tool_error")[0].to_dict()["dependency"] == "idp"
    assert not events.recent(type="agent:token_exchange_success")
    assert len(lab.verify.admin_api.requests) == quiet.admin


@contextmanager
def idp_vault_down(lab: Lab) -> Iterator[None]:
    """The IdP's own Vault client pointed at a dead port: the MCP server still reads its
    secret from the lab's OpenBao, but the IdP cannot store the rotated one."""
    rotating = lab.verify.mcp_client_secret
    saved = rotating._vault
    rotating._vault = hvac.Client(url=dead_url())
    try:
        yield
    finally:
        rotating._vault = saved


def test_idp_vault_down_is_a_503_naming_vault(lab: Lab, identity: WorkloadIdentity) -> None:
    token_url = lab.verify.issuer + "/token"
    with idp_vault_down(lab):
        answer = as_mcp_server(identity, token_url, {"grant_type": "client_credentials",
                                                      "scope": "ssf.manage"})
    assert answer.status_code == 503, answer.text  # not a 500
    body = answer.json()
    assert body["error"] == "temporarily_unavailable" and body["dependency"] == "vault"
    assert "secret store (Vault) is unavailable" in body["error_description"]
    assert answer.headers["Retry-After"] == "1" and "access_token" not in body
    # the secret that was current stays current: once Vault is back the same client works
    again = as_mcp_server(identity, token_url, {"grant_type": "client_credentials",
                                                 "scope": "ssf.manage"})
    assert again.status_code == 200, again.text


def test_idp_vault_down_the_chain_names_it(lab: Lab, quiet: Quiet) -> None:
    token = user_token(lab)["access_token"]
    with idp_vault_down(lab):
        result = mcp_call(lab, token, "list_users", {})
    assert result.is_error and result.text.startswith("[idp_unavailable]"), result.text
    assert "the identity provider's secret store (Vault) is unavailable" in result.text
    assert "HTTP 500" not in result.text
    errors = [e.to_dict() for e in quiet.events_of(token) if e.type == "agent:tool_error"]
    assert len(errors) == 1 and errors[0]["dependency"] == "idp"
    assert len(lab.verify.admin_api.requests) == quiet.admin  # nothing reached the admin API


def test_admin_api_down_a_write_changes_nothing(lab: Lab) -> None:
    token = user_token(lab)["access_token"]
    with phone(lab) as p:  # the session's write consent, given while everything is up
        created = mcp_call(lab, token, "create_user", {
            "user_name": "olga@example.com", "given_name": "Olga", "family_name": "O"})
        assert not created.is_error, created.text
    assert len(p.answered) == 1
    olga = user_id(lab, "olga@example.com")
    before = members(lab, "Engineering")
    quiet = Quiet(lab)
    with mcp_server_with(lab, admin=dead_url() + "/v2.0"), phone(lab) as p:
        result = mcp_call(lab, token, "add_user_to_group", {
            "user_id": olga, "group_id": group_id(lab, "Engineering")})
    assert result.is_error and result.text.startswith("[admin_api_unavailable]")
    assert "unreachable" in result.text
    assert p.answered == []  # the cached consent covered it; nobody was asked again
    mine = quiet.events_of(token)
    assert "agent:hitl_cached" in [e.type for e in mine]
    errors = [e.to_dict() for e in mine if e.type == "agent:tool_error"]
    assert len(errors) == 1 and errors[0]["dependency"] == "admin_api"
    # the token was minted (one exchange), the API call could not be made: nothing changed
    quiet.assert_nothing_happened(exchanges=1)
    success = [e for e in mine if e.type == "agent:token_exchange_success"]
    assert errors[0]["correlation"]["oboJti"] == success[0].correlation["oboJti"]
    assert members(lab, "Engineering") == before and olga not in before


def test_model_down(lab: Lab, quiet: Quiet) -> None:
    token = user_token(lab)["access_token"]
    result = ask(lab, token, "list users", anthropic_base_url=dead_url())
    assert result.stop == "model_unavailable" and "APIConnectionError" in result.reason
    assert "the model is unavailable" in result.text
    assert result.tool_calls == []
    quiet.assert_nothing_happened()
    assert not [e for e in quiet.events_of(token) if e.type.startswith("agent:")]
