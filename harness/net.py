"""Loopback plumbing shared by the lab's services: free ports, bound sockets, uvicorn servers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from iia.net import listening_socket, server_config

__all__ = ["HttpService", "ServiceLoop", "bind_loopback", "free_port_pair", "reserve_loopback",
           "serve_until_signalled"]

HOST = "127.0.0.1"


def bind_loopback(port: int = 0, host: str = HOST) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (port 0 = the kernel picks a free one); containers
    pass `host="0.0.0.0"` to be reachable on their network. Made like the product's
    (`iia.net.listening_socket`: IPPROTO_TCP, so accepted connections get TCP_NODELAY)."""
    return listening_socket(host, port)


def reserve_loopback() -> socket.socket:
    """A bound, not yet listening, loopback socket: the port is ours, nobody can connect yet.
    Serving it later (uvicorn/asyncio) starts listening. IPPROTO_TCP: see bind_loopback."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.setblocking(False)
    return sock


def free_port_pair() -> int:
    """A port p such that p and p+1 are both free now (OpenBao's dev mode takes p+1 for its
    cluster listener). There is a window before the child binds them; callers retry on failure."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind((HOST, 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind((HOST, port + 1))
                except OSError:
                    continue
            return port
    raise OSError("no pair of adjacent free ports on 127.0.0.1")


class HttpService:
    """An ASGI app served by uvicorn on an already-bound loopback socket, inside a running loop."""

    def __init__(self, name: str, app: ASGIApp, sock: socket.socket | None = None, *,
                 lifespan: bool = False) -> None:
        self.name = name
        self.sock = sock or bind_loopback()
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._server = uvicorn.Server(server_config(app, lifespan=lifespan))
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float | None = 2.5) -> None:
        """Serve, and return once serving (`timeout`: give up after about that many seconds
        of polling; None: wait until it serves or stops, as a process's entry point does)."""
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]),
                                         name=f"http:{self.name}")
        polls = 0
        while timeout is None or polls < timeout / 0.005:
            if self._server.started:
                return
            if self._task.done():
                self._task.result()  # raise what stopped it
                raise RuntimeError(f"{self.name} stopped before it served")
            await asyncio.sleep(0.005)
            polls += 1
        raise TimeoutError(f"{self.name} did not start serving within {timeout:g} s")

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=5)
        with contextlib.suppress(OSError):
            self.sock.close()


class ServiceLoop:
    """An asyncio loop in a background thread that serves HttpServices (for tests and tools
    that need a few servers of their own, outside a Lab)."""

    def __init__(self, name: str = "services") -> None:
        import threading

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._services: list[HttpService] = []

    def run(self, coro: object, timeout: float = 10.0) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)  # type: ignore[arg-type]

    def serve(self, service: HttpService) -> HttpService:
        self.run(service.start())
        self._services.append(service)
        return service

    def stop_service(self, service: HttpService) -> None:
        self.run(service.stop())
        self._services.remove(service)

    def close(self) -> None:
        for service in list(self._services):
            with contextlib.suppress(Exception):
                self.stop_service(service)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ServiceLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def serve_until_signalled(services: list[HttpService], *,
                                tick: Callable[[], object] | None = None) -> None:
    """Run services (a process's entry point) until SIGTERM or SIGINT, then stop them. `tick`
    runs every second meanwhile (key rotation); if it raises, the services stop and the error
    is raised (the process exits with it, and a supervisor restarts it)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    for service in services:
        await service.start(timeout=None)
        print(f"{service.name}: serving on {service.url}", flush=True)  # for the log

    async def ticking() -> None:
        assert tick is not None
        while True:
            await asyncio.sleep(1.0)
            tick()

    async def signalled() -> None:
        await stop.wait()

    waits = [asyncio.create_task(signalled(), name="signal")]
    if tick is not None:
        waits.append(asyncio.create_task(ticking(), name="tick"))
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        for service in reversed(services):
            await service.stop()
    for task in done:
        task.result()  # a tick's error
