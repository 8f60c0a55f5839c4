"""PostgreSQL: READ COMMITTED, conditional writes, and a batch in two statements.

The repository's conditional writes make races safe without table locks. The
group committer's own connection (``writer_connection``) commits each
statement by itself, so a batch costs two messages to the server and two
round trips: its facts read (with its return ids) and its writes (one
statement, ``_BatchWrite``, which is also its transaction). An implicit
BEGIN and a COMMIT were two more, and psycopg's pipeline sent each command
and each sync in a message of its own: 8 messages and 4 round trips a batch,
each message a wake-up of the server's process and a system call here.
Measured (``python -m benchmarks.pgbatch``, three runs): our CPU a batch
1.6-2.7x less, PostgreSQL's 1.3-1.7x less, its wall time 1.3-2.0x shorter.

That connection's session also keeps the batch read's one plan
(``force_generic_plan``, see ``_batch_facts``), and that plan probes indexes:
without ``enable_seqscan`` off, a plan made while ``replay_counters`` was
empty (a new service, or the benchmark's reset) scanned the whole table for
each key, and was kept until the next ANALYZE: 70 us of PostgreSQL's CPU a
request with 1,000 senders, measured. Every look-up of the request path is by
primary key, so no sequential scan is ever the better plan there. The
settings are the session's, so the connection is closed, never pooled, when
the committer is done with it.

The batch write is SQL text because Core has no spelling for psycopg's binary
placeholders (``%(name)b``); the column types come from the models. The
batch's two statements run on psycopg's own cursor (``_on_driver``): the read
is the Core ``select`` below compiled once, its rows read through the column
types' result processors (``FactsReader``). Why: a batch of a few requests
(at 1,000 req/s a commit serves 2-4) paid SQLAlchemy's statement cache key,
result set-up and row processing on every execution, in the writer thread
that holds the GIL the event loop needs: a 3-key facts read cost 216 µs of
CPU through Core, 188 as SQL text by ``exec_driver_sql`` (the way the write
was sent) and 126 on the driver's cursor (``python -m benchmarks.pgfacts``,
medians of three interleaved rounds). End to end at 1,000 req/s with 2
workers (three alternated rounds, docs/performance.md): the service's CPU a
request 1,229 against 1,309 µs, p50 7.7 against 11.6 ms. Everything else is SQLAlchemy Core.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    String,
    and_,
    bindparam,
    create_engine,
    func,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, Insert, insert
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.sql.expression import ColumnElement

from hubreturns.dcc.store import statements
from hubreturns.dcc.store.backend import (
    FactsKey,
    FactsReader,
    FactsRow,
    QueuedWrites,
    WriteConflict,
    driver_error,
)
from hubreturns.dcc.store.models import (
    AuditEntry,
    Device,
    DeviceSupplier,
    ReplayCounter,
    ReturnRecord,
    User,
)

__all__ = ["BACKEND", "PostgreSQLBackend"]

_WRITER_SETTINGS: Final = (
    "SELECT set_config('plan_cache_mode', 'force_generic_plan', false),"
    " set_config('enable_seqscan', 'off', false)"
)
#: SQLSTATE of ``hubreturns_batch_written``: a batch's write lost a race (migration 0006).
_LOST_RACE: Final = "HR409"


class _Compiled:
    """A Core statement's SQL for PostgreSQL and its fixed parameters, compiled once."""

    __slots__ = ("_form", "statement")

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._form: tuple[str, dict[str, Any]] | None = None

    def form(self, connection: Connection) -> tuple[str, dict[str, Any]]:
        if self._form is None:
            compiled: Compiled = self.statement.compile(dialect=connection.dialect)
            self._form = (str(compiled), dict(compiled.params))
        return self._form


def _on_driver(connection: Connection, sql: str, parameters: Mapping[str, Any]) -> list[Any]:
    """The rows of ``sql`` run on psycopg's cursor of ``connection`` (closed after);
    its errors raised as SQLAlchemy's.

    A lost connection is invalidated and its error says so
    (``connection_invalidated``), as Core's own execution would: the committer
    then runs the batch again on a new connection.
    """
    with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
        try:
            cursor.execute(sql, parameters)
            return list(cursor.fetchall())
        except connection.dialect.loaded_dbapi.Error as exc:
            raise driver_error(connection, sql, exc, cursor) from exc


def _batch_facts() -> Any:
    """The facts of a batch: two arrays of keys, each table looked up by key in a
    fenced subquery, and the batch's new return ids.

    ``OFFSET 0`` keeps the planner from turning the look-ups into joins, so the
    plan is index look-ups per key whatever the tables' sizes and however many
    keys a batch holds. That makes one plan right for every batch, and the
    committer's connection keeps it (``writer_connection``): left to choose, the
    planner plans anew for each array size, which costs more than the read.
    """
    k = (
        func.unnest(
            bindparam("originators", type_=ARRAY(String(23))),
            bindparam("devices", type_=ARRAY(String(23))),
        )
        .table_valued("originator", "device_id")
        .render_derived(name="k")
    )

    def look_up(name: str, where: Any, *columns: Any) -> Any:
        return select(*columns).where(where).offset(0).lateral(name)

    user = look_up("u", User.user_id == k.c.originator, User.user_id, User.role, User.status)
    counter = look_up("r", ReplayCounter.originator == k.c.originator, ReplayCounter.last_counter)
    device = look_up(
        "d",
        and_(Device.device_id == k.c.device_id, Device.withdrawn_at.is_(None)),
        Device.device_id,
        Device.device_type,
        Device.smi_status,
        Device.gpf_id,
        Device.open_return_id,
    )
    suppliers = look_up(
        "s", DeviceSupplier.device_id == k.c.device_id, DeviceSupplier.supplier_user_id
    )
    # The batch's new return ids, drawn once per statement (an uncorrelated
    # subquery is an InitPlan) and repeated on each row: they cost no second command.
    ids = (
        select(func.array_agg(func.nextval(func.pg_get_serial_sequence("returns", "id"))))
        .select_from(func.generate_series(1, bindparam("n", type_=Integer())))
        .scalar_subquery()
    )
    return (
        select(
            k.c.originator.label("key_originator"),
            k.c.device_id.label("key_device"),
            user.c.user_id,
            user.c.role,
            user.c.status,
            counter.c.last_counter,
            device.c.device_id.label("found_device"),
            device.c.device_type,
            device.c.smi_status,
            device.c.gpf_id,
            device.c.open_return_id,
            suppliers.c.supplier_user_id,
            ids.label("return_ids"),
        )
        .select_from(k)
        .outerjoin(user, true())
        .outerjoin(counter, true())
        .outerjoin(device, true())
        .outerjoin(suppliers, true())
    )


_BATCH_FACTS: Final = _batch_facts()
_BATCH_FACTS_SQL: Final = _Compiled(_BATCH_FACTS)
_FACTS_ROWS: Final = FactsReader(_BATCH_FACTS)
_RETURN_IDS_AT: Final = list(_BATCH_FACTS.selected_columns.keys()).index("return_ids")
#: ``n`` ids for new ``returns`` rows from the table's own sequence.
_RETURN_IDS: Final = select(func.nextval(func.pg_get_serial_sequence("returns", "id"))).select_from(
    func.generate_series(1, bindparam("n", type_=Integer()))
)
_CERTIFICATES_PRESENT: Final = statements.certificates_in(
    func.unnest(
        bindparam("issuers", type_=ARRAY(String())),
        bindparam("serials", type_=ARRAY(String())),
    )
    .table_valued("issuer", "serial")
    .render_derived(name="k")
)
_ADVANCE: Final = statements.advance(insert)


def _array_type(column: ColumnElement[Any]) -> str:
    """The column's PostgreSQL type as an array, without a length: a cast to
    ``VARCHAR(80)`` would cut a longer value short, where the insert refuses it."""
    name = column.type.compile(dialect=PGDialect())  # type: ignore[no-untyped-call]
    return re.sub(r"\(\d+\)", "", name) + "[]"


def _arrays(table: Any, columns: Sequence[str], prefix: str) -> str:
    """``%(<prefix><column>)b::<type>[]`` for each column: one binary array parameter each."""
    return ", ".join(f"%({prefix}{c})b::{_array_type(table.c[c])}" for c in columns)


class _BatchWrite:
    """A PostgreSQL batch's writes as one statement: each kind of row a data-modifying
    ``WITH`` part over arrays (one element per row, sent in binary), and the rows the
    conditional parts changed as its result.

    Why one statement: every statement is a message to the server and a wait
    for its answer, and in the writer thread every wait gives up the GIL,
    which the event loop then holds for up to 5 ms before the thread can go
    on. With a statement per kind of row (earlier rounds: one per row, then
    one per kind) a batch's writes were five such waits; here they are one,
    and on the committer's connection (``writer_connection``, autocommit) it
    is also the batch's commit. So the statement checks itself: its last
    part hands the counts it changed to ``hubreturns_batch_written``
    (migration 0006), which raises SQLSTATE ``HR409`` when they fall short of
    what was decided, and the whole statement is undone. Arrays in
    binary form cost less to encode and parse than separate parameters (text
    arrays cost more; tried in an earlier round). The SQL is written here
    because Core has no spelling for binary placeholders; the column types
    come from the models.

    Only the parts a batch has rows for are sent, so there are a few forms of
    the statement (each prepared once). PostgreSQL runs the parts the main
    query reads as it reads them (counters, then hubs) and the others after
    it, so concurrent batches lock counters, then hubs, in key order; a
    deadlock, should one come, rolls the batch back and its requests are run
    again one by one (``hubreturns.dcc.committer``).
    Every part reads the statement's one snapshot. None reads what another
    writes: counters moved are rows that existed, counters inserted are rows
    that did not, and no constraint ties the new returns to the claims. A
    counter inserted meanwhile by another transaction makes ``ON CONFLICT DO
    NOTHING`` skip its row, and one moved meanwhile is re-checked by the
    ``UPDATE`` (READ COMMITTED): either way fewer rows change than decided,
    the statement refuses itself, and ``flush`` reports ``WriteConflict``.
    """

    #: Counter advances: one row per originator, moved to the batch's highest counter
    #: where it is still below the batch's lowest, so the batch succeeds for an
    #: originator exactly when each of its advances would have, one by one; then the
    #: originators with no row yet, inserted. Together they must change one row per
    #: originator.
    ADVANCED = (
        "UPDATE replay_counters AS r SET last_counter = u.high, updated_at = u.at"
        " FROM unnest(%(c_originator)b::varchar[], %(c_low)b::varchar[],"
        " %(c_high)b::varchar[], %(c_at)b::timestamptz[]) AS u(originator, low, high, at)"
        ' WHERE r.originator = u.originator AND r.last_counter < u.low COLLATE "C"'
        " RETURNING 1"
    )
    ADDED = (
        "INSERT INTO replay_counters (originator, last_counter, updated_at)"
        " SELECT u.originator, u.high, u.at FROM unnest(%(c_originator)b::varchar[],"
        " %(c_high)b::varchar[], %(c_at)b::timestamptz[]) AS u(originator, high, at)"
        " WHERE NOT EXISTS (SELECT FROM replay_counters AS r WHERE r.originator = u.originator)"
        " ON CONFLICT (originator) DO NOTHING RETURNING 1"
    )
    #: Hub claims (a batch claims a hub at most once): one row per claim must change.
    CLAIMED = (
        "UPDATE devices AS d SET open_return_id = u.return_id, updated_at = u.at"
        " FROM unnest(%(h_device_id)b::varchar[], %(h_return_id)b::bigint[],"
        " %(h_at)b::timestamptz[]) AS u(device_id, return_id, at)"
        " WHERE d.device_id = u.device_id AND d.open_return_id IS NULL RETURNING 1"
    )
    RETURN_COLUMNS = ("id", *statements.RETURN_COLUMNS)
    RECORDED = (
        f"INSERT INTO returns ({', '.join(RETURN_COLUMNS)})"
        f" SELECT * FROM unnest({_arrays(ReturnRecord.__table__, RETURN_COLUMNS, 'r_')})"
    )
    AUDITED = (
        f"INSERT INTO audit_log ({', '.join(statements.AUDIT_COLUMNS)})"
        f" SELECT * FROM unnest({_arrays(AuditEntry.__table__, statements.AUDIT_COLUMNS, 'a_')})"
    )

    @classmethod
    def statement(
        cls,
        counters: Sequence[Mapping[str, Any]],
        returns: Sequence[Mapping[str, Any]],
        claims: Sequence[Mapping[str, Any]],
        audit: Sequence[Mapping[str, Any]],
    ) -> tuple[str, dict[str, list[Any]]]:
        """The SQL and its parameters; the result is one row: (counters, hubs) changed."""
        parts: list[tuple[str, str]] = []
        parameters: dict[str, list[Any]] = {}

        def arrays(prefix: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
            for column in columns:
                parameters[prefix + column] = [row[column] for row in rows]

        if counters:
            parts += [("advanced", cls.ADVANCED), ("added", cls.ADDED)]
            arrays("c_", counters, ("originator", "low", "high", "at"))
        if claims:
            parts.append(("claimed", cls.CLAIMED))
            arrays("h_", claims, ("device_id", "return_id", "at"))
        if returns:
            parts.append(("recorded", cls.RECORDED))
            arrays("r_", returns, cls.RETURN_COLUMNS)
        if audit:
            parts.append(("audited", cls.AUDITED))
            arrays("a_", audit, statements.AUDIT_COLUMNS)
        counted = (
            "(SELECT count(*) FROM advanced) + (SELECT count(*) FROM added)" if counters else "0"
        )
        hubs = "(SELECT count(*) FROM claimed)" if claims else "0"
        with_parts = ", ".join(f"{name} AS ({sql})" for name, sql in parts)
        # What was decided: one row changed per originator, and per hub claimed.
        decided_counters = "cardinality(%(c_originator)b::varchar[])" if counters else "0"
        decided_hubs = "cardinality(%(h_device_id)b::varchar[])" if claims else "0"
        check = (
            f"hubreturns_batch_written({decided_counters}, counted.c, {decided_hubs}, counted.h)"
        )
        return (
            f"WITH {with_parts}, counted AS (SELECT {counted} AS c, {hubs} AS h)"
            f" SELECT counted.c, counted.h, {check} FROM counted",
            parameters,
        )


class PostgreSQLBackend:
    name = "postgresql"
    single_writer = False

    def engine(self, url: URL, *, busy_timeout_ms: int, **kwargs: Any) -> Engine:
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("pool_size", 10)
        return create_engine(url, **kwargs)

    def writer_connection(self, engine: Engine) -> Connection:
        """Autocommit, and its session set for the batch statements (above).

        A batch's writes then commit as one statement; anything else that must
        be atomic needs a connection of its own. End it with ``invalidate()``
        before ``close()``: its settings must not reach the pool's other users.
        """
        connection = engine.connect()
        try:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql(_WRITER_SETTINGS)
            connection.commit()  # SQLAlchemy's autobegun transaction; nothing to send
        except BaseException:
            connection.invalidate()
            connection.close()
            raise
        return connection

    def writer_lock(self, engine: Engine) -> AbstractContextManager[object]:
        """None needed: row locks and the conditional writes settle races."""
        return nullcontext()

    def checkpoint(self, engine: Engine) -> None:
        """PostgreSQL checkpoints by itself."""

    def insert(self, table: Any) -> Insert:
        return insert(table)

    def batch_facts(
        self, connection: Connection, keys: Sequence[FactsKey]
    ) -> tuple[Sequence[FactsRow], Sequence[int]]:
        sql, fixed = _BATCH_FACTS_SQL.form(connection)
        parameters = {
            **fixed,
            "originators": [k[0] for k in keys],
            "devices": [k[1] for k in keys],
            "n": len(keys),
        }
        rows = _on_driver(connection, sql, parameters)
        # ``return_ids`` is the batch's return ids, the same on every row.
        ids = list(rows[0][_RETURN_IDS_AT]) if rows else []
        return _FACTS_ROWS.read(connection.dialect, rows), ids

    def return_ids(self, connection: Connection, count: int, after: int | None) -> Sequence[int]:
        return [int(i) for i in connection.execute(_RETURN_IDS, {"n": count}).scalars()]

    def certificates_present(
        self, connection: Connection, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        parameters = {"issuers": [k[0] for k in keys], "serials": [k[1] for k in keys]}
        rows = connection.execute(_CERTIFICATES_PRESENT, parameters)
        return {(issuer, serial) for issuer, serial in rows}

    def write_batch(self, connection: Connection, queued: QueuedWrites) -> None:
        """The batch's writes in one statement (``_BatchWrite``), then its counts checked."""
        if not any((queued.advances, queued.returns, queued.claims, queued.audit)):
            return
        by_originator: dict[str, list[Mapping[str, Any]]] = {}
        for row in queued.advances:
            by_originator.setdefault(row["b_originator"], []).append(row)
        counters = [
            {
                "originator": originator,
                "low": rows[0]["b_counter"],
                "high": rows[-1]["b_counter"],
                "at": rows[-1]["b_now"],
            }
            for originator, rows in by_originator.items()
        ]
        hubs = [
            {"device_id": c["b_device"], "return_id": c["b_return"], "at": c["b_now"]}
            for c in queued.claims
        ]
        sql, parameters = _BatchWrite.statement(counters, queued.returns, hubs, queued.audit)
        try:
            ((moved, claimed, _),) = _on_driver(connection, sql, parameters)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == _LOST_RACE:
                # The statement refused itself (migration 0006): nothing of it was written.
                raise WriteConflict(str(exc.orig)) from exc
            raise
        # The statement has checked these itself; a second look costs nothing.
        for kind, done, expected in (
            ("advances", moved, len(counters)),
            ("claims", claimed, len(hubs)),
        ):
            if done != expected:
                raise WriteConflict(
                    f"{kind}: {done} of {expected} rows changed; another process won a race"
                )


BACKEND: Final = PostgreSQLBackend()
