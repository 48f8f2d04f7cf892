"""How our HTTP servers listen: one place for the socket and the keep-alive policy, used by
`python -m iia.serve` and by the lab harness (which may import iia; never the reverse)."""

from __future__ import annotations

import socket

import uvicorn
from starlette.types import ASGIApp

from iia.http_edge import EdgeGuard

__all__ = ["KEEP_ALIVE_S", "listening_socket", "server_config"]

# seconds an idle keep-alive connection stays open on our servers: longer than clients pool
# them (httpx: 5 s), so a client never reuses a connection at the instant the server closes it
# (a "connection reset" under load)
KEEP_ALIVE_S = 30


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


def server_config(app: ASGIApp, *, lifespan: bool = False, log_level: str = "warning",
                  graceful_shutdown_s: int = 2) -> uvicorn.Config:
    """The uvicorn configuration every server of ours and of the lab runs with: the keep-alive
    above, and the edge guard in front of the app (`iia.http_edge`)."""
    return uvicorn.Config(EdgeGuard(app), log_level=log_level, access_log=False,
                          lifespan="on" if lifespan else "off", timeout_keep_alive=KEEP_ALIVE_S,
                          timeout_graceful_shutdown=graceful_shutdown_s)
