"""Engines, sessions and migrations for SQLite (default) and PostgreSQL.

What differs between the two lives in their backend modules
(``store.sqlite``, ``store.postgresql``; the protocol is ``store.backend``);
``backend_for`` is the one place that asks which one a connection uses.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.dcc.store import postgresql, sqlite
from hubreturns.dcc.store.backend import READ_ONLY, Backend
from hubreturns.dcc.store.sqlite import WAL_AUTOCHECKPOINT_PAGES, SQLiteWriterLock

__all__ = [
    "WAL_AUTOCHECKPOINT_PAGES",
    "SQLiteWriterLock",
    "backend_for",
    "backend_named",
    "checkpoint",
    "make_engine",
    "make_sessionmaker",
    "migrate",
    "reading",
    "writer_connection",
    "writer_lock",
]

_BACKENDS: dict[str, Backend] = {
    backend.name: backend for backend in (sqlite.BACKEND, postgresql.BACKEND)
}


def backend_named(name: str) -> Backend:
    """The backend of the SQLAlchemy dialect ``name``; ``ValueError`` if unsupported."""
    found = _BACKENDS.get(name)
    if found is None:
        raise ValueError(f"unsupported database {name!r}: hubreturns runs on SQLite or PostgreSQL")
    return found


def backend_for(bind: Engine | Connection) -> Backend:
    """The backend of the engine ``bind`` belongs to."""
    return backend_named(bind.dialect.name)


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    backend = backend_named(parsed.get_backend_name())
    return backend.engine(parsed, busy_timeout_ms=busy_timeout_ms, **kwargs)


def checkpoint(engine: Engine) -> None:
    """Copy committed log pages into the database file without blocking writers
    (SQLite; run by the committer's background thread every half second)."""
    backend_for(engine).checkpoint(engine)


def reading(engine: Engine) -> Connection:
    """A connection for reads only: on SQLite its transactions do not queue for the write lock.

    Use as a context manager; a write through it on SQLite may fail with
    "database is locked" instead of waiting, which is the point.
    """
    return engine.connect().execution_options(**{READ_ONLY: True})


def writer_connection(engine: Engine) -> Connection:
    """A connection for the group committer's batches (``hubreturns.dcc.committer``).

    On PostgreSQL autocommit, its session set for the batch statements: end it
    with ``invalidate()`` before ``close()`` (``store.postgresql``). On SQLite a
    plain connection.
    """
    return backend_for(engine).writer_connection(engine)


def writer_lock(engine: Engine) -> AbstractContextManager[object]:
    """A lock to hold around a write transaction: one writer at a time on SQLite,
    without polling (``store.sqlite``); a no-op on PostgreSQL."""
    return backend_for(engine).writer_lock(engine)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema with the packaged Alembic migrations."""
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("hubreturns.dcc.store") / "migrations")
    )
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
