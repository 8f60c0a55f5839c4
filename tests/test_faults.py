"""Faults: kill -9 under load, the database going away and coming back, slow clients.

Each test checks the database afterwards: nothing acknowledged that was not
stored, no record without its audit row, replay counters consistent, and the
service answering again by itself. Long versions: ``scripts/crash``,
``scripts/soak``.
"""

from __future__ import annotations

import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import PG_URL, pg_or_skip
from sqlalchemy import Connection, create_engine, event, func, select, text
from sqlalchemy.engine import make_url

from hubreturns.dcc.config import Settings
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.service import build_service, create_app
from hubreturns.dcc.serving import running_server
from hubreturns.dcc.store.db import make_engine, migrate
from hubreturns.dcc.store.models import AuditEntry, ReturnRecord
from hubreturns.demo import seed
from hubreturns.model import Endpoint
from hubreturns.policy import REQUEST_POLICY, SecurityPolicy
from hubreturns.user.client import read_response
from hubreturns.user.scenarios import SCENARIOS, DemoWorld, scenario_bodies

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import reliability

IS_PENDING = next(s for s in SCENARIOS if s.name == "IS fault return, Pending hub")
IS_COMMISSIONED = next(s for s in SCENARIOS if s.name == "IS no-fault return, Commissioned hub")
GS_PENDING = next(s for s in SCENARIOS if s.name == "GS no-fault return, Pending hub")
RSA_PENDING = next(s for s in SCENARIOS if s.name == "RSA for its IS, Pending hub")


def _post(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post(
        "/api/v1/serviceD", content=body, headers={"content-type": "application/xml"}
    )


def _code(reply: httpx.Response, world: DemoWorld) -> str:
    """The signed response's code (verified), which must match the header."""
    code = read_response(reply.content, world.dcc_certificates()).code
    assert reply.headers["x-duis-response-code"] == code
    return code


def _counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            returns = conn.scalar(select(func.count()).select_from(ReturnRecord))
            audit = conn.scalar(select(func.count()).select_from(AuditEntry))
    finally:
        engine.dispose()
    return int(returns or 0), int(audit or 0)


def _seeded_processor(
    url: str, world: DemoWorld, policy: SecurityPolicy | None = None, **engine_kwargs: object
) -> Processor:
    engine = make_engine(url, **engine_kwargs)  # type: ignore[arg-type]
    migrate(engine)
    processor = build_service(
        Settings(database_url=url, allow_test_keys=True), engine=engine, policy=policy
    )
    seed(processor.sessions, world, datetime.now(UTC))
    return processor


# ------------------------------------------------------------------ SQLite locked


def test_locked_sqlite_is_refused_with_e100_and_service_resumes(
    tmp_path: Path, world: DemoWorld
) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    processor = _seeded_processor(url, world, busy_timeout_ms=200)
    bodies = [
        body for _s, body in scenario_bodies(world, [IS_PENDING, IS_COMMISSIONED, GS_PENDING])
    ]
    with running_server(create_app(processor)) as base, httpx.Client(base_url=base) as client:
        assert _code(_post(client, bodies[0]), world) == "I99"  # certificate now cached
        holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            during = [_post(client, body) for body in bodies[1:]]
            processor.certificates.clear()  # the certificate lookup needs the database too
            cold = _post(client, bodies[1])
            health = client.get("/healthz")
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        for reply in [*during, cold]:
            assert reply.status_code == 503
            assert _code(reply, world) == "E100"
        assert health.status_code == 503
        assert _counts(url) == (1, 1)  # nothing acknowledged, nothing stored
        # The database is back: the same requests, resent unchanged, are accepted.
        assert [_code(_post(client, body), world) for body in bodies[1:]] == ["I99", "I99"]
        assert client.get("/healthz").status_code == 200
    assert _counts(url) == (3, 3)


# ------------------------------------------------------------------ PostgreSQL away


class _Proxy:
    """A TCP relay to PostgreSQL that can be cut (server unreachable) and restored."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close the listener and every relayed connection: the server is gone."""
        assert self._listener is not None
        # shutdown wakes the thread blocked in accept(); close alone would not on Linux.
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._listener = None
        with self._lock:
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def _pg_schema() -> Iterator[str]:
    pg_or_skip()
    yield from reliability.pg_schema(PG_URL)


@pytest.mark.postgres
def test_unreachable_postgresql_is_refused_with_e100_and_service_resumes(
    world: DemoWorld,
) -> None:
    with _pg_schema() as direct:
        parsed = make_url(direct)
        proxy = _Proxy((parsed.host or "127.0.0.1", parsed.port or 5432))
        proxy.start()
        relayed = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        )
        migrate_engine = make_engine(direct)
        migrate(migrate_engine)
        migrate_engine.dispose()
        processor = _seeded_processor(relayed, world, connect_args={"connect_timeout": 3})
        bodies = [
            body for _s, body in scenario_bodies(world, [IS_PENDING, GS_PENDING, RSA_PENDING])
        ]
        app = create_app(processor)
        with running_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
            assert _code(_post(client, bodies[0]), world) == "I99"
            proxy.cut()
            during = _post(client, bodies[1])
            processor.certificates.clear()
            cold = _post(client, bodies[2])
            health = client.get("/healthz")
            assert [during.status_code, cold.status_code, health.status_code] == [503] * 3
            assert [_code(during, world), _code(cold, world)] == ["E100", "E100"]
            assert _counts(direct) == (1, 1)
            proxy.start()  # the same port: PostgreSQL is reachable again
            assert [_code(_post(client, b), world) for b in bodies[1:]] == ["I99", "I99"]
            assert client.get("/healthz").status_code == 200
        processor.engine.dispose()
        proxy.cut()
        assert _counts(direct) == (3, 3)


@pytest.mark.postgres
def test_terminated_postgresql_backends_are_replaced_without_a_refusal(
    world: DemoWorld,
) -> None:
    with _pg_schema() as direct:
        name = f"hr_fault_{uuid.uuid4().hex[:8]}"
        url = make_url(direct).update_query_dict({"application_name": name})
        processor = _seeded_processor(url.render_as_string(hide_password=False), world)
        bodies = [body for _s, body in scenario_bodies(world, [IS_PENDING, GS_PENDING])]
        with running_server(create_app(processor)) as base, httpx.Client(base_url=base) as client:
            assert _code(_post(client, bodies[0]), world) == "I99"
            admin = create_engine(PG_URL)
            with admin.begin() as conn:
                killed = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = :name"
                    ),
                    {"name": name},
                ).scalar()
            admin.dispose()
            assert killed
            assert _code(_post(client, bodies[1]), world) == "I99"
        processor.engine.dispose()
        assert _counts(direct) == (2, 2)


# ------------------------------------------------------------------ slow clients


def _trickle(port: int, stop: threading.Event, answers: list[bytes]) -> None:
    """Send headers promising 4000 bytes, then one byte every 0.2 s; keep the answer."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /api/v1/serviceD HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\n"
            b"Content-Length: 4000\r\n\r\n<"
        )
        sock.settimeout(0.2)
        received = b""
        while not stop.is_set():
            try:
                sock.sendall(b"a")
            except OSError:
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
        answers.append(received)


def test_trickling_clients_are_cut_off_and_others_still_served(
    tmp_path: Path, world: DemoWorld
) -> None:
    url = f"sqlite:///{tmp_path / 'slow.db'}"
    policy = replace(REQUEST_POLICY, body_deadline=timedelta(seconds=1))
    processor = _seeded_processor(url, world, policy)
    app = create_app(processor)
    ((_s, body),) = scenario_bodies(world, [IS_PENDING])
    answers: list[bytes] = []
    stop = threading.Event()
    with running_server(app) as base:
        port = int(base.rsplit(":", 1)[1])
        slow = [threading.Thread(target=_trickle, args=(port, stop, answers)) for _ in range(10)]
        for thread in slow:
            thread.start()
        with httpx.Client(base_url=base) as client:
            assert _code(_post(client, body), world) == "I99"
        deadline = time.monotonic() + 20
        while len(answers) < len(slow) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        for thread in slow:
            thread.join()
    assert len(answers) == 10
    for answer in answers:
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert b"x-duis-response-code: e46" in head.lower()
        assert read_response(payload, world.dcc_certificates()).code == "E46"
    with processor.sessions() as session:
        reasons = session.scalars(select(AuditEntry.reason).where(~AuditEntry.accepted)).all()
    assert reasons == ["body not received within 1 s"] * 10
    assert _counts(url) == (1, 11)


# ------------------------------------------------------------------ kill -9


@pytest.mark.parametrize(
    "engine_name", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_kill_9_under_load_loses_nothing_acknowledged(tmp_path: Path, engine_name: str) -> None:
    with _database(engine_name, tmp_path) as url:
        bench = reliability.prepare(url, tmp_path / "bench", clients=3, hubs=60)
        server = reliability.served(url, log=tmp_path / "serve.log")
        told: list[reliability.Told] = []
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=reliability.drive,
                args=(server.url, client, told, stop),
                kwargs={"mix": False},
            )
            for client in bench.clients
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while sum(t.code == "I99" for t in told) < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill()
        for thread in threads:
            thread.join(timeout=60)
        stop.set()
        assert sum(t.code == "I99" for t in told) >= 30
        assert any(t.code is None for t in told)  # the kill cut requests short

        report = reliability.check(url, told, crashed=True)
        assert report.problems == []
        # On restart the service answers, and each client carries on above its counter.
        restarted = reliability.served(url, log=tmp_path / "serve.log")
        try:
            after: list[reliability.Told] = []
            for client in bench.clients:
                reliability.drive(
                    restarted.url, client, after, threading.Event(), limit=1, mix=False
                )
            assert [t.code for t in after] == ["I99"] * 3
        finally:
            restarted.kill()
        assert reliability.check(url, [*told, *after], crashed=True).problems == []


@contextmanager
def _database(engine_name: str, tmp_path: Path) -> Iterator[str]:
    if engine_name == "sqlite":
        yield f"sqlite:///{tmp_path / 'crash.db'}"
    else:
        with _pg_schema() as url:
            yield url


# ------------------------------------------------------------------ disk full


def test_full_sqlite_database_is_refused_with_e100_and_service_resumes(
    tmp_path: Path, world: DemoWorld
) -> None:
    """SQLite's ``max_page_count`` makes the file "full" (SQLITE_FULL, as a full disk does)."""
    url = f"sqlite:///{tmp_path / 'full.db'}"
    processor = _seeded_processor(url, world)
    engine = processor.engine
    cap: dict[str, int | None] = {"pages": None}

    @event.listens_for(engine, "begin")
    def _cap(connection: Connection) -> None:
        if cap["pages"] is not None:
            connection.exec_driver_sql(f"PRAGMA max_page_count = {cap['pages']}")

    unknown_hub = next(s for s in SCENARIOS if s.name == "Device not in inventory")
    with engine.connect() as conn:
        cap["pages"] = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
    answers: list[str] = []
    for counter in range(1, 400):
        ((_, body),) = scenario_bodies(world, [unknown_hub], first_counter=counter)
        outcome = processor.handle_duis(body, Endpoint.NON_DEVICE)
        answers.append(outcome.code)
        if outcome.code == "E100":
            assert outcome.http_status == 503
            break
    assert answers[-1] == "E100", "the capped database never filled up"
    assert set(answers[:-1]) <= {"E19"}
    refused_stored = len(answers) - 1
    assert _counts(url) == (0, refused_stored)  # every E19 has its audit row, the E100 none

    ((_, accepted),) = scenario_bodies(world, [IS_PENDING], first_counter=10_000)
    full = processor.handle_duis(accepted, Endpoint.NON_DEVICE)
    assert (full.code, full.http_status) == ("E100", 503)
    assert _counts(url) == (0, refused_stored)  # nothing acknowledged, nothing stored

    cap["pages"] = 1_073_741_823  # space again: the same request, resent, is accepted
    assert processor.handle_duis(accepted, Endpoint.NON_DEVICE).code == "I99"
    assert _counts(url) == (1, refused_stored + 1)
