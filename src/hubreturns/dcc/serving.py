"""Run the ASGI app on uvicorn: worker processes (``serve``) or a thread (demo, tests)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import uvicorn
from starlette.applications import Starlette

from hubreturns.dcc.config import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    ConfigError,
    Settings,
)

__all__ = [
    "CONNECTIONS_STATE_KEY",
    "EDGE_LIMITS_STATE_KEY",
    "HTTP_PROTOCOL",
    "MAX_HEAD_BYTES",
    "EdgeLimits",
    "OneWritePerTurn",
    "WorkerListener",
    "free_port",
    "run_workers",
    "running_server",
    "spreads_connections",
    "uvicorn_options",
]

#: Where the app's lifespan state carries the worker's ``EdgeLimits`` to the protocol.
EDGE_LIMITS_STATE_KEY = "hubreturns.edge_limits"
#: Where the protocol puts, in the app's lifespan state, the set of the worker's open
#: connections: the DUIS endpoint reports their number to the committer (``Load``).
CONNECTIONS_STATE_KEY = "hubreturns.connections"


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeLimits:
    """Connection-level limits a worker enforces (settings ``header_timeout_s`` ...)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            header_timeout=settings.header_timeout_s,
            idle_timeout=settings.idle_timeout_s,
            max_connections=settings.max_connections,
        )


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn ``Config`` options that come from settings: keep-alive and TLS.

    ``timeout_keep_alive`` closes a connection silent after an answer; the
    protocol below covers what uvicorn does not (see ``OneWriteHttpToolsProtocol``).
    The TLS files are loaded once here so that a wrong path or a key that is not
    the certificate's is a ``ConfigError`` at start, not a worker that dies.
    """
    options: dict[str, Any] = {"timeout_keep_alive": settings.idle_timeout_s}
    if settings.tls_cert is None:
        return options
    check_tls(settings)
    options.update(ssl_certfile=str(settings.tls_cert), ssl_keyfile=str(settings.tls_key))
    if settings.tls_client_ca is not None:
        options.update(ssl_ca_certs=str(settings.tls_client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
    return options


def check_tls(settings: Settings) -> None:
    """Load the TLS files as uvicorn will; a ``ConfigError`` naming the setting if one fails."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load tls_cert {settings.tls_cert} with tls_key {settings.tls_key} ({exc}); "
            "set both to PEM files: the certificate chain and its own private key"
        ) from None
    if settings.tls_client_ca is not None:
        try:
            context.load_verify_locations(str(settings.tls_client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load tls_client_ca {settings.tls_client_ca} ({exc}); set it to the PEM "
                "certificate(s) of the CA that issues the Service Users' TLS certificates"
            ) from None


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


class _Sweeper:
    """One timer per event loop that closes the connections past their deadline.

    Why not a timer per connection: arming and cancelling one for every
    request costs more than the check it makes; a sweep every half second over
    the open connections costs nothing per request and closes a connection
    within half a second of its deadline.
    """

    EVERY = 0.5
    __slots__ = ("handle", "loop", "watched")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watched: set[_Guarded] = set()
        self.handle: asyncio.TimerHandle | None = None

    def watch(self, connection: _Guarded) -> None:
        self.watched.add(connection)
        if self.handle is None:
            self.handle = self.loop.call_later(self.EVERY, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for connection in [c for c in self.watched if c.deadline is not None]:
            if connection.deadline is not None and connection.deadline <= now:
                connection.expire()
        self.handle = self.loop.call_later(self.EVERY, self._sweep) if self.watched else None


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
    weakref.WeakKeyDictionary()
)


class _Guarded(Protocol):
    """What the sweeper sees of a connection (``OneWriteHttpToolsProtocol``)."""

    deadline: float | None

    def expire(self) -> None: ...


#: The answer to a connection beyond ``max_connections`` (then it is closed).
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 28\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    b"too many connections, retry\n"
)
#: A refused connection's head is read up to here, then answered anyway.
_REFUSED_HEAD_MAX = 16 * 1024
#: A request head (request line and headers) may be this long, give or take one
#: read; a longer one is answered 431 and the connection closed. uvicorn sets no
#: limit with httptools (16 MB of headers were taken); h11's default is 16 KiB.
MAX_HEAD_BYTES = 64 * 1024
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
    b"connection: close\r\n\r\n"
)

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn's own choice (h11)
    HTTP_PROTOCOL = "auto"
else:

    class OneWriteHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol over ``OneWritePerTurn`` (``--http`` takes a class).

        It also enforces the connection limits (``EdgeLimits``) uvicorn lacks
        (issue 21 §2; uvicorn 0.55 read for this):

        - a deadline for a whole request head: uvicorn has none, and a client
          sending a byte every 0.2 s held its connection for ever. The parser's
          own callbacks (``on_message_begin`` / ``on_headers_complete``) mark a
          head's start and end; the body has its deadline in ``service``.
        - an idle timeout for a connection that has sent nothing yet: uvicorn's
          ``timeout_keep_alive`` (set to ``idle_timeout_s``) only starts after
          a first answer.
        - a cap on a request head's size (``MAX_HEAD_BYTES``): uvicorn's
          ``h11_max_incomplete_event_size`` does not apply to httptools.
        - a cap on open connections that refuses only the new ones: uvicorn's
          ``limit_concurrency`` answers 503 to every request, on every
          connection, once the count is reached, so the connections already
          served would be refused too.

        httptools is a dependency; without it uvicorn picks h11 and these
        limits are missing (``serve`` refuses to start then).
        """

        _refused: bytearray | None = None
        #: Bytes received since the current request head began; None between heads.
        _head_bytes: int | None = None
        deadline: float | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(OneWritePerTurn(transport, self.loop))
            # The worker's open connections, for the committer's load signal
            # (``flushing.Load``); each request's scope["state"] carries it.
            self.app_state.setdefault(CONNECTIONS_STATE_KEY, self.connections)
            self.limits: EdgeLimits = self.app_state.get(EDGE_LIMITS_STATE_KEY, EdgeLimits())
            if len(self.connections) > self.limits.max_connections:
                self._refused = bytearray()  # answered 503 once its head is in
                self.deadline = self.loop.time() + self.limits.header_timeout
            else:
                self.deadline = self.loop.time() + self.limits.idle_timeout
            sweeper = _SWEEPERS.get(self.loop)
            if sweeper is None:
                sweeper = _SWEEPERS[self.loop] = _Sweeper(self.loop)
            self.sweeper = sweeper
            sweeper.watch(self)

        def connection_lost(self, exc: Exception | None) -> None:
            self.sweeper.watched.discard(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused is not None:
                self._refuse(data)
                return
            if self._head_bytes is not None:  # the read a head began in is not counted
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._answer_and_close(_TOO_LARGE)
                    return
            super().data_received(data)

        def _answer_and_close(self, answer: bytes) -> None:
            self._head_bytes = None
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

        def _refuse(self, data: bytes) -> None:
            assert self._refused is not None
            self._refused += data
            if b"\r\n\r\n" in self._refused or len(self._refused) > _REFUSED_HEAD_MAX:
                self._refused.clear()
                self._answer_and_close(_REFUSAL)

        def on_message_begin(self) -> None:
            self.deadline = self.loop.time() + self.limits.header_timeout
            self._head_bytes = 0
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            # Idle between requests is uvicorn's ``timeout_keep_alive`` from here on.
            self.deadline = self._head_bytes = None
            super().on_headers_complete()

        def expire(self) -> None:
            """Past its deadline: closed without an answer (no request to answer yet)."""
            self.deadline = None
            self.sweeper.watched.discard(self)
            if not self.transport.is_closing():
                self.transport.close()

    #: What ``serve`` and ``running_server`` give uvicorn as ``http``.
    HTTP_PROTOCOL = "hubreturns.dcc.serving:OneWriteHttpToolsProtocol"


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
    try:
        Multiprocess(config, sockets=[listener]).run()
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
    """Serve ``app`` over real HTTP(S) until the block ends; yields the base URL.

    Keep-alive and TLS come from the settings ``create_app`` was given.
    """
    port = port or free_port(host)
    settings = getattr(app.state, "settings", None) or Settings()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="on",
            http=HTTP_PROTOCOL,
            **uvicorn_options(settings),
        )
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the HTTP server did not start on {host}:{port}")
        time.sleep(0.01)
    scheme = "https" if settings.tls else "http"
    try:
        yield f"{scheme}://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
