"""SQLite: WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``, one writer at a time.

An acknowledged return survives power loss, not just a process crash
(``synchronous=FULL``); foreign keys are on; every write transaction opens
with ``BEGIN IMMEDIATE`` so concurrent writers queue on the database lock
instead of failing to upgrade a read lock, and a process's writers queue on
``writer_lock`` before that (no busy-handler sleeps). A batch's keys go to the
database as one JSON parameter (``json_each``), and its writes are one
``executemany`` per statement, all through SQLAlchemy Core.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    String,
    bindparam,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects.sqlite import Insert, insert
from sqlalchemy.engine import URL

from hubreturns.store import statements
from hubreturns.store.backend import READ_ONLY, FactsKey, QueuedWrites, WriteConflict

__all__ = ["BACKEND", "WAL_AUTOCHECKPOINT_PAGES", "SQLiteBackend", "SQLiteWriterLock"]

#: WAL pages after which a committing SQLite connection checkpoints by itself.
WAL_AUTOCHECKPOINT_PAGES: Final = 10_000


def _pairs(first: str, second: str) -> Any:
    """A table of pairs from one parameter, ``pairs``: a JSON array of [first, second]."""
    table = func.json_each(bindparam("pairs", type_=String())).table_valued("value")
    return select(
        func.json_extract(table.c.value, "$[0]").label(first),
        func.json_extract(table.c.value, "$[1]").label(second),
    ).subquery("k")


_BATCH_FACTS: Final = statements.facts_statement(_pairs("originator", "device_id"))
_CERTIFICATES_PRESENT: Final = statements.certificates_in(_pairs("issuer", "serial"))
_ADVANCE: Final = statements.advance(insert)
_LAST_RETURN_ID: Final = statements.last_return_id()


class SQLiteBackend:
    name = "sqlite"
    single_writer = True

    def engine(self, url: URL, *, busy_timeout_ms: int, **kwargs: Any) -> Engine:
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
            **kwargs,
        )
        wal = url.database not in (None, "", ":memory:")

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event below decide when transactions start.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            if wal:
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
            # A read-only connection (``db.reading``) must not take the write lock.
            if connection.get_execution_options().get(READ_ONLY):
                connection.exec_driver_sql("BEGIN")
            else:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    def writer_connection(self, engine: Engine) -> Connection:
        return engine.connect()

    def writer_lock(self, engine: Engine) -> AbstractContextManager[object]:
        """Writers of this process queue on a thread lock, other processes' on an
        ``flock``: SQLite's own busy handler sleeps in growing steps (up to
        100 ms), so under contention most of the time would be spent asleep."""
        database = engine.url.database or ""
        with _writer_locks_guard:
            lock = _writer_locks.get(database)
            if lock is None:
                lock = _writer_locks[database] = SQLiteWriterLock(database)
            return lock

    def checkpoint(self, engine: Engine) -> None:
        """A PASSIVE checkpoint: otherwise the commit that crosses the auto-checkpoint
        threshold does the copying and its fsync, a latency spike for its requests."""
        with engine.connect() as connection:
            # On the driver's connection: through SQLAlchemy it would run inside the
            # transaction our "begin" event opens, where no checkpoint can run.
            raw: Any = connection.connection.driver_connection
            raw.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def insert(self, table: Any) -> Insert:
        return insert(table)

    def batch_facts(
        self, connection: Connection, keys: Sequence[FactsKey]
    ) -> tuple[Sequence[Row[Any]], Sequence[int]]:
        rows = connection.execute(_BATCH_FACTS, {"pairs": json.dumps(keys)}).all()
        return rows, ()

    def return_ids(self, connection: Connection, count: int, after: int | None) -> Sequence[int]:
        """The ids above the highest: SQLite admits one writer, and this transaction is
        it, so nobody else can take them until it ends."""
        last = after if after is not None else int(connection.execute(_LAST_RETURN_ID).scalar_one())
        return range(last + 1, last + 1 + count)

    def certificates_present(
        self, connection: Connection, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        rows = connection.execute(_CERTIFICATES_PRESENT, {"pairs": json.dumps(keys)})
        return {(issuer, serial) for issuer, serial in rows}

    def write_batch(self, connection: Connection, queued: QueuedWrites) -> None:
        """One ``executemany`` per statement; the conditional ones must change every row."""
        for kind, statement, rows, conditional in (
            ("advances", _ADVANCE, queued.advances, True),
            ("returns", statements.ADD_RETURN_WITH_ID, queued.returns, False),
            ("claims", statements.CLAIM, queued.claims, True),
            ("audit", statements.ADD_AUDIT, queued.audit, False),
        ):
            if not rows:
                continue
            changed = connection.execute(statement, list(rows)).rowcount
            if conditional and changed != len(rows):
                raise WriteConflict(
                    f"{kind}: {changed} of {len(rows)} rows changed; another process won a race"
                )


BACKEND: Final = SQLiteBackend()

_writer_locks: dict[str, AbstractContextManager[object]] = {}
_writer_locks_guard = threading.Lock()


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
