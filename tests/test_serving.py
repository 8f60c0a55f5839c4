"""How the service is put on the wire.

``hubreturns serve --workers N`` listens on one SO_REUSEPORT socket per
worker: the listeners are made the way uvicorn's supervisor makes them reach a
worker (pickled by multiprocessing); the kernel then spreads connections over
them. Every server (``serve``, ``running_server``) sends a response's head and
body in one write (``OneWritePerTurn``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest
from conftest import SERVE_ENV
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hubreturns.dcc.serving import (
    OneWritePerTurn,
    WorkerListener,
    running_server,
    spreads_connections,
)

linux_only = pytest.mark.skipif(not spreads_connections(), reason="SO_REUSEPORT spreading is Linux")

SCRIPT = Path(sys.executable).with_name("hubreturns")


def _in_worker(reserved: WorkerListener) -> socket.socket:
    """The listener a spawned worker gets for ``reserved``."""
    sock: socket.socket = ForkingPickler.loads(bytes(ForkingPickler.dumps(reserved)))
    return sock


def _accept_all(listener: socket.socket) -> int:
    listener.setblocking(False)
    accepted = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return accepted
        conn.close()
        accepted += 1


@linux_only
def test_each_worker_listens_on_its_own_socket_and_a_burst_is_spread() -> None:
    reserved = WorkerListener.reserve("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    workers = [_in_worker(reserved) for _ in range(2)]
    clients: list[socket.socket] = []
    try:
        for sock in workers:
            assert sock is not reserved
            assert not isinstance(sock, WorkerListener)
            assert sock.getsockname() == ("127.0.0.1", port)
            sock.listen(128)
        # A burst, as a client pool opening: on one shared socket, whichever
        # worker woke first could take all of it.
        for _ in range(64):
            client = socket.create_connection(("127.0.0.1", port), timeout=5)
            clients.append(client)
        counts = [_accept_all(sock) for sock in workers]
        assert sum(counts) == 64
        assert min(counts) > 0, counts  # all 64 on one side: chance 2**-63
    finally:
        for s in (*clients, *workers, reserved):
            s.close()


@linux_only
def test_a_port_in_use_is_refused_even_by_another_reservation() -> None:
    first = WorkerListener.reserve("127.0.0.1", 0)
    port = first.getsockname()[1]
    try:
        with pytest.raises(OSError, match="in use"):
            WorkerListener.reserve("127.0.0.1", port)  # a second serve on the same port
    finally:
        first.close()
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        with pytest.raises(OSError, match="in use"):
            WorkerListener.reserve("127.0.0.1", plain.getsockname()[1])
    again = WorkerListener.reserve("127.0.0.1", port)  # free once the first is closed
    again.close()


@linux_only
def test_serve_with_workers_on_a_taken_port_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    env["HUBRETURNS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'serve.db'}"
    env |= SERVE_ENV
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(SCRIPT), "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "hint: Is another server on that port?" in done.stderr


# -- one write per answer -------------------------------------------------------------


class _Recording(asyncio.Transport):
    """What reaches the socket: each write, and whether the transport was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_write_buffer_size(self) -> int:
        return 0


def _turn(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(0))


def test_writes_in_one_turn_of_the_loop_leave_as_one_send() -> None:
    loop = asyncio.new_event_loop()
    try:
        inner = _Recording()
        transport = OneWritePerTurn(inner, loop)
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        transport.write(b"")
        transport.write(b"body")
        assert inner.sent == []
        assert transport.get_write_buffer_size() == 42
        _turn(loop)
        assert inner.sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"]
        transport.write(b"next")  # a later turn: a send of its own
        _turn(loop)
        assert inner.sent[1:] == [b"next"]
        _turn(loop)
        assert len(inner.sent) == 2
    finally:
        loop.close()


def test_close_sends_what_is_pending_first_and_abort_drops_it() -> None:
    loop = asyncio.new_event_loop()
    try:
        closed, aborted = _Recording(), _Recording()
        one, two = OneWritePerTurn(closed, loop), OneWritePerTurn(aborted, loop)
        one.write(b"last words")
        one.close()
        two.write(b"never sent")
        two.abort()
        assert (closed.sent, closed.closed) == ([b"last words"], True)
        _turn(loop)  # the flush scheduled by the first write finds nothing left
        assert closed.sent == [b"last words"]
        assert (aborted.sent, aborted.aborted) == ([], True)
        assert one.is_closing()
        assert two.is_closing()
    finally:
        loop.close()


def test_a_real_server_answers_whole_responses_over_keep_alive() -> None:
    """Through ``running_server`` (as every HTTP test here): head and body arrive
    intact, request after request on one connection."""

    async def echo(request: Request) -> Response:
        body = await request.body()
        return Response(body[::-1], media_type="text/plain", headers={"X-Echo": str(len(body))})

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    with running_server(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            reader = conn.makefile("rb")
            for payload in (b"abc", b"x" * 70_000, b"last"):
                conn.sendall(
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                status = reader.readline()
                headers = {}
                while (line := reader.readline()) != b"\r\n":
                    name, _, value = line.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers["content-length"]))
                assert status.startswith(b"HTTP/1.1 200")
                assert headers["x-echo"] == str(len(payload))
                assert body == payload[::-1]
