"""SQLite: WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``, one writer at a time.

An acknowledged return survives power loss, not just a process crash
(``synchronous=FULL``); foreign keys are on; every write transaction opens
with ``BEGIN IMMEDIATE`` so concurrent writers queue on the database lock
instead of failing to upgrade a read lock, and a process's writers queue on
``writer_lock`` before that (no busy-handler sleeps). A batch's keys go to the
database as one JSON parameter (``json_each``), and its writes are one
``executemany`` per statement.

A batch's read and writes (``batch_facts``, ``write_batch``) run on the
driver's cursor (``_Compiled``); everything else goes through SQLAlchemy Core.
Why: in a same-run A/B of the request path (``python -m benchmarks.storeab``,
64 in flight, 3 alternated rounds; docs/performance.md) running them through
Core cost 15 % more CPU a request on SQLite (369 against 321 µs, medians),
where on PostgreSQL, whose batch is two statements over arrays, Core cost
nothing measurable (398 against 405 µs). SQLAlchemy's executemany builds
every row's parameters through its compiled statement's machinery, several
times what SQLite spends on a row here.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

from sqlalchemy import (
    Connection,
    Engine,
    String,
    bindparam,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects.sqlite import Insert, insert
from sqlalchemy.engine import URL
from sqlalchemy.sql.expression import ClauseElement

from hubreturns.dcc.store import statements
from hubreturns.dcc.store.backend import (
    READ_ONLY,
    FactsKey,
    FactsReader,
    FactsRow,
    QueuedWrites,
    WriteConflict,
    driver_error,
)

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


class _Compiled:
    """A Core statement compiled once for SQLite and run on the driver's cursor.

    What runs is still SQLAlchemy's: the SQL is SQLite's compilation of the
    Core statement, and every parameter goes through its column type's bind
    processor, so the stored values are those the Core path stores. Driver
    errors are raised as SQLAlchemy's (``backend.driver_error``).
    """

    __slots__ = ("_form", "_keys", "statement")

    def __init__(self, statement: ClauseElement, keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self._keys = list(keys) if keys is not None else None
        self._form: tuple[str, tuple[tuple[str, Any, Any], ...]] | None = None

    def _compiled(self, connection: Connection) -> tuple[str, tuple[tuple[str, Any, Any], ...]]:
        """(SQL, ((parameter, bind processor or None, fixed value or _GIVEN), ...))."""
        if self._form is None:
            dialect = connection.dialect
            compiled: Any = self.statement.compile(dialect=dialect, column_keys=self._keys)
            binds = []
            for name in compiled.positiontup:
                bind = compiled.binds[name]
                processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
                fixed = _GIVEN if bind.required or bind.value is None else bind.value
                binds.append((name, processor, fixed))
            self._form = (compiled.string, tuple(binds))
        return self._form

    def run(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> Any:
        """Execute once per row (``executemany`` for several) in the connection's transaction."""
        sql, binds = self._compiled(connection)

        def values(given: Mapping[str, Any]) -> list[Any]:
            out = []
            for name, convert, fixed in binds:
                value = given[name] if fixed is _GIVEN else fixed
                out.append(convert(value) if convert is not None else value)
            return out

        if not connection.in_transaction():
            connection.begin()  # our "begin" event: BEGIN IMMEDIATE
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if len(rows) == 1:
                cursor.execute(sql, values(rows[0]))
            else:
                cursor.executemany(sql, [values(row) for row in rows])
        except connection.dialect.loaded_dbapi.Error as exc:
            raise driver_error(connection, sql, exc, cursor) from exc
        return cursor


#: Marks a parameter whose value each execution gives.
_GIVEN: Any = object()

_FACTS: Final = statements.facts_statement(_pairs("originator", "device_id"))
_BATCH_FACTS: Final = _Compiled(_FACTS)
_CERTIFICATES_PRESENT: Final = statements.certificates_in(_pairs("issuer", "serial"))
_ADVANCE: Final = _Compiled(statements.advance(insert))
_ADD_RETURN_WITH_ID: Final = _Compiled(
    statements.ADD_RETURN_WITH_ID, ("id", *statements.RETURN_COLUMNS)
)
_CLAIM: Final = _Compiled(statements.CLAIM)
_ADD_AUDIT: Final = _Compiled(statements.ADD_AUDIT, statements.AUDIT_COLUMNS)
_LAST_RETURN_ID: Final = statements.last_return_id()


_FACTS_ROWS: Final = FactsReader(_FACTS)


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
    ) -> tuple[Sequence[FactsRow], Sequence[int]]:
        cursor = _BATCH_FACTS.run(connection, [{"pairs": json.dumps(keys)}])
        return _FACTS_ROWS.read(connection.dialect, cursor.fetchall()), ()

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
            ("returns", _ADD_RETURN_WITH_ID, queued.returns, False),
            ("claims", _CLAIM, queued.claims, True),
            ("audit", _ADD_AUDIT, queued.audit, False),
        ):
            if not rows:
                continue
            changed = statement.run(connection, rows).rowcount
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
