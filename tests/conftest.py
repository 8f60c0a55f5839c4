"""Shared fixtures: a migrated database on SQLite *and* PostgreSQL, the demo world,
and the service running over real HTTP.

``database_url`` is parametrised over both engines. PostgreSQL tests use the
server in ``HUBRETURNS_TEST_PG_URL`` (default: the local one, database
``test``), each test in a schema of its own so parallel runs never collide.
When PostgreSQL is unreachable those tests are skipped locally and fail in CI
(``CI=true``), so a green CI always means both engines ran.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.dcc.config import Settings
from hubreturns.dcc.processing import Processor
from hubreturns.dcc.service import build_service, create_app
from hubreturns.dcc.serving import running_server
from hubreturns.dcc.store.db import make_engine, make_sessionmaker, migrate
from hubreturns.demo import seed
from hubreturns.user.scenarios import DemoWorld, build_world

#: What a served test needs in its environment (``hubreturns serve`` in a subprocess):
#: the packaged test keys allowed, and a session secret for several workers.
SERVE_ENV = {
    "HUBRETURNS_ALLOW_TEST_KEYS": "1",
    "HUBRETURNS_SESSION_SECRET": "tests-only-session-secret-0123456789abcdef",
}

PG_URL = os.environ.get(
    "HUBRETURNS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _pg_available() -> bool:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


_PG_OK: bool | None = None


def pg_or_skip() -> None:
    global _PG_OK
    if _PG_OK is None:
        _PG_OK = _pg_available()
    if not _PG_OK:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_URL} is required in CI but unreachable")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each engine (SQLite file, or a fresh PostgreSQL schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hubreturns.db'}"
        return
    pg_or_skip()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def settings(database_url: str, world: DemoWorld) -> Settings:
    """Settings on ``database_url`` that trust the demo world's own SMKI CA."""
    return Settings(
        database_url=database_url, smki_ca_certs=world.smki_ca_certs, allow_test_keys=True
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> DemoWorld:
    """The demo world (users, credentials, hubs); built once per test session."""
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture
def seeded(sessions: sessionmaker[Session], world: DemoWorld) -> sessionmaker[Session]:
    """The database with the demo world loaded."""
    seed(sessions, world, datetime.now(UTC))
    return sessions


@pytest.fixture
def processor(settings: Settings, seeded: sessionmaker[Session], engine: Engine) -> Processor:
    processor = build_service(settings, engine=engine)
    return processor


@pytest.fixture
def server(processor: Processor, settings: Settings) -> Iterator[str]:
    """Base URL of the service on a real loopback socket."""
    with running_server(create_app(processor, settings)) as url:
        yield url


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client
