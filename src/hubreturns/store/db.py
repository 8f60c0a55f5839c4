"""Engines, sessions and migrations for SQLite (default) and PostgreSQL.

SQLite runs in WAL mode with ``synchronous=FULL`` (an acknowledged return
survives power loss, not just a process crash), foreign keys on, and every
transaction opened with ``BEGIN IMMEDIATE`` so concurrent writers queue on the
database lock instead of failing to upgrade a read lock. PostgreSQL runs at
READ COMMITTED; the repository's conditional writes make races safe there.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "WAL_AUTOCHECKPOINT_PAGES",
    "SQLiteWriterLock",
    "checkpoint",
    "make_engine",
    "make_sessionmaker",
    "migrate",
    "reading",
    "writer_connection",
    "writer_lock",
]


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, **kwargs: Any) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 10)
        return create_engine(url, **kwargs)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000}, **kwargs
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide when transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if parsed.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        # The committer checkpoints in the background (``checkpoint``) so that
        # no request's commit pays for one; this is only the safety net.
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A read-only connection (``reading``) must not take the write lock.
        if connection.get_execution_options().get(_READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


_READ_ONLY = "hubreturns_read_only"

#: WAL pages after which a committing SQLite connection checkpoints by itself.
WAL_AUTOCHECKPOINT_PAGES = 10_000


def checkpoint(engine: Engine) -> None:
    """Copy committed WAL pages into a SQLite database file without blocking writers.

    A PASSIVE checkpoint, run by the committer's background thread every
    half second: otherwise the commit that crosses the auto-checkpoint
    threshold does the copying and its fsync, and the requests waiting for
    that commit see it as a latency spike.
    """
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as connection:
        raw: Any = connection.connection.driver_connection
        raw.execute("PRAGMA wal_checkpoint(PASSIVE)")


def reading(engine: Engine) -> Connection:
    """A connection for reads only: on SQLite its transactions do not queue for the write lock.

    Use as a context manager; a write through it on SQLite may fail with
    "database is locked" instead of waiting, which is the point.
    """
    return engine.connect().execution_options(**{_READ_ONLY: True})


#: PostgreSQL: the committer's own connection (``writer_connection``) commits
#: each statement by itself, so a batch costs two messages to the server and
#: two round trips: its facts read (with its return ids) and its writes (one
#: statement, ``repository._PgBatchWrite``, which is also its transaction). An
#: implicit BEGIN and a COMMIT were two more, and psycopg's pipeline sent each
#: command and each sync in a message of its own: 8 messages and 4 round trips
#: a batch, each message a wake-up of the server's process and a system call
#: here. The protocol alone, on the bench machine (``python -m
#: benchmarks.pgbatch``, three runs): our CPU a batch 1.6-2.7× less,
#: PostgreSQL's 1.3-1.7× less, its wall time 1.3-2.0× shorter.
#:
#: Its session also keeps the batch read's one plan (``force_generic_plan``,
#: see ``repository._pg_facts_many``), and that plan probes indexes: without
#: ``enable_seqscan`` off, a plan made while ``replay_counters`` was empty (a
#: new service, or the benchmark's reset) scanned the whole table for each
#: key, and was kept until the next ANALYZE: 70 µs of PostgreSQL's CPU a
#: request with 1,000 senders, measured. Every look-up of the request path is
#: by primary key, so no sequential scan is ever the better plan there. The
#: settings are the session's, so the connection is closed, never pooled, when
#: the committer is done with it.
_PG_WRITER_SETTINGS = (
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', false),"
    " set_config('enable_seqscan', 'off', false)"
)


def writer_connection(engine: Engine) -> Connection:
    """A connection for the group committer's batches (``hubreturns.committer``).

    On PostgreSQL: autocommit, and its session set for the batch statements
    (above). A batch's writes then commit as one statement; anything else
    that must be atomic needs a connection of its own. Its settings must not
    reach the pool's other users: end it with ``invalidate()`` before
    ``close()``, which closes the server connection instead of pooling it.
    On SQLite: a plain connection.
    """
    connection = engine.connect()
    if engine.dialect.name != "postgresql":
        return connection
    try:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.exec_driver_sql(_PG_WRITER_SETTINGS)
        connection.commit()  # SQLAlchemy's autobegun transaction; nothing to send
    except BaseException:
        connection.invalidate()
        connection.close()
        raise
    return connection


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema with the packaged Alembic migrations."""
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("hubreturns.store") / "migrations")
    )
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


_writer_locks: dict[str, AbstractContextManager[object]] = {}
_writer_locks_guard = threading.Lock()


def writer_lock(engine: Engine) -> AbstractContextManager[object]:
    """A lock to hold around a write transaction: one writer at a time, without polling.

    SQLite admits one writer per database file. Left to itself, a writer that
    finds the file locked sleeps in its busy handler in growing steps (up to
    100 ms), so under contention most of the time is spent asleep. Writers of
    this process queue on a thread lock instead, and writers in other processes
    (``serve --workers N``) on an ``flock`` of a file beside the database, which
    the kernel hands over the moment it is released. PostgreSQL needs neither:
    its row locks and our conditional writes settle races, so this is a no-op.
    """
    if engine.dialect.name != "sqlite":
        return nullcontext()
    database = engine.url.database or ""
    with _writer_locks_guard:
        lock = _writer_locks.get(database)
        if lock is None:
            lock = _writer_locks[database] = SQLiteWriterLock(database)
        return lock


class SQLiteWriterLock:
    """A thread lock, plus an advisory file lock when the database is a file."""

    def __init__(self, database: str) -> None:
        self._thread_lock = threading.Lock()
        in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
        self._path = None if in_memory else f"{os.path.abspath(database)}-writer.lock"
        self._fd: int | None = None
        self._pid = 0

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock; with a ``timeout`` (seconds), False if it is not had by then."""
        started = time.monotonic()
        if not self._thread_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            if self._path is None:
                return True
            if timeout is None:
                fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
                return True
            # flock has no timeout: poll without blocking until the deadline.
            deadline = started + timeout
            while True:
                try:
                    fcntl.flock(self._descriptor(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        self._thread_lock.release()
                        return False
                    time.sleep(0.0002)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        try:
            if self._path is not None and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def __enter__(self) -> object:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def _descriptor(self) -> int:
        # A forked child must not share its parent's open file description:
        # flock would then treat the two processes as one holder.
        if self._fd is None or self._pid != os.getpid():
            assert self._path is not None
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd
