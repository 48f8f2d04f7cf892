"""`python -m iia.serve` subscribes the configured SSF receivers: one stream per receiver, and a
stream left by an earlier run (the outbox is durable) takes this run's configuration. It serves
the lab's unauthenticated security console only when asked (`--console`), and only on a
loopback address."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from harness.lab import Lab
from iia.antenna import Antenna
from iia.errors import ConfigurationError
from iia.serve import check_console_bind, subscribe_receivers
from iia.settings import SsfReceiver

ROOT = Path(__file__).resolve().parent.parent
REFUSED = ("--console serves the unauthenticated security console, on a loopback address "
           "only: IIA_BIND is '0.0.0.0'. Set IIA_BIND=127.0.0.1, or leave --console off")


def _receiver(credential: Path, url: str = "http://127.0.0.1:9/events") -> SsfReceiver:
    return SsfReceiver(name="verify", endpoint_url=url, aud="https://verify.example",
                       events="ALL", authorization_file=str(credential))


def test_a_restart_updates_the_surviving_stream(tmp_path: Path) -> None:
    db, credential = tmp_path / "antenna.sqlite", tmp_path / "ssf-verify"
    credential.write_text("Bearer first-run\n")
    first = Antenna("https://antenna.example", db)
    subscribe_receivers(first, [_receiver(credential)])
    [(stream_id, config, _)] = first.store.streams()
    assert config["delivery"]["authorization_header"] == "Bearer first-run"
    first.stop()  # its push worker too, before the store closes

    credential.write_text("Bearer second-run\n")  # a new run, a new credential and URL
    second = Antenna("https://antenna.example", db)
    subscribe_receivers(second, [_receiver(credential, "http://127.0.0.1:10/events")])
    [(same_id, config, status)] = second.store.streams()  # still one stream
    assert same_id == stream_id and status == "enabled"
    assert config["delivery"]["authorization_header"] == "Bearer second-run"
    assert config["delivery"]["endpoint_url"] == "http://127.0.0.1:10/events"
    second.stop()


def test_an_empty_credential_file_is_refused(tmp_path: Path) -> None:
    db, credential = tmp_path / "antenna.sqlite", tmp_path / "ssf-verify"
    credential.write_text("  \n")
    antenna = Antenna("https://antenna.example", db)
    with pytest.raises(ConfigurationError, match="is empty"):
        subscribe_receivers(antenna, [_receiver(credential)])
    assert antenna.store.streams() == []  # no stream that would push without the header
    antenna.stop()


# -- the security console: off unless asked, and never on a non-loopback address ---------------

def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _serve_env(tmp_path: Path, base: dict[str, str], bind: str = "127.0.0.1") -> dict[str, str]:
    mcp, chat, antenna, console = _free_ports(4)
    inherited = {"SPIFFE_ENDPOINT_SOCKET", "ANTHROPIC_API_KEY"}
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("IIA_") and k not in inherited}
    return {**clean, **base, "IIA_BIND": bind, "IIA_MCP_PORT": str(mcp),
            "IIA_CHAT_PORT": str(chat), "IIA_ANTENNA_PORT": str(antenna),
            "IIA_CONSOLE_PORT": str(console), "IIA_ANTENNA_URL": f"http://127.0.0.1:{antenna}",
            "IIA_ANTENNA_DB": str(tmp_path / "antenna.sqlite")}


@contextmanager
def _serving(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m iia.serve ARGS` until its chat route answers /healthz; stopped after."""
    log = open(Path(env["IIA_ANTENNA_DB"]).with_suffix(".log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "iia.serve", *args], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{env['IIA_CHAT_PORT']}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, Path(log.name).read_text()[-2000:]
            assert time.monotonic() < deadline, "iia.serve did not come up"
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_the_console_is_off_unless_asked_and_then_served_on_loopback(
        lab: Lab, tmp_path: Path) -> None:
    """Without --console nothing listens on IIA_CONSOLE_PORT (and the MCP server has no such
    route); with it, on 127.0.0.1, the console answers."""
    env = _serve_env(tmp_path, lab.iia_env())
    console = f"http://127.0.0.1:{env['IIA_CONSOLE_PORT']}"
    with _serving(env):
        with pytest.raises(httpx.ConnectError):
            httpx.get(console + "/events")
        for path in ("/events", "/calls"):  # nor is it mounted on the MCP server's port
            assert httpx.get(f"http://127.0.0.1:{env['IIA_MCP_PORT']}{path}").status_code == 404
    env = _serve_env(tmp_path, lab.iia_env())
    console = f"http://127.0.0.1:{env['IIA_CONSOLE_PORT']}"
    with _serving(env, "--console"):
        served = httpx.get(console + "/events")
        assert served.status_code == 200
        assert set(served.json()) == {"next", "events"}
        assert httpx.get(console + "/calls").status_code == 200


def test_the_console_on_a_non_loopback_address_is_refused_at_start_up(tmp_path: Path) -> None:
    """IIA_BIND=0.0.0.0 with --console: exit non-zero naming the setting, before anything
    starts (no Antenna database, nothing listening)."""
    env = _serve_env(tmp_path, {}, bind="0.0.0.0")  # noqa: S104 - the address refused
    result = subprocess.run([sys.executable, "-m", "iia.serve", "--console"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert REFUSED in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "antenna.sqlite").exists()
    for port in ("IIA_MCP_PORT", "IIA_CONSOLE_PORT"):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{env[port]}/healthz")
    # without --console the same address is the product's to choose: it gets past that check
    # (and stops at the next missing setting)
    plain = subprocess.run([sys.executable, "-m", "iia.serve"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0
    assert "security console" not in plain.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1"])
def test_a_loopback_address_may_serve_the_console(host: str) -> None:
    check_console_bind(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "localhost", "example.com", ""])  # noqa: S104
def test_any_other_address_may_not(host: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(f"IIA_BIND is {host!r}")):
        check_console_bind(host)
