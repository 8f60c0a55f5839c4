"""The HTTP edge under hostile clients (issue 21 §2 and §4), over real sockets.

Connection limits: a request head has a deadline, a silent connection is
closed, and beyond ``max_connections`` a new connection is answered 503 while
the open ones are still served. Redirects: none at all, so a forged Host header
is never echoed back; an unknown path is a plain 404.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.codes import ResponseCode
from hubreturns.dcc.config import Settings
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.service import create_app
from hubreturns.dcc.serving import MAX_HEAD_BYTES, running_server
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import SCENARIOS, DemoWorld, Scenario, scenario_bodies

#: A head that cannot be complete within a few seconds at one byte per 0.2 s.
SLOW_HEAD = (
    b"POST /api/v1/serviceD HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/xml\r\nContent-Length: 10\r\n\r\n"
)


#: Every scenario the service accepts (I99), each for a hub of its own.
ACCEPTED: tuple[Scenario, ...] = tuple(s for s in SCENARIOS if s.expected is ResponseCode.I99)


def _bodies(world: DemoWorld) -> list[bytes]:
    """A valid signed request for each of ``ACCEPTED`` (counters rise per sender)."""
    return [body for _, body in scenario_bodies(world, ACCEPTED)]


@contextmanager
def _serve(processor: Processor, settings: Settings, **limits: Any) -> Iterator[tuple[str, int]]:
    with running_server(create_app(processor, replace(settings, **limits))) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def _request(body: bytes, host: bytes = b"127.0.0.1") -> bytes:
    return (
        b"POST /api/v1/serviceD HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Content-Type: application/xml\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length, read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def _closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reads nothing else); fails after ``limit``."""
    start = time.monotonic()
    sock.settimeout(limit)
    with suppress(ConnectionResetError, BrokenPipeError):
        assert sock.recv(1) == b"", "the server answered instead of closing"
    return time.monotonic() - start


def _count(sessions: sessionmaker[Session], model: type[AuditEntry] | type[ReturnRecord]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


# -- connection limits (§2) ----------------------------------------------------------------


def test_a_head_sent_a_byte_every_0_2_s_is_closed_within_the_deadline_plus_1_s(
    processor: Processor, settings: Settings, seeded: sessionmaker[Session]
) -> None:
    with (
        _serve(processor, settings, header_timeout_s=1.0, idle_timeout_s=30.0) as address,
        socket.create_connection(address, timeout=10) as sock,
    ):
        start = time.monotonic()
        sent = 0
        closed = False
        while not closed and sent < len(SLOW_HEAD):
            try:
                sock.sendall(SLOW_HEAD[sent : sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += 1
            sock.settimeout(0.2)
            try:
                closed = sock.recv(1) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
        elapsed = time.monotonic() - start
    assert sent < len(SLOW_HEAD), "the whole slow head was accepted"
    assert 0.9 <= elapsed <= 2.0, f"closed after {elapsed:.2f} s (deadline 1 s)"
    assert _count(seeded, AuditEntry) == 0


def test_a_connection_that_sends_nothing_is_closed(
    processor: Processor, settings: Settings
) -> None:
    with (
        _serve(processor, settings, idle_timeout_s=1.0, header_timeout_s=30.0) as address,
        socket.create_connection(address, timeout=10) as sock,
    ):
        elapsed = _closed_after(sock, limit=5)
    assert 0.9 <= elapsed <= 2.0, f"closed after {elapsed:.2f} s (idle timeout 1 s)"


def test_a_connection_silent_after_an_answer_is_closed(
    processor: Processor, settings: Settings, world: DemoWorld
) -> None:
    with (
        _serve(processor, settings, idle_timeout_s=1.0) as address,
        socket.create_connection(address, timeout=10) as sock,
    ):
        sock.sendall(_request(_bodies(world)[0]))
        status, _, answer = _read_response(sock)
        assert status == 200
        assert read_response(answer, world.dcc_certificates()).code == "I99"
        elapsed = _closed_after(sock, limit=5)
    assert elapsed <= 2.0, f"closed after {elapsed:.2f} s (idle timeout 1 s)"


def test_beyond_the_cap_a_new_connection_gets_503_and_open_ones_are_still_served(
    processor: Processor, settings: Settings, world: DemoWorld, seeded: sessionmaker[Session]
) -> None:
    bodies = _bodies(world)
    with _serve(processor, settings, max_connections=3, idle_timeout_s=30.0) as address:
        served = socket.create_connection(address, timeout=10)
        held = [socket.create_connection(address, timeout=10) for _ in range(2)]
        try:
            served.sendall(_request(bodies[0]))
            assert _read_response(served)[0] == 200
            with socket.create_connection(address, timeout=10) as extra:
                extra.sendall(_request(bodies[1]))
                status, headers, text = _read_response(extra)
                assert status == 503
                assert headers["connection"] == "close"
                assert headers["retry-after"] == "1"
                assert b"too many connections" in text
                assert _closed_after(extra, limit=5) < 2
            # the open connections are still served, while the refused one is open or not
            served.sendall(_request(bodies[2]))
            status, _, answer = _read_response(served)
            assert status == 200
            assert read_response(answer, world.dcc_certificates()).code == "I99"
            held.pop().close()  # room again: a new connection is served
            deadline = time.monotonic() + 10
            while True:
                with socket.create_connection(address, timeout=10) as again:
                    again.sendall(_request(bodies[3]))
                    status = _read_response(again)[0]
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)  # the server has not seen the close yet
            assert status == 200
        finally:
            served.close()
            for sock in held:
                sock.close()
    # three answered requests, each audited and recorded; the refused one left no trace
    assert _count(seeded, AuditEntry) == 3
    assert _count(seeded, ReturnRecord) == 3


def test_a_head_over_the_size_cap_is_answered_431_and_closed(
    processor: Processor, settings: Settings
) -> None:
    line = b"X-Filler: " + b"a" * 7990 + b"\r\n"  # 8,002 bytes a header
    with _serve(processor, settings) as address, socket.create_connection(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for _ in range(MAX_HEAD_BYTES // len(line) + 1):
            time.sleep(0.02)  # separate reads on the server
            sock.sendall(line)
        status, headers, _ = _read_response(sock)
        assert status == 431
        assert headers["connection"] == "close"
        assert _closed_after(sock, limit=5) < 1
    # a large head below the cap is served
    with _serve(processor, settings) as address, socket.create_connection(address) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + line * 5 + b"\r\n")
        assert _read_response(sock)[0] == 200


def test_limits_have_documented_defaults() -> None:
    settings = Settings(allow_test_keys=True)
    assert (settings.header_timeout_s, settings.idle_timeout_s) == (10.0, 10.0)
    assert settings.max_connections == 512


# -- no redirects, plain 404 (§4) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/serviceD/"),
        ("POST", "/api/v1/serviceS/"),
        ("GET", "/healthz/"),
        ("GET", "/metrics/"),
        ("GET", "/api/ops/openapi.json/"),
        ("GET", "/api/v1/serviceD/"),
    ],
)
def test_a_trailing_slash_is_a_plain_404_never_a_redirect_to_the_host_header(
    processor: Processor,
    settings: Settings,
    world: DemoWorld,
    seeded: sessionmaker[Session],
    method: str,
    path: str,
) -> None:
    with _serve(processor, settings) as address, socket.create_connection(address) as sock:
        body = _bodies(world)[0]
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: evil.example\r\n".encode()
            + b"Content-Type: application/xml\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, headers, text = _read_response(sock)
    assert status == 404, (status, headers)
    assert "location" not in headers
    assert "evil.example" not in repr(headers) + text.decode("utf-8", "replace")
    assert _count(seeded, AuditEntry) == 0


def test_an_unknown_path_is_a_plain_404(processor: Processor, settings: Settings) -> None:
    with _serve(processor, settings) as address, socket.create_connection(address) as sock:
        sock.sendall(b"GET /no/such/thing HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        status, headers, text = _read_response(sock)
    assert (status, text) == (404, b"Not Found")
    assert headers["content-type"].startswith("text/plain")


def test_the_desk_sends_anonymous_visitors_to_sign_in_by_a_relative_url(
    processor: Processor, settings: Settings
) -> None:
    """The desk's one redirect (to sign-in) names no host, so a forged Host goes nowhere."""
    with _serve(processor, settings) as address, socket.create_connection(address) as sock:
        sock.sendall(b"GET /desk/returns/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        status, headers, _ = _read_response(sock)
    assert status == 303
    assert headers["location"].startswith("/desk/login")
