"""`iia.net.inherited_sockets`: the systemd socket-activation protocol (sd_listen_fds(3)) by
which a supervisor hands a child its listening sockets (LISTEN_FDS descriptors from fd 3,
LISTEN_FDNAMES, LISTEN_PID).

The refusals are checked in this process with environments that stop before any descriptor is
touched; what touches descriptors 3.. runs in a child that received them (tests/zone_processes)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from harness.net import bind_loopback
from iia.errors import ConfigurationError
from iia.net import inherited_sockets
from tests.zone_processes import clean_env, spawn

ME = str(os.getpid())
PROBE = """
import json, os, socket, sys
from iia.errors import ConfigurationError
from iia.net import inherited_sockets
try:
    got = inherited_sockets()
except ConfigurationError as exc:
    print(json.dumps({"error": exc.description})); sys.exit(0)
print(json.dumps({"pid": os.getpid(), "listen_pid": os.environ.get("LISTEN_PID"),
    "sockets": {name: {"fd": s.fileno(), "port": s.getsockname()[1],
                       "blocking": s.getblocking(), "inheritable": s.get_inheritable(),
                       "accepts": bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))}
                for name, s in got.items()}}))
"""


def test_no_handover_is_no_sockets() -> None:
    assert inherited_sockets({}) == {}
    assert inherited_sockets({"LISTEN_FDS": "", "LISTEN_FDNAMES": "mcp"}) == {}


def test_sockets_meant_for_another_process_are_not_ours() -> None:
    """sd_listen_fds returns 0 when LISTEN_PID is not ours, before reading LISTEN_FDS: a
    child that inherited its parent's variables must not take descriptors 3.. as sockets."""
    other = str(os.getppid())
    assert inherited_sockets({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b",
                              "LISTEN_PID": other}) == {}
    assert inherited_sockets({"LISTEN_FDS": "nonsense", "LISTEN_PID": other}) == {}


@pytest.mark.parametrize(("env", "sentence"), [
    ({"LISTEN_FDS": "two"}, "LISTEN_FDS must be the number of sockets handed over (1 or more), "
                            "got 'two'"),
    ({"LISTEN_FDS": "0"}, "LISTEN_FDS must be the number of sockets handed over (1 or more), "
                          "got '0'"),
    ({"LISTEN_FDS": "-1"}, "got '-1'"),
    ({"LISTEN_FDS": " 1"}, "got ' 1'"),
    ({"LISTEN_FDS": "1", "LISTEN_PID": "me"}, "LISTEN_PID must be a process id, got 'me'"),
    ({"LISTEN_FDS": "1", "LISTEN_PID": "0"}, "LISTEN_PID must be a process id, got '0'"),
    ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "mcp", "LISTEN_PID": ME},
     "LISTEN_FDNAMES names 1 sockets ('mcp') but LISTEN_FDS is 2"),
    ({"LISTEN_FDS": "1", "LISTEN_FDNAMES": "mcp:chat", "LISTEN_PID": ME},
     "LISTEN_FDNAMES names 2 sockets ('mcp:chat') but LISTEN_FDS is 1"),
    ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "mcp:mcp", "LISTEN_PID": ME},
     "LISTEN_FDNAMES names more than one socket 'mcp'"),
    ({"LISTEN_FDS": "2", "LISTEN_PID": ME}, "LISTEN_FDNAMES names more than one socket "
                                            "'unknown'"),
])
def test_a_malformed_handover_is_a_configuration_error(env: dict[str, str],
                                                       sentence: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        inherited_sockets(env)
    assert sentence in err.value.description
    assert err.value.code == "invalid_configuration"


def _probe(tmp_path: Path, **handed: socket.socket | int) -> dict[str, object]:
    sockets = {n: s for n, s in handed.items() if isinstance(s, socket.socket)}
    fds = {n: s for n, s in handed.items() if isinstance(s, int)}
    log = tmp_path / "probe.log"
    proc = spawn(["-c", PROBE], clean_env(), log, sockets=sockets, fds=fds)
    assert proc.wait(timeout=60) == 0, log.read_text()
    result: dict[str, object] = json.loads(log.read_text().strip().splitlines()[-1])
    return result


def test_handed_over_sockets_come_by_name_from_fd_3(tmp_path: Path) -> None:
    first, second = bind_loopback(), bind_loopback()
    ports = first.getsockname()[1], second.getsockname()[1]
    with first, second:
        got = _probe(tmp_path, chat=first, mcp=second)
    assert got["listen_pid"] == str(got["pid"])  # the exec wrapper's LISTEN_PID is the child's
    assert got["sockets"] == {
        "chat": {"fd": 3, "port": ports[0], "blocking": False,
                 "inheritable": False, "accepts": True},
        "mcp": {"fd": 4, "port": ports[1], "blocking": False,
                "inheritable": False, "accepts": True}}


def test_a_descriptor_that_is_no_listening_socket_is_refused(tmp_path: Path) -> None:
    read, write = os.pipe()
    try:
        got = _probe(tmp_path, mcp=read)
    finally:
        os.close(read)
        os.close(write)
    assert got == {"error": "handed-over descriptor 3 (mcp) is not a socket: "
                            "Socket operation on non-socket"}
    unbound = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with unbound:
        got = _probe(tmp_path, mcp=unbound)
    assert got == {"error": "handed-over descriptor 3 (mcp) is not a listening stream socket"}
