"""How ``hubreturns serve --workers N`` listens: one SO_REUSEPORT socket per worker.

The listeners are made the way uvicorn's supervisor makes them reach a worker
(pickled by multiprocessing); the kernel then spreads connections over them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest

from hubreturns.serving import WorkerListener, spreads_connections

pytestmark = pytest.mark.skipif(not spreads_connections(), reason="SO_REUSEPORT spreading is Linux")

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


def test_serve_with_workers_on_a_taken_port_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBRETURNS_")}
    env["HUBRETURNS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'serve.db'}"
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
