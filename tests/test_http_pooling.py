"""The MCP server's clients (issue #15): one pooled keep-alive connection per upstream, and
nothing taken from the environment (`iia.net.http_client` for httpx, `iia.identity.vault.
vault_session` for hvac): a proxy variable left in a deployment's environment neither reroutes
nor breaks a call to Vault or the IdP, and a warm client does not reconnect per request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from harness.lab import Lab
from iia.identity import IdentitySettings, WorkloadIdentity
from iia.net import http_client
from iia.oauth.client import AuthorizationServerClient

DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every proxy variable set to a proxy that does not exist, and no exemption."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.setenv(name, DEAD_PROXY)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


class _Counting(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Hello)
        self.connections = 0
        self.requests = 0

    def process_request(self, request: object, client_address: object) -> None:
        self.connections += 1  # one per accepted TCP connection
        super().process_request(request, client_address)  # type: ignore[arg-type]


class _Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:
        assert isinstance(self.server, _Counting)
        self.server.requests += 1
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def counting() -> Iterator[_Counting]:
    server = _Counting()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_an_http_client_keeps_one_connection_alive(counting: _Counting) -> None:
    url = f"http://127.0.0.1:{counting.server_address[1]}/"
    with http_client(5.0) as client:
        answers = [client.get(url).json() for _ in range(5)]
    assert answers == [{"ok": True}] * 5
    assert (counting.requests, counting.connections) == (5, 1)


def test_an_http_client_takes_no_proxy_from_the_environment(
        proxy_env: None, counting: _Counting) -> None:
    url = f"http://127.0.0.1:{counting.server_address[1]}/"
    with http_client(5.0) as client:
        assert client.get(url).json() == {"ok": True}
    assert counting.requests == 1  # it reached the server itself, not the dead proxy


def test_the_idp_client_ignores_proxy_variables(proxy_env: None, lab: Lab) -> None:
    client = AuthorizationServerClient(lab.verify.issuer)
    try:
        assert client.endpoint("token_endpoint").startswith(lab.verify.issuer)
    finally:
        client.close()


def test_vault_ignores_proxy_variables_and_keeps_one_connection(
        proxy_env: None, lab_env: dict[str, str]) -> None:
    identity = WorkloadIdentity(IdentitySettings.from_env(lab_env))
    try:
        credentials = [identity.vault.read() for _ in range(3)]  # a login, three reads
        assert all(c.client_id and c.client_secret for c in credentials)
        assert identity.vault.logins == 1 and identity.vault.reads == 3
        addr = identity.settings.vault_addr
        session = identity.vault._session
        assert session.trust_env is False
        pools = session.get_adapter(addr).poolmanager.pools
        # urllib3's container refuses iteration; keys() is its snapshot
        opened = [pools[key].num_connections for key in pools.keys()]  # noqa: SIM118
        assert opened == [1]  # one pool, and the login and the reads on one connection
    finally:
        identity.close()
