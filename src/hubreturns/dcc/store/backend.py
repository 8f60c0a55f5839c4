"""What differs between the database engines, behind one small protocol.

Everything the store does is plain SQLAlchemy Core except what is listed
here; each engine's module (``store.sqlite``, ``store.postgresql``) implements
it, and ``backend_for`` is the one place that looks at which engine a
connection belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple, Protocol

from sqlalchemy import Connection, Dialect, Engine, Select
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.sqlite import Insert as SQLiteInsert
from sqlalchemy.engine import URL
from sqlalchemy.engine.interfaces import DBAPIModule
from sqlalchemy.exc import DBAPIError, StatementError

from hubreturns.model import DeviceType, Role, SmiStatus, UserStatus

__all__ = [
    "READ_ONLY",
    "Backend",
    "FactsKey",
    "FactsReader",
    "FactsRow",
    "FactsStatement",
    "QueuedWrites",
    "WriteConflict",
    "driver_error",
    "facts_columns",
    "facts_positions",
]

#: Execution option of a connection that only reads (``db.reading``).
READ_ONLY = "hubreturns_read_only"

#: What a request's facts are read by: (originator, device_id).
FactsKey = tuple[str, str]
#: A statement that reads facts rows (``statements.facts_statement``).
FactsStatement = Select[*tuple[Any, ...]]


class FactsRow(NamedTuple):
    """One row of a facts read (``statements.FACTS``): the key, the user, its counter,
    the device and one of its responsible Suppliers; None where nothing was found."""

    key_originator: str
    key_device: str
    user_id: str | None
    role: Role | None
    status: UserStatus | None
    last_counter: str | None
    found_device: str | None
    device_type: DeviceType | None
    smi_status: SmiStatus | None
    gpf_id: str | None
    open_return_id: int | None
    supplier_user_id: str | None


def facts_positions(statement: FactsStatement) -> tuple[int, ...]:
    """Where each of ``FactsRow``'s fields stands in ``statement``'s rows, found by its
    column's name, so a reordered statement cannot shift a value into the wrong field."""
    at = {name: position for position, name in enumerate(statement.selected_columns.keys())}
    return tuple(at[field] for field in FactsRow._fields)


def facts_columns(statement: FactsStatement) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A row of ``statement`` as ``FactsRow``'s values, in its fields' order (for
    ``FactsRow._make``); the positions are found once, by name (``facts_positions``)."""
    return itemgetter(*facts_positions(statement))


class FactsReader:
    """A facts read's driver rows as ``FactsRow`` (for a backend that runs the read on
    the driver's cursor): each field's value found by its column's name, and read
    through the column type's result processor, as Core reads it."""

    __slots__ = ("_plan", "_statement")

    def __init__(self, statement: FactsStatement) -> None:
        self._statement = statement
        #: (position, result processor or None) for each field, made for the first dialect.
        self._plan: tuple[tuple[int, Callable[[Any], Any] | None], ...] | None = None

    def read(self, dialect: Dialect, rows: Iterable[Sequence[Any]]) -> list[FactsRow]:
        plan = self._plan
        if plan is None:
            columns = self._statement.selected_columns
            plan = self._plan = tuple(
                (at, columns[at].type.dialect_impl(dialect).result_processor(dialect, None))
                for at in facts_positions(self._statement)
            )
        return [
            FactsRow._make([row[at] if read is None else read(row[at]) for at, read in plan])
            for row in rows
        ]


def driver_error(
    connection: Connection, sql: str, error: DBAPIModule.Error, cursor: Any
) -> StatementError:
    """A driver's ``error`` from ``sql`` on its own ``cursor``, as Core's execution raises it.

    For a backend that runs statements on the driver's cursor: the error is
    SQLAlchemy's (``DBAPIError.instance``), and a lost connection is
    invalidated and says so (``connection_invalidated``), so the committer runs
    the batch again on a new connection.
    """
    dialect = connection.dialect
    dbapi_connection = connection.connection.dbapi_connection
    lost = dialect.is_disconnect(error, dbapi_connection, cursor)
    if lost:
        connection.invalidate(error)
    return DBAPIError.instance(
        sql, None, error, dialect.loaded_dbapi.Error, connection_invalidated=lost, dialect=dialect
    )


class WriteConflict(Exception):
    """A batch's deferred conditional write changed fewer rows than it was decided on.

    Another process won a race for a counter or a hub between the batch's read
    and its write. The batch must be rolled back and its requests decided again
    one by one, where the loser is refused (the group committer does this).
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedWrites:
    """A batch's writes, as ``Ledger.flush`` hands them to the backend.

    ``advances`` and ``claims`` are in key order (so concurrent batches lock
    rows in one order); each advance is ``{"b_originator", "b_counter",
    "b_now"}``, each claim ``{"b_device", "b_return", "b_now"}``; returns and
    audit rows map column names to values (returns with their reserved id).
    """

    advances: Sequence[Mapping[str, Any]]
    returns: Sequence[Mapping[str, Any]]
    claims: Sequence[Mapping[str, Any]]
    audit: Sequence[Mapping[str, Any]]


class Backend(Protocol):
    """One database engine's part of the store."""

    #: SQLAlchemy's name of the dialect.
    name: str
    #: One writer at a time per database (SQLite): writers queue on ``writer_lock``,
    #: and committed WAL pages are copied back by ``checkpoint`` in the background.
    single_writer: bool

    def engine(self, url: URL, *, busy_timeout_ms: int, **kwargs: Any) -> Engine:
        """An engine set up for the service (pragmas, pool, transaction start)."""
        ...

    def writer_connection(self, engine: Engine) -> Connection:
        """The connection the group committer writes its batches on."""
        ...

    def writer_lock(self, engine: Engine) -> AbstractContextManager[object]:
        """A lock to hold around a write transaction (a no-op where rows lock themselves)."""
        ...

    def checkpoint(self, engine: Engine) -> None:
        """Copy committed log pages into the database file (a no-op where not needed)."""
        ...

    def insert(self, table: Any) -> PgInsert | SQLiteInsert:
        """An INSERT with ``on_conflict_do_update`` (for the conditional counter advance)."""
        ...

    def batch_facts(
        self, connection: Connection, keys: Sequence[FactsKey]
    ) -> tuple[Sequence[FactsRow], Sequence[int]]:
        """Every key's facts rows in one statement, and new return ids if the read drew any."""
        ...

    def return_ids(self, connection: Connection, count: int, after: int | None) -> Sequence[int]:
        """``count`` ids for new ``returns`` rows; ``after`` is the last this transaction took."""
        ...

    def certificates_present(
        self, connection: Connection, keys: Sequence[tuple[str, str]]
    ) -> set[tuple[str, str]]:
        """Which (issuer, serial) pairs the store holds, in one statement."""
        ...

    def write_batch(self, connection: Connection, queued: QueuedWrites) -> None:
        """The batch's writes; ``WriteConflict`` if a conditional write lost a race."""
        ...
