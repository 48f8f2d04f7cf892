"""The zones as OS processes (issue #14): `python -m harness.serve spire|verify|model|
caep-receiver` and `python -m iia.serve`, each started here as a supervisor starts it, with its
listening socket bound here and handed over (systemd socket activation, tests/zone_processes).

Over real processes and a real OpenBao: every service answers on the socket it was handed (and
not on its IIA_PORT); a service killed with SIGKILL and started again serves the same port, and
a request made while it was down waits in the backlog and is answered; the SPIRE stand-in's
SVIDs validate against its discovery keys and, after kill -9 and a restart with the same bundle
file, still do while new ones are signed by a new key; Verify's scoped Vault token may write the
MCP server's credential and nothing else, and `POST /lab/credential/rotate` writes a fresh
secret with it (503 naming Vault while Vault is down, and again after Vault restarted on the
same URL with the same root token and was bootstrapped again).
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hvac
import hvac.exceptions
import jwt
import pytest
from spiffe import JwtSvid, TrustDomain, WorkloadApiClient
from spiffe.bundle.jwt_bundle.errors import AuthorityNotFoundError
from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle

from harness.lab import WORKLOAD_SPIFFE_ID, Lab
from harness.net import bind_loopback, free_port_pair
from harness.openbao import (
    ROTATOR_POLICY,
    OpenBaoServer,
    VaultLayout,
    bootstrap,
    create_rotator_token,
)
from harness.paths import fixtures_dir
from tests.zone_processes import WAIT, clean_env, healthy, spawn, stop, url_of, wait_for

TD = TrustDomain("iia.lab")
LAYOUT = VaultLayout.load(fixtures_dir())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve(service: str, sock: socket.socket, log: Path, **settings: str) -> \
        subprocess.Popen[bytes]:
    return spawn(["-m", "harness.serve", service], clean_env(**settings), log,
                 sockets={_SOCKET[service]: sock})


_SOCKET = {"spire": "spiffe_oidc", "verify": "verify", "model": "model",
           "caep-receiver": "caep_receiver"}


def _up(proc: subprocess.Popen[bytes], log: Path, url: str, path: str = "/healthz") -> None:
    wait_for(lambda: healthy(url, path), f"{url}{path} healthy", proc=proc, log=log)


# -- every service on the socket it was handed --------------------------------------------------

@pytest.mark.parametrize(("service", "settings", "path", "answer"), [
    ("model", {}, "/healthz", {"status": "ok"}),
    ("caep-receiver", {"IIA_CAEP_RECEIVER_AUDIENCE": "http://127.0.0.1:9/events",
                       "IIA_ANTENNA_URL": "http://127.0.0.1:9"}, "/received", []),
])
def test_a_service_answers_on_the_socket_it_was_handed(
        tmp_path: Path, service: str, settings: dict[str, str], path: str, answer: Any) -> None:
    """...not on IIA_PORT, which it would bind without a handover; SIGTERM ends it cleanly."""
    sock, log = bind_loopback(), tmp_path / f"{service}.log"
    unused = _free_port()
    proc = _serve(service, sock, log, IIA_BIND="127.0.0.1", IIA_PORT=str(unused), **settings)
    try:
        _up(proc, log, url_of(sock))
        assert httpx.get(url_of(sock) + path, timeout=30).json() == answer
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{unused}/healthz", timeout=30)
    finally:
        assert stop(proc) == 0, log.read_text()
        sock.close()


def test_a_killed_service_restarts_on_the_same_port_and_the_backlog_waits(
        tmp_path: Path) -> None:
    """kill -9, then a request while nothing serves: the connection waits in the handed-over
    socket's backlog and is answered by the restarted process."""
    sock, log = bind_loopback(), tmp_path / "model.log"
    url = url_of(sock)
    proc = _serve("model", sock, log)
    try:
        _up(proc, log, url)
        assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
        waiting = socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=WAIT)
        with waiting:
            waiting.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Connection: close\r\n\r\n")
            proc = _serve("model", sock, log)
            answer = b""
            while chunk := waiting.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b'{"status":"ok"}'), answer
    finally:
        stop(proc)
        sock.close()


def test_a_handover_of_a_socket_the_service_does_not_serve_is_refused(tmp_path: Path) -> None:
    sock, log = bind_loopback(), tmp_path / "model.log"
    with sock:
        proc = spawn(["-m", "harness.serve", "model"], clean_env(), log,
                     sockets={"verify": sock})
        assert proc.wait(timeout=WAIT) == 1
    out = log.read_text()
    assert "harness.serve model: LISTEN_FDNAMES hands over verify; this service serves only " \
           "model" in out, out
    assert "Traceback" not in out


def test_a_malformed_handover_is_refused_with_a_sentence(tmp_path: Path) -> None:
    log = tmp_path / "model.log"
    proc = spawn(["-m", "harness.serve", "model"], clean_env(LISTEN_FDS="many"), log)
    assert proc.wait(timeout=WAIT) == 1
    out = log.read_text()
    assert "harness.serve model: LISTEN_FDS must be the number of sockets handed over" in out
    assert "Traceback" not in out


# -- the product: python -m iia.serve on four handed-over sockets ------------------------------

def _iia_env(tmp_path: Path, lab: Lab) -> dict[str, str]:
    return clean_env(**lab.iia_env(), IIA_BIND="127.0.0.1",
                     IIA_ANTENNA_DB=str(tmp_path / "antenna.sqlite"),
                     IIA_MCP_PORT=str(_free_port()), IIA_CHAT_PORT=str(_free_port()))


def test_iia_serve_answers_on_its_four_handed_over_sockets(lab: Lab, tmp_path: Path) -> None:
    sockets = {name: bind_loopback() for name in ("mcp", "chat", "antenna", "console")}
    env = _iia_env(tmp_path, lab)
    env["IIA_ANTENNA_URL"] = url_of(sockets["antenna"])
    log = tmp_path / "iia.log"
    proc = spawn(["-m", "iia.serve", "--console"], env, log, sockets=sockets)
    try:
        for name, sock in sockets.items():
            _up(proc, log, url_of(sock))
            assert httpx.get(url_of(sock) + "/healthz", timeout=30).json()["status"] == "ok", \
                name
        # the MCP server's protected-resource metadata is on the mcp socket, Antenna's issuer
        # on the antenna socket: each socket serves its own app
        assert httpx.get(url_of(sockets["antenna"]) + "/.well-known/ssf-configuration",
                         timeout=30).json()["issuer"] == url_of(sockets["antenna"])
        assert httpx.get(url_of(sockets["console"]) + "/events", timeout=30).status_code == 200
        for port in ("IIA_MCP_PORT", "IIA_CHAT_PORT"):  # not bound: the handed ones serve
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{env[port]}/healthz", timeout=30)
    finally:
        for sock in sockets.values():
            sock.close()
        # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught
        assert stop(proc) in (0, -signal.SIGTERM), log.read_text()[-3000:]


def test_iia_serve_refuses_a_console_socket_without_console(lab: Lab, tmp_path: Path) -> None:
    sockets = {name: bind_loopback() for name in ("mcp", "chat", "antenna", "console")}
    log = tmp_path / "iia.log"
    try:
        proc = spawn(["-m", "iia.serve"], _iia_env(tmp_path, lab), log, sockets=sockets)
        assert proc.wait(timeout=WAIT) == 1
    finally:
        for sock in sockets.values():
            sock.close()
    out = log.read_text()
    assert "iia.serve: invalid_configuration: LISTEN_FDNAMES hands over console, which this " \
           "process does not serve (it serves mcp, chat, antenna; console only with --console)" \
        in out, out
    assert not (tmp_path / "antenna.sqlite").exists()  # refused before anything started


# -- the SPIRE stand-in -------------------------------------------------------------------------

class Spire:
    """`python -m harness.serve spire` on a handed-over socket, restartable."""

    def __init__(self, directory: Path, **settings: str) -> None:
        self.sock = bind_loopback()
        self.url = url_of(self.sock)
        self.socket_path = directory / "agent.sock"
        self.bundle_file = directory / "bundle.json"
        self.log = directory / "spire.log"
        self.settings = {"IIA_SPIFFE_OIDC_URL": self.url,
                         "IIA_SPIRE_SOCKET": str(self.socket_path),
                         "IIA_SPIRE_BUNDLE_FILE": str(self.bundle_file), **settings}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Spire:
        self.proc = _serve("spire", self.sock, self.log, **self.settings)
        _up(self.proc, self.log, self.url, "/.well-known/openid-configuration")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        return stop(self.proc, sig)

    def close(self) -> None:
        if self.proc is not None:
            stop(self.proc)
        self.sock.close()

    def keys(self) -> dict[str, Any]:
        keys: dict[str, Any] = httpx.get(self.url + "/keys", timeout=30).json()
        return keys

    def kids(self) -> set[str]:
        return {k["kid"] for k in self.keys()["keys"]}

    def svid(self, *audiences: str) -> str:
        with WorkloadApiClient(f"unix://{self.socket_path}", default_timeout=30) as client:
            return str(client.fetch_jwt_svid(set(audiences)).token)

    def validates(self, token: str, audience: str) -> bool:
        """Against the discovery provider's /keys, by py-spiffe."""
        bundle = JwtBundle.parse(TD, json.dumps(self.keys()).encode())
        return str(JwtSvid.parse_and_validate(token, bundle, {audience}).spiffe_id) == \
            WORKLOAD_SPIFFE_ID


@pytest.fixture
def spire(tmp_path: Path) -> Iterator[Spire]:
    running = Spire(tmp_path, IIA_LAB_SVID_TTL="120")
    try:
        yield running.start()
    finally:
        running.close()


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def test_spire_issues_svids_that_survive_a_kill_and_restart(spire: Spire) -> None:
    before = spire.svid("vault")
    claims = jwt.decode(before, options={"verify_signature": False})
    assert claims["iss"] == spire.url and claims["sub"] == WORKLOAD_SPIFFE_ID
    assert claims["exp"] - claims["iat"] == 120  # IIA_LAB_SVID_TTL
    assert spire.validates(before, "vault")
    assert spire.kids() == {_kid(before)}
    assert spire.socket_path.is_socket()

    assert spire.stop(signal.SIGKILL) == -signal.SIGKILL
    assert spire.socket_path.exists()  # a killed agent leaves its socket file behind
    stored = json.loads(spire.bundle_file.read_text())
    assert [k["kid"] for k in stored["keys"]] == [_kid(before)]
    assert not any(set(k) & {"d", "p", "q"} for k in stored["keys"])  # public keys only
    spire.start()  # the same bundle file, the same socket path, the same handed-over port

    after = spire.svid("vault")
    assert _kid(after) != _kid(before)  # a new run signs with a new key
    assert spire.kids() == {_kid(before), _kid(after)}
    assert spire.validates(before, "vault")  # issued before kill -9, still valid
    assert spire.validates(after, "vault")
    with WorkloadApiClient(f"unix://{spire.socket_path}", default_timeout=30) as client:
        assert str(client.validate_jwt_svid(before, "vault").spiffe_id) == WORKLOAD_SPIFFE_ID
        bundle = client.fetch_jwt_bundles().get_bundle_for_trust_domain(TD)
        assert bundle is not None and bundle.get_jwt_authority(_kid(before)) is not None
    assert {k["kid"] for k in json.loads(spire.bundle_file.read_text())["keys"]} == \
        {_kid(before), _kid(after)}


def test_spire_without_the_old_bundle_does_not_validate_old_svids(tmp_path: Path) -> None:
    """The control: what keeps an old SVID valid is the bundle file, not luck."""
    running = Spire(tmp_path).start()
    try:
        before = running.svid("vault")
        running.stop(signal.SIGKILL)
        running.bundle_file.unlink()
        running.start()
        assert _kid(before) not in running.kids()
        with pytest.raises(AuthorityNotFoundError):
            running.validates(before, "vault")
    finally:
        running.close()


def test_spire_rotates_its_keys_as_configured(tmp_path: Path) -> None:
    running = Spire(tmp_path, IIA_LAB_SPIFFE_KEY_ROTATION="1").start()
    try:
        first = running.svid("vault")
        wait_for(lambda: len(running.kids()) > 1, "a second key published", proc=running.proc,
                 log=running.log)
        second = wait_for(lambda: (t := running.svid("vault")) and _kid(t) != _kid(first) and t,
                          "an SVID signed by the new key")
        assert isinstance(second, str)
        assert running.validates(first, "vault") and running.validates(second, "vault")
        wait_for(lambda: _kid(second) in running.bundle_file.read_text(),
                 "the new key in the bundle file")
    finally:
        running.close()


def test_spire_replaces_a_stale_socket_but_no_other_file(tmp_path: Path) -> None:
    running = Spire(tmp_path)
    running.socket_path.write_text("not a socket")
    try:
        running.proc = _serve("spire", running.sock, running.log, **running.settings)
        assert running.proc.wait(timeout=WAIT) == 1
        assert f"IIA_SPIRE_SOCKET {running.socket_path} exists and is not a socket; not " \
               "replacing it" in running.log.read_text()
        assert running.socket_path.read_text() == "not a socket"
    finally:
        running.close()


# -- Vault and Verify ---------------------------------------------------------------------------

class Vault:
    """A real OpenBao on a fixed port with a fixed root token, restartable where it was."""

    def __init__(self, workdir: Path, discovery: str) -> None:
        self.workdir, self.discovery = workdir, discovery
        self.port = free_port_pair()
        self.root_token = secrets.token_urlsafe(32)
        self.rotator_token = secrets.token_urlsafe(32)
        self.server: OpenBaoServer | None = None

    def start(self) -> Vault:
        self.server = OpenBaoServer(self.workdir, port=self.port, root_token=self.root_token)
        self.server.start(timeout=WAIT)
        root = self.root()
        bootstrap(root, LAYOUT, self.discovery)
        create_rotator_token(root, LAYOUT, self.rotator_token)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def root(self) -> hvac.Client:
        return hvac.Client(url=self.url, token=self.root_token)

    def credential(self) -> tuple[str, int]:
        secret = self.root().secrets.kv.v2.read_secret_version(
            path=LAYOUT.secret_path, mount_point=LAYOUT.kv_mount, raise_on_deleted_version=True)
        return secret["data"]["data"]["client_secret"], secret["data"]["metadata"]["version"]


@pytest.fixture
def vault(spire: Spire, tmp_path: Path) -> Iterator[Vault]:
    running = Vault(tmp_path / "openbao", spire.url)
    try:
        yield running.start()
    finally:
        running.stop()


def test_the_rotator_token_may_write_the_credential_and_nothing_else(vault: Vault) -> None:
    scoped = hvac.Client(url=vault.url, token=vault.rotator_token)
    written = scoped.secrets.kv.v2.create_or_update_secret(
        path=LAYOUT.secret_path, mount_point=LAYOUT.kv_mount,
        secret={"client_id": LAYOUT.client_id, "client_secret": "s1"})
    assert vault.credential() == ("s1", written["data"]["version"])
    forbidden = [
        lambda: scoped.secrets.kv.v2.read_secret_version(  # not even read it back
            path=LAYOUT.secret_path, mount_point=LAYOUT.kv_mount,
            raise_on_deleted_version=True),
        lambda: scoped.secrets.kv.v2.create_or_update_secret(
            path="other", mount_point=LAYOUT.kv_mount, secret={"x": "y"}),
        lambda: scoped.secrets.kv.v2.delete_metadata_and_all_versions(
            path=LAYOUT.secret_path, mount_point=LAYOUT.kv_mount),
        lambda: scoped.secrets.kv.v2.destroy_secret_versions(
            path=LAYOUT.secret_path, versions=[1], mount_point=LAYOUT.kv_mount),
        lambda: scoped.sys.list_policies(),
        lambda: scoped.sys.create_or_update_policy(ROTATOR_POLICY, 'path "*" {}'),
        lambda: scoped.auth.token.create(policies=[ROTATOR_POLICY]),
        lambda: scoped.auth.token.lookup_self(),  # no default policy either
        lambda: scoped.read(f"auth/{LAYOUT.jwt_mount}/role/{LAYOUT.role['name']}"),
        lambda: scoped.sys.enable_secrets_engine("kv", path="mine"),
    ]
    for attempt in forbidden:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()
    assert vault.credential() == ("s1", written["data"]["version"])  # nothing changed
    root = vault.root()
    assert root.sys.read_policy(ROTATOR_POLICY)["data"]["rules"].count("path ") == 1
    looked = root.auth.token.lookup(vault.rotator_token)["data"]
    assert looked["policies"] == [ROTATOR_POLICY]
    # created again (the supervisor does after every bootstrap): still one token of that id
    create_rotator_token(root, LAYOUT, vault.rotator_token)
    assert root.auth.token.lookup(vault.rotator_token)["data"]["policies"] == [ROTATOR_POLICY]


def _introspects(verify_url: str, secret: str) -> int:
    return httpx.post(f"{verify_url}/oidc/endpoint/default/introspect",
                      data={"token": "not-a-token"}, auth=(LAYOUT.client_id, secret),
                      timeout=30).status_code


def _rotate(verify_url: str) -> httpx.Response:
    return httpx.post(verify_url + "/lab/credential/rotate", timeout=WAIT)


def test_verify_rotates_the_credential_into_vault_with_its_scoped_token(
        spire: Spire, vault: Vault, tmp_path: Path) -> None:
    sock, log = bind_loopback(), tmp_path / "verify.log"
    url = url_of(sock)
    proc = _serve("verify", sock, log, IIA_VERIFY_PUBLIC_URL=url,
                  IIA_MCP_RESOURCE="http://127.0.0.1:9/mcp", IIA_VAULT_ADDR=vault.url,
                  IIA_VAULT_TOKEN=vault.rotator_token, IIA_SPIFFE_OIDC_URL=spire.url)
    try:
        _up(proc, log, url)
        first, version = vault.credential()  # written at start, with the scoped token
        answer = _rotate(url)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"client_id": LAYOUT.client_id, "rotated": True,
                                 "secret": "in Vault at ibm-verify/data/mcp-server",
                                 "version": version + 1}
        second, now = vault.credential()
        assert now == version + 1 and second != first
        assert first not in answer.text and second not in answer.text
        assert _introspects(url, first) == 401  # refused at once, no grace
        assert _introspects(url, second) == 200

        vault.stop()  # Vault down: a clear 503 naming it, nothing rotated
        down = _rotate(url)
        assert down.status_code == 503
        assert down.json()["error"] == "temporarily_unavailable"
        assert down.json()["dependency"] == "vault"
        assert down.json()["error_description"].startswith(
            f"Vault at {vault.url} is unreachable; the secret of {LAYOUT.client_id} was not "
            "rotated")

        vault.start()  # same URL, same root token, empty: bootstrapped, the token recreated
        again = _rotate(url)
        assert again.status_code == 200, again.text
        assert again.json()["version"] == 1  # the first version in the new Vault
        third, _ = vault.credential()
        assert _introspects(url, third) == 200
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
        sock.close()
    assert all(s not in log.read_text() for s in (first, second, third, vault.rotator_token))


def test_verify_without_a_vault_token_says_which_it_needs(tmp_path: Path) -> None:
    sock, log = bind_loopback(), tmp_path / "verify.log"
    with sock:
        proc = _serve("verify", sock, log, IIA_VERIFY_PUBLIC_URL=url_of(sock),
                      IIA_MCP_RESOURCE="http://127.0.0.1:9/mcp",
                      IIA_VAULT_ADDR="http://127.0.0.1:9", IIA_SPIFFE_OIDC_URL="http://127.0.0.1:9")
        assert proc.wait(timeout=WAIT) == 1
    assert "harness.serve verify: IIA_VAULT_TOKEN (a token that may write the MCP server's " \
           "credential) or IIA_VAULT_ROOT_TOKEN required" in log.read_text()


def test_credential_rotation_answers_loopback_callers_only(lab: Lab) -> None:
    """A lab route: from any other address it is 403 and nothing rotates."""
    import asyncio

    version = lab.client_secret.version

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=lab.verify.app(), client=("203.0.113.7", 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://verify") as client:
            return await client.post("/lab/credential/rotate")

    answer = asyncio.run(call())
    assert answer.status_code == 403
    assert answer.json() == {"error": "access_denied", "error_description":
                             "the lab's credential rotation answers loopback callers only"}
    assert lab.client_secret.version == version
