"""Run the ASGI app on uvicorn: worker processes (``serve``) or a thread (demo, tests)."""

from __future__ import annotations

import asyncio
import inspect
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette

from hubreturns.committer import CONNECTIONS_STATE_KEY

__all__ = [
    "HTTP_PROTOCOL",
    "OneWritePerTurn",
    "WorkerListener",
    "free_port",
    "run_workers",
    "running_server",
    "spreads_connections",
]


class OneWritePerTurn(asyncio.Transport):
    """A transport whose writes made during one turn of the event loop leave as one send.

    uvicorn writes a response's head and its body with two ``transport.write``
    calls, and uvloop sends each at once: two system calls and two TCP
    segments per answer, and the client is woken twice. Here the writes are
    joined and sent by a callback at the end of the turn (microseconds later).
    Measured on the bare route of ``benchmarks/floor.py`` (1 worker, wrk):
    17,000-18,000 -> 20,500-24,000 req/s, server CPU 54-58 -> 41-48 µs a
    request. Everything else is the wrapped transport's; ``close`` and
    ``write_eof`` send what is pending first, ``abort`` drops it.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes | bytearray | memoryview] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return  # as the transport itself would: nothing is sent after close
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn's own choice (h11)
    HTTP_PROTOCOL = "auto"
else:

    class OneWriteHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol over ``OneWritePerTurn`` (``--http`` takes a class)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(OneWritePerTurn(transport, self.loop))
            # The worker's open connections, for the committer's hold
            # (``Committer._all_in``); each request's scope["state"] carries it.
            self.app_state.setdefault(CONNECTIONS_STATE_KEY, self.connections)

    #: What ``serve`` and ``running_server`` give uvicorn as ``http``.
    HTTP_PROTOCOL = "hubreturns.serving:OneWriteHttpToolsProtocol"


def spreads_connections() -> bool:
    """Whether the kernel balances new connections over sockets sharing a port (Linux)."""
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


class WorkerListener(socket.socket):
    """host:port held by the supervisor and bound again by each worker for itself.

    uvicorn's supervisor hands its workers one shared listening socket. When a
    burst of connections arrives (a client pool opening, wrk's 32), whichever
    worker wakes first accepts nearly all of them, and keep-alive keeps them
    there: 29 of 32 on one worker was seen, at 40 % of the balanced throughput.
    This socket pickles (workers are spawned) as "bind a new SO_REUSEPORT socket
    to my address", so each worker listens on its own socket and the kernel
    assigns every new connection to one of them by a hash of its addresses.

    The supervisor's own socket is bound but never listens: it only reserves the
    port. Any process of the same user could join the group with SO_REUSEPORT
    and take a share of the connections; ``reserve`` refuses a port that is
    already in use, so a second ``serve`` started by mistake fails instead.
    """

    @classmethod
    def reserve(cls, host: str, port: int) -> WorkerListener:
        """Bind ``host:port`` (0: any free port); ``OSError`` if anything else holds it."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # A bind without SO_REUSEPORT fails if any socket has the port: a listener,
        # or another reservation (which has no SO_REUSEADDR for exactly this).
        # SO_REUSEADDR lets it past connections of a stopped server in TIME_WAIT.
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
            port = probe.getsockname()[1]
        sock = cls(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return _bind_for_worker, (int(self.family), self.getsockname()[:2])


def _bind_for_worker(family: int, address: tuple[str, int]) -> socket.socket:
    """Called in the worker as it unpickles its listener (uvicorn then listens on it)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted worker
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    return sock


def run_workers(config: uvicorn.Config) -> None:
    """``uvicorn.run`` for ``config.workers`` > 1, but with a listener per worker.

    uvicorn's supervisor is kept as it is (restarts, health checks, signals);
    only the socket it hands to workers is ours (``WorkerListener``).
    """
    from uvicorn.supervisors import Multiprocess

    listener = WorkerListener.reserve(config.host, config.port)
    server = uvicorn.Server(config)
    # Older uvicorn releases take the workers' entry point; newer ones make their own.
    extra: dict[str, Any] = {}
    if "target" in inspect.signature(Multiprocess).parameters:
        extra["target"] = server.run
    try:
        Multiprocess(config, sockets=[listener], **extra).run()
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(app: Starlette, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` over real HTTP until the block ends; yields the base URL."""
    port = port or free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="on", http=HTTP_PROTOCOL
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP server did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
