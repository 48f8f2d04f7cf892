"""Software nobody here wrote (issue #18 item 5): the official TypeScript SDK and the MCP Inspector
CLI, installed by `make install` into clients/node (npm ci, pinned by its package-lock.json), sign
a user in to the lab knowing only the MCP server's URL and call tools. The harness plays the
browser: it reads the authorization URL the client prints, signs the user in with the lab's
software authenticator (harness/verify/login.py) and follows the redirect to the client's own
loopback listener."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.lab import Lab
from harness.verify.login import complete_passkey_login
from tests.cimd_documents import DocumentServer, cimd_site  # noqa: F401 - `documents`

NODE_DIR = Path(__file__).resolve().parent.parent / "clients" / "node"
MODULES = NODE_DIR / "node_modules"
INSPECTOR = MODULES / ".bin" / "mcp-inspector"
WAIT = 180.0  # generous: a busy 2-core machine; nothing here is timed

if not (MODULES / ".installed").exists() or shutil.which("node") is None:
    if os.environ.get("CI"):
        pytest.fail("clients/node is not installed: `make install` runs npm ci there",
                    pytrace=False)
    pytest.skip("clients/node is not installed (run `make install`)", allow_module_level=True)


def browser_sign_in(authorization_url: str, email: str) -> int:
    """What the user's browser does with the URL a client opened: the tenant's sign-in page,
    the passkey, then the redirect to the client's loopback listener (its status returned)."""
    with httpx.Client(timeout=60) as http:
        response = complete_passkey_login(
            http, http.get(authorization_url, follow_redirects=False), email)
        assert response.status_code == 302, response.text
        location = response.headers["location"]
        assert "code=" in location, location
        return http.get(location).status_code


class NodeClient:
    """clients/node/mcp_client.mjs (the TypeScript SDK) as a child process: commands on its
    stdin, events read from its stdout."""

    def __init__(self, url: str, *extra: str) -> None:
        self.process = subprocess.Popen(
            ["node", str(NODE_DIR / "mcp_client.mjs"), url, *extra], cwd=NODE_DIR,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "exited"})

    def expect(self, event: str, **match: Any) -> dict[str, Any]:
        seen = []
        while True:
            try:
                got = self.events.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"no {event} event; saw {seen}") from None
            if got["event"] == event and all(got.get(k) == v for k, v in match.items()):
                return got
            if got["event"] == "exited":
                assert self.process.stderr is not None
                raise AssertionError(f"the client exited before {event}: {seen} "
                                     f"{self.process.stderr.read()[-2000:]}")
            seen.append(got)

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def sign_in(self, email: str) -> dict[str, Any]:
        authorize = self.expect("authorize")
        assert browser_sign_in(authorize["url"], email) == 200
        return self.expect("connected")

    def close(self) -> None:
        if self.process.poll() is None:
            self.send(op="close")
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=WAIT)
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def ts_client(lab: Lab) -> Iterator[NodeClient]:
    client = NodeClient(lab.mcp_url, "--client-id", "iia-ui")
    yield client
    client.close()


def test_the_typescript_sdk_signs_in_with_the_preregistered_client_and_reads(
        lab: Lab, ts_client: NodeClient) -> None:
    connected = ts_client.sign_in("alice@example.com")
    assert connected["client_id"] == "iia-ui"
    ts_client.send(op="list")
    names = {tool["name"] for tool in ts_client.expect("tools")["tools"]}
    assert {"list_users", "create_user", "delete_user"} <= names
    ts_client.send(op="call", id="r1", name="list_users",
                   arguments={"filter": 'userName eq "bob@example.com"'})
    result = ts_client.expect("result", id="r1")["result"]
    assert not result.get("isError"), result
    assert "bob@example.com" in json.dumps(result)


def inspector(lab: Lab, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The Inspector CLI (`mcp-inspector --cli URL ...`) with its own OAuth: it prints the
    authorization URL and waits on its loopback callback listener; the harness signs alice in."""
    env = {**os.environ, "HOME": str(home), "MCP_INSPECTOR_SECRET_STORE": "memory",
           # no TTY here: let the CLI run its interactive login anyway; BROWSER=true makes its
           # "open a browser" a no-op, the harness is the browser
           "MCP_AUTO_OPEN_ENABLED": "true", "BROWSER": "true", "NO_COLOR": "1"}
    process = subprocess.Popen(
        [str(INSPECTOR), "--cli", lab.mcp_url, "--format", "json", *args], cwd=NODE_DIR,
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    assert process.stderr is not None
    stderr: list[str] = []
    for line in process.stderr:
        stderr.append(line)
        if "navigate to: " in line:
            url = line.split("navigate to: ", 1)[1].strip()
            assert browser_sign_in(url, "alice@example.com") == 200
            break
    out, rest = process.communicate(timeout=WAIT)
    return subprocess.CompletedProcess(process.args, process.returncode, out,
                                       "".join(stderr) + rest)


def test_the_inspector_cli_signs_in_with_its_own_oauth_and_lists_and_reads(
        lab: Lab, tmp_path: Path) -> None:
    callback = "http://127.0.0.1:0/callback"
    listed = inspector(lab, tmp_path, "--method", "tools/list", "--client-id", "iia-ui",
                       "--callback-url", callback)
    assert listed.returncode == 0, listed.stderr[-3000:]
    names = {tool["name"] for tool in json.loads(listed.stdout)["result"]["tools"]}
    assert {"list_users", "create_user", "delete_user"} <= names
    called = inspector(lab, tmp_path, "--method", "tools/call", "--tool-name", "list_users",
                       "--tool-arg", 'filter=userName eq "bob@example.com"',
                       "--client-id", "iia-ui", "--callback-url", callback)
    assert called.returncode == 0, called.stderr[-3000:]
    assert "bob@example.com" in called.stdout
    assert not json.loads(called.stdout)["result"].get("isError")


def test_the_typescript_sdk_registers_itself_dynamically_then_reads(lab: Lab) -> None:
    """No client id given: the SDK registers at the registration_endpoint (RFC 7591) with its
    loopback redirect URI, then signs alice in as that new public client."""
    client = NodeClient(lab.mcp_url)
    try:
        registered = client.expect("registered")
        assert registered["client_id"] and registered["client_id"] != "iia-ui"
        connected = client.sign_in("alice@example.com")
        assert connected["client_id"] == registered["client_id"]
        client.send(op="call", id="r1", name="list_users",
                    arguments={"filter": 'userName eq "bob@example.com"'})
        result = client.expect("result", id="r1")["result"]
        assert not result.get("isError"), result
        assert "bob@example.com" in json.dumps(result)
    finally:
        client.close()


def test_the_inspector_cli_registers_itself_dynamically_then_lists(
        lab: Lab, tmp_path: Path) -> None:
    listed = inspector(lab, tmp_path, "--method", "tools/list",
                       "--callback-url", "http://127.0.0.1:0/callback")
    assert listed.returncode == 0, listed.stderr[-3000:]
    authorize = listed.stderr.split("navigate to: ", 1)[1].split()[0]
    assert "client_id=" in authorize and "client_id=iia-ui" not in authorize  # its own client
    names = {tool["name"] for tool in json.loads(listed.stdout)["result"]["tools"]}
    assert {"list_users", "create_user", "delete_user"} <= names


# the clients' Client ID Metadata Document: RFC 8252 loopback redirect URIs match on any port,
# so one document serves a client whose listener takes whatever port is free
CIMD = {"redirect_uris": ["http://127.0.0.1/callback"], "grant_types": ["authorization_code",
        "refresh_token"], "response_types": ["code"], "token_endpoint_auth_method": "none"}


def test_the_typescript_sdk_registers_by_its_metadata_document_then_lists_and_reads(
        lab: Lab, documents: DocumentServer) -> None:
    """--client-metadata-url: the SDK (1.32.2, auth.js `shouldUseUrlBasedClientId`) sees
    client_id_metadata_document_supported and uses the https URL as its client_id; the tenant
    fetches the document (over TLS, from a CA made for this run), and alice signs in."""
    url = documents.publish("/ts-sdk/client.json",
                            {**CIMD, "client_name": "IIA Lab TypeScript SDK client"})
    registered = len(lab.verify.registered)
    client = NodeClient(lab.mcp_url, "--client-metadata-url", url)
    try:
        assert client.expect("registered")["client_id"] == url
        authorize = client.expect("authorize")["url"]
        assert httpx.URL(authorize).params["client_id"] == url
        assert browser_sign_in(authorize, "alice@example.com") == 200
        assert client.expect("connected")["client_id"] == url
        client.send(op="list")
        tools = {tool["name"]: tool for tool in client.expect("tools")["tools"]}
        assert {"list_users", "create_user", "delete_user"} <= set(tools)
        # the annotations, as a third-party client reads them (hints, never a rule)
        assert tools["delete_user"]["annotations"]["destructiveHint"] is True
        assert tools["list_users"]["annotations"]["readOnlyHint"] is True
        client.send(op="call", id="m1", name="list_users",
                    arguments={"filter": 'userName eq "bob@example.com"'})
        result = client.expect("result", id="m1")["result"]
        assert not result.get("isError"), result
        assert "bob@example.com" in json.dumps(result)
    finally:
        client.close()
    assert len(lab.verify.registered) == registered  # no RFC 7591 registration: the document
    assert documents.requests.count("/ts-sdk/client.json") >= 1
    refused = [d for d in lab.verify.audit.decisions("client_metadata_document")
              if d.client_id == url and d.outcome == "refused"]
    assert not refused


def test_the_inspector_cli_registers_by_its_metadata_document_then_lists_and_reads(
        lab: Lab, documents: DocumentServer, tmp_path: Path) -> None:
    url = documents.publish("/inspector/client.json",
                            {**CIMD, "client_name": "MCP Inspector CLI"})
    registered = len(lab.verify.registered)
    cimd = ("--client-metadata-url", url, "--callback-url", "http://127.0.0.1:0/callback")
    listed = inspector(lab, tmp_path, "--method", "tools/list", *cimd)
    assert listed.returncode == 0, listed.stderr[-3000:]
    authorize = listed.stderr.split("navigate to: ", 1)[1].split()[0]
    assert httpx.URL(authorize).params["client_id"] == url  # the document URL is its client_id
    names = {tool["name"] for tool in json.loads(listed.stdout)["result"]["tools"]}
    assert {"list_users", "create_user", "delete_user"} <= names
    called = inspector(lab, tmp_path, "--method", "tools/call", "--tool-name", "list_users",
                       "--tool-arg", 'filter=userName eq "bob@example.com"', *cimd)
    assert called.returncode == 0, called.stderr[-3000:]
    assert "bob@example.com" in called.stdout
    assert not json.loads(called.stdout)["result"].get("isError")
    assert len(lab.verify.registered) == registered
    assert documents.requests.count("/inspector/client.json") >= 1


def _push_for(lab: Lab, name: str, status: str = "pending") -> Any:
    for push in lab.verify.approvals.all():
        if push.status == status and name in json.dumps(push.authorization_details):
            return push
    return None


def _until(condition: Any, what: str) -> Any:
    import time
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _approve(lab: Lab, push: Any) -> httpx.Response:
    from harness.lab_client import PhoneApi
    with httpx.Client(timeout=30) as http:
        return PhoneApi(lab.verify.base_url, http).answer(push.id, True)


def test_a_tier2_call_cancelled_by_the_typescript_sdk_before_approval_never_executes(
        lab: Lab, ts_client: NodeClient) -> None:
    import secrets
    name = f"node-cancel-{secrets.token_hex(4)}@example.com"
    ts_client.sign_in("alice@example.com")
    ts_client.send(op="call", id="w1", name="create_user", progress=True, timeout=300000,
                   arguments={"user_name": name, "given_name": "Node", "family_name": "Cancel"})
    push = _until(lambda: _push_for(lab, name), "the push to reach alice's phone")
    ts_client.send(op="cancel", id="w1")
    assert ts_client.expect("error", id="w1")
    _until(lambda: _push_for(lab, name, "withdrawn"), "the push to be withdrawn")
    late = _approve(lab, push)
    assert late.status_code >= 400
    assert lab.verify.directory.user_by_username(name) is None


def test_a_tier2_call_with_progress_and_a_raised_timeout_completes_after_approval(
        lab: Lab, ts_client: NodeClient) -> None:
    import secrets
    name = f"node-long-{secrets.token_hex(4)}@example.com"
    ts_client.sign_in("alice@example.com")
    ts_client.send(op="call", id="w2", name="create_user", progress=True, timeout=300000,
                   arguments={"user_name": name, "given_name": "Node", "family_name": "Long"})
    push = _until(lambda: _push_for(lab, name), "the push to reach alice's phone")
    ts_client.expect("progress", id="w2")
    assert _approve(lab, push).status_code == 200
    result = ts_client.expect("result", id="w2")["result"]
    assert not result.get("isError"), result
    assert lab.verify.directory.user_by_username(name) is not None


def test_a_tier2_call_the_typescript_sdk_times_out_never_executes(
        lab: Lab, ts_client: NodeClient) -> None:
    """The failure this issue began with: the SDK's own request timeout fires while the push
    waits (-32001 Request timed out), the SDK sends notifications/cancelled by itself, and the
    person approves afterwards. Nothing is written. (Whether the push was already on the phone
    when the cancellation came depends on the machine's speed; either way it is not pending
    afterwards and an approval of it does nothing.)"""
    import secrets
    name = f"node-timeout-{secrets.token_hex(4)}@example.com"
    ts_client.sign_in("alice@example.com")
    ts_client.send(op="call", id="t1", name="create_user", timeout=5000,
                   arguments={"user_name": name, "given_name": "Node", "family_name": "Timeout"})
    assert ts_client.expect("error", id="t1")["code"] == -32001  # the SDK's RequestTimeout
    _until(lambda: lab.mcp.calls.running() == 0, "the cancelled call to end at the server")
    assert _push_for(lab, name) is None  # nothing left pending on the phone
    for push in [p for p in lab.verify.approvals.all()
                 if name in json.dumps(p.authorization_details)]:
        assert push.status == "withdrawn"
        assert _approve(lab, push).status_code == 409
    assert lab.verify.directory.user_by_username(name) is None
