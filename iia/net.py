"""How our HTTP servers listen, and how our clients call out: one place for the socket and the
keep-alive policy, used by `python -m iia.serve` and by the lab harness (which may import iia;
never the reverse).

Servers run on uvloop's event loop and httptools' HTTP/1.1 parser where they are installed
(`EVENT_LOOP`, `HTTP_PARSER`; uvicorn's pure-Python h11 and asyncio's loop otherwise). Clients
(`http_client`) keep connections alive in a pool as large as the MCP server's concurrent calls
and take nothing from the environment (`trust_env` off: no proxy or CA variables, no
`~/.netrc`): every upstream is named by a setting.

A supervisor may hand the listening sockets over instead (`inherited_sockets`: the systemd
socket-activation protocol, `sd_listen_fds(3)`), so that a restarted process serves the same
port and the connections made meanwhile wait in the socket's backlog."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
from collections.abc import Coroutine, Mapping
from typing import Any, Literal, TypeVar

import httpx
import uvicorn
from starlette.types import ASGIApp

from iia.errors import ConfigurationError
from iia.http_edge import EdgeGuard

__all__ = ["CLIENT_KEEP_ALIVE_S", "CLIENT_POOL", "EVENT_LOOP", "HTTP_PARSER", "KEEP_ALIVE_S",
           "LISTEN_FDS_START", "http_client", "inherited_sockets", "listening_socket", "run_loop",
           "server_config"]

T = TypeVar("T")

# seconds an idle keep-alive connection stays open on our servers: longer than clients pool
# them (httpx: 5 s), so a client never reuses a connection at the instant the server closes it
# (a "connection reset" under load)
KEEP_ALIVE_S = 30

# our clients: idle connections kept per pool (one pool per upstream client), and for how long
# (shorter than any server of ours keeps them, KEEP_ALIVE_S)
CLIENT_POOL = 64
CLIENT_KEEP_ALIVE_S = 5.0

# the event loop and HTTP/1.1 parser our servers run on: the C implementations when installed
EVENT_LOOP: Literal["uvloop", "asyncio"] = \
    "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"
HTTP_PARSER: Literal["httptools", "h11"] = \
    "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def http_client(timeout: float, *, pool: int = CLIENT_POOL) -> httpx.Client:
    """A client for one upstream: keep-alive connections (up to `pool` idle ones), nothing from
    the environment. Its owner closes it."""
    return httpx.Client(timeout=timeout, trust_env=False,
                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=pool,
                                            keepalive_expiry=CLIENT_KEEP_ALIVE_S))


def run_loop(main: Coroutine[Any, Any, T], *, loop: str = EVENT_LOOP) -> T:
    """Run `main` to completion on a new event loop of kind `loop` (uvloop or asyncio)."""
    if loop == "uvloop":
        import uvloop  # at start-up, and only where it is installed (not on Windows)

        return uvloop.run(main)
    return asyncio.run(main)


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket (port 0: the kernel picks a free one).

    The protocol is named (IPPROTO_TCP, not 0) so that asyncio sets TCP_NODELAY on the accepted
    connections (`base_events._set_nodelay` checks `sock.proto`); otherwise Nagle's algorithm
    and the peer's delayed ACK add about 40 ms to every response written in two parts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START: the first handed-over descriptor


def inherited_sockets(environ: Mapping[str, str] | None = None) -> dict[str, socket.socket]:
    """The listening sockets handed to this process, by name (systemd's socket activation:
    `LISTEN_FDS=N` descriptors from fd 3, named by `LISTEN_FDNAMES=a:b:...`).

    Empty when `LISTEN_FDS` is unset, or when `LISTEN_PID` is set and names another process
    (the variables were meant for a parent; `sd_listen_fds` returns 0 then too). A malformed
    variable, a name count that does not match, a name given twice, or a descriptor that is not a
    listening stream socket is a ConfigurationError. The sockets come back non-blocking and
    close-on-exec; they own their descriptors, so call this once per process."""
    env = os.environ if environ is None else environ
    count = env.get("LISTEN_FDS")
    if count is None or count == "":
        return {}
    pid = env.get("LISTEN_PID")
    if pid:
        if not pid.isdigit() or int(pid) < 1:
            raise ConfigurationError(f"LISTEN_PID must be a process id, got {pid!r}")
        if int(pid) != os.getpid():
            return {}
    if not count.isdigit() or int(count) < 1:
        raise ConfigurationError(f"LISTEN_FDS must be the number of sockets handed over (1 or "
                                 f"more), got {count!r}")
    n = int(count)
    names = env.get("LISTEN_FDNAMES")
    labels = names.split(":") if names else ["unknown"] * n
    if len(labels) != n:
        raise ConfigurationError(f"LISTEN_FDNAMES names {len(labels)} sockets ({names!r}) but "
                                 f"LISTEN_FDS is {n}")
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigurationError(f"LISTEN_FDNAMES names more than one socket {twice[0]!r}; "
                                 "each handed-over socket needs a name of its own")
    sockets: dict[str, socket.socket] = {}
    for fd, label in enumerate(labels, start=LISTEN_FDS_START):
        sockets[label] = _listening(fd, label)
    return sockets


def _listening(fd: int, label: str) -> socket.socket:
    """The handed-over descriptor `fd` as a socket, if it is a listening stream socket."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigurationError(f"handed-over descriptor {fd} ({label}) is not a socket: "
                                 f"{exc.strerror or exc}") from exc
    if sock.type != socket.SOCK_STREAM \
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()  # not ours to close
        raise ConfigurationError(f"handed-over descriptor {fd} ({label}) is not a listening "
                                 "stream socket")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def server_config(app: ASGIApp, *, lifespan: bool = False, log_level: str = "warning",
                  graceful_shutdown_s: int = 2, http: str = HTTP_PARSER) -> uvicorn.Config:
    """The uvicorn configuration every server of ours and of the lab runs with: the keep-alive
    above, the HTTP/1.1 parser `http` (httptools where installed), and the edge guard in front
    of the app (`iia.http_edge`). The event loop is the caller's (`run_loop`)."""
    return uvicorn.Config(EdgeGuard(app), log_level=log_level, access_log=False,
                          lifespan="on" if lifespan else "off", timeout_keep_alive=KEEP_ALIVE_S,
                          timeout_graceful_shutdown=graceful_shutdown_s, http=http)
