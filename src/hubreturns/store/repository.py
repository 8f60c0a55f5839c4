"""Reads and writes over one SQLAlchemy connection or session; the caller owns the transaction.

The two writes that decide races are conditional, so they hold on SQLite and
on PostgreSQL alike without table locks:

* ``advance_counter`` is one ``INSERT … ON CONFLICT DO UPDATE … WHERE
  last < new``: of two requests with the same counter, exactly one changes a
  row;
* ``claim_device`` sets ``open_return_id`` only where it is still NULL.

A write that changes no row lost the race; in a batch (``Ledger`` deferred
mode) the row counts are summed and checked at ``flush``.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    Integer,
    Select,
    String,
    Subquery,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import ClauseElement, ColumnElement

from hubreturns.logistics.models import DeliveredHub, HubOrder
from hubreturns.model import (
    Channel,
    DeviceType,
    Endpoint,
    ReturnRequest,
    Role,
    SmiStatus,
    UserStatus,
)
from hubreturns.rules import (
    SECMP0039,
    AppointmentFacts,
    Authorisation,
    DeviceFacts,
    EligibilityProfile,
    Facts,
    UserFacts,
    appointing_suppliers,
)
from hubreturns.store.models import (
    Appointment,
    AuditEntry,
    Certificate,
    CertificateChanges,
    CertificateRevocation,
    Device,
    DeviceSupplier,
    ReplayCounter,
    ReturnRecord,
    User,
    counter_text,
)
from hubreturns.wire.certificate import SigningCertificate

__all__ = [
    "AuditFields",
    "CertificateConflict",
    "FactsKey",
    "Ledger",
    "Repository",
    "ReturnFilter",
    "WriteConflict",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFields:
    """What the audit log keeps about one request, accepted or not.

    ``originator`` is a verified sender only; ``claimed_originator`` the
    RequestID's originator when it was not verified (``AuditEntry``).
    """

    received_at: datetime
    channel: Channel
    code: str
    accepted: bool
    reason: str
    http_status: int
    endpoint: str | None = None
    request_id: str | None = None
    originator: str | None = None
    claimed_originator: str | None = None
    service_reference_variant: str | None = None
    device_id: str | None = None
    body_sha256: str | None = None
    body_bytes: int = 0
    return_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnFilter:
    device_id: str | None = None
    originator: str | None = None
    on_behalf_of: str | None = None
    role: str | None = None
    channel: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    #: Rows skipped first (newest first), for paging.
    offset: int = 0


class _Compiled:
    """A Core statement compiled once per dialect and run on the DB-API cursor.

    Why home-made: SQLAlchemy's per-execution machinery (execution context,
    result wrapping, events) costs 10-30 µs a statement, several times what
    SQLite itself spends on these one-row statements, and the request path
    runs five of them per request. What is executed is still SQLAlchemy's: the
    SQL is the dialect's own compilation of the Core statement, and every
    parameter goes through its column type's bind processor, so the stored
    values are those the Core path would store. DB-API errors are wrapped as
    SQLAlchemy's (``DBAPIError.instance``) so callers see one family of errors.
    """

    __slots__ = ("_by_dialect", "_keys", "statement")

    def __init__(self, statement: ClauseElement, keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self._keys = list(keys) if keys is not None else None
        self._by_dialect: dict[str, tuple[str, tuple[_Bind, ...], bool]] = {}

    def form(self, dialect: Dialect) -> tuple[str, tuple[_Bind, ...], bool]:
        """(SQL, ((parameter, bind processor or None, fixed value), ...), positional).

        A parameter the statement fixed itself (a literal such as a JSON path)
        has its value there; the others (``_GIVEN``) come from each execution.
        """
        found = self._by_dialect.get(dialect.name)
        if found is None:
            compiled: Any = self.statement.compile(dialect=dialect, column_keys=self._keys)
            names = compiled.positiontup if compiled.positional else list(compiled.binds)
            binds = []
            for name in names:
                bind = compiled.binds[name]
                processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
                fixed = _GIVEN if bind.required or bind.value is None else bind.value
                binds.append((name, processor, fixed))
            found = (compiled.string, tuple(binds), bool(compiled.positional))
            self._by_dialect[dialect.name] = found
        return found


#: A compiled parameter: name, bind processor, and its fixed value or ``_GIVEN``.
_Bind = tuple[str, Any, Any]
#: Marks a parameter whose value each execution gives.
_GIVEN: Any = object()


#: What a request's facts are read by: (originator, device_id).
FactsKey = tuple[str, str]


def _facts_statement(keys: Subquery) -> Select[*tuple[Any, ...]]:
    """User, replay counter, device and its suppliers for each row of ``keys``.

    ``keys`` has the columns ``originator`` and ``device_id``: one row of bound
    parameters for one request, or a table of them for a batch.
    """
    return (
        select(
            keys.c.originator.label("key_originator"),
            keys.c.device_id.label("key_device"),
            User.user_id,
            User.role,
            User.status,
            ReplayCounter.last_counter,
            Device.device_id.label("found_device"),
            Device.device_type,
            Device.smi_status,
            Device.gpf_id,
            Device.open_return_id,
            DeviceSupplier.supplier_user_id,
        )
        .select_from(keys)
        .outerjoin(User, User.user_id == keys.c.originator)
        .outerjoin(ReplayCounter, ReplayCounter.originator == keys.c.originator)
        .outerjoin(Device, Device.device_id == keys.c.device_id)
        .outerjoin(DeviceSupplier, DeviceSupplier.device_id == Device.device_id)
    )


_FACTS = _Compiled(
    _facts_statement(
        select(
            bindparam("originator", type_=String(23)).label("originator"),
            bindparam("device_id", type_=String(23)).label("device_id"),
        ).subquery("k")
    )
)


def _pg_facts_many() -> Select[*tuple[Any, ...]]:
    """``_FACTS`` for a batch on PostgreSQL: two arrays of keys, each table looked up
    by key in a fenced subquery.

    ``OFFSET 0`` keeps the planner from turning the look-ups into joins, so the
    plan is index look-ups per key whatever the tables' sizes and however many
    keys a batch holds. That makes one plan right for every batch, and the
    committer's connection keeps it (``db.writer_connection``): left to choose, the
    planner plans anew for each array size, which costs more than the read.
    """
    k = (
        func.unnest(
            bindparam("originators", type_=postgresql.ARRAY(String(23))),
            bindparam("devices", type_=postgresql.ARRAY(String(23))),
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
        Device.device_id == k.c.device_id,
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
            k.c.originator,
            k.c.device_id,
            user.c.user_id,
            user.c.role,
            user.c.status,
            counter.c.last_counter,
            device.c.device_id,
            device.c.device_type,
            device.c.smi_status,
            device.c.gpf_id,
            device.c.open_return_id,
            suppliers.c.supplier_user_id,
            ids,
        )
        .select_from(k)
        .outerjoin(user, true())
        .outerjoin(counter, true())
        .outerjoin(device, true())
        .outerjoin(suppliers, true())
    )


def _sqlite_keys(first: str = "originator", second: str = "device_id") -> Subquery:
    """A table of pairs on SQLite from one parameter: a JSON array of [first, second]
    pairs (``_sqlite_pairs``); by default a batch's facts keys."""
    table = func.json_each(bindparam("pairs", type_=String())).table_valued("value")
    return select(
        func.json_extract(table.c.value, "$[0]").label(first),
        func.json_extract(table.c.value, "$[1]").label(second),
    ).subquery("k")


def _pg_pairs(keys: Sequence[FactsKey]) -> dict[str, Any]:
    """The keys as two arrays, and as many return ids asked for as keys."""
    return {
        "originators": [k[0] for k in keys],
        "devices": [k[1] for k in keys],
        "n": len(keys),
    }


def _sqlite_pairs(keys: Sequence[tuple[str, str]]) -> dict[str, Any]:
    return {"pairs": json.dumps(keys)}


#: The batch form of ``_FACTS`` where the dialect can pass a table of keys as one
#: parameter, with the function that builds that parameter; other dialects read
#: a batch's facts one request at a time.
_FACTS_MANY: dict[str, tuple[_Compiled, Callable[[Sequence[FactsKey]], dict[str, Any]]]] = {
    "postgresql": (_Compiled(_pg_facts_many()), _pg_pairs),
    "sqlite": (_Compiled(_facts_statement(_sqlite_keys())), _sqlite_pairs),
}

#: ``n`` ids for new ``returns`` rows from the table's own sequence (PostgreSQL).
_PG_RETURN_IDS = _Compiled(
    select(func.nextval(func.pg_get_serial_sequence("returns", "id"))).select_from(
        func.generate_series(1, bindparam("n", type_=Integer()))
    )
)
#: The highest ``returns`` id so far (SQLite, inside the write transaction).
_LAST_RETURN_ID = _Compiled(select(func.coalesce(func.max(ReturnRecord.id), 0)))

#: The hub claim: set ``open_return_id`` only where it is still NULL.
_CLAIM = _Compiled(
    update(Device)
    .where(
        Device.device_id == bindparam("b_device", type_=String(23)),
        Device.open_return_id.is_(None),
    )
    .values(
        open_return_id=bindparam("b_return", type_=Device.__table__.c.open_return_id.type),
        updated_at=bindparam("b_now", type_=Device.__table__.c.updated_at.type),
    )
    .execution_options(synchronize_session=False)
)

_ADVANCE: dict[str, _Compiled] = {}

#: An RSA's appointments with their appointing users' registry entries; which of
#: them hold at a moment is ``rules.APPOINTMENT_RULES``' to say.
_APPOINTMENTS = (
    select(
        Appointment.supplier_user_id,
        User.role,
        User.status,
        Appointment.valid_from,
        Appointment.valid_to,
        Appointment.revoked_at,
    )
    .outerjoin(User, User.user_id == Appointment.supplier_user_id)
    .where(Appointment.rsa_user_id == bindparam("b_rsa", type_=String(23)))
)

#: The Supplier whose order, placed by this user, the hub was delivered against
#: (logistics records); read only under a profile that authorises orderers.
_ORDERED_FOR = (
    select(HubOrder.supplier_user_id)
    .join(DeliveredHub, DeliveredHub.order_id == HubOrder.id)
    .where(
        DeliveredHub.device_id == bindparam("b_device", type_=String(23)),
        HubOrder.placed_by == bindparam("b_placed_by", type_=String(23)),
    )
)

_CERTIFICATE_PEM = (
    select(Certificate.pem, CertificateRevocation.revoked_at)
    .outerjoin(
        CertificateRevocation,
        and_(
            CertificateRevocation.issuer == Certificate.issuer,
            CertificateRevocation.serial == Certificate.serial,
        ),
    )
    .where(
        Certificate.issuer == bindparam("b_issuer", type_=Certificate.__table__.c.issuer.type),
        Certificate.serial == bindparam("b_serial", type_=Certificate.__table__.c.serial.type),
    )
)
_CERTIFICATE_GENERATION = select(CertificateChanges.generation).where(CertificateChanges.id == 1)


def _certificate_keys(dialect: str) -> Any:
    """A table of (issuer, serial) pairs given as one parameter (``certificates_present``)."""
    if dialect == "postgresql":
        return (
            func.unnest(
                bindparam("issuers", type_=postgresql.ARRAY(String())),
                bindparam("serials", type_=postgresql.ARRAY(String())),
            )
            .table_valued("issuer", "serial")
            .render_derived(name="k")
        )
    return _sqlite_keys("issuer", "serial")


#: Which pairs of a list the store holds: one statement, one or two parameters,
#: compiled once. (A tuple ``IN`` costs SQLAlchemy a compilation per list and
#: two parameters per pair; for a cache's worth of pairs that stalled the loop
#: for some 80 ms through the GIL.)
_CERTIFICATES_PRESENT = {
    dialect: _Compiled(
        select(Certificate.issuer, Certificate.serial)
        .select_from(keys)
        .join(
            Certificate,
            and_(Certificate.issuer == keys.c.issuer, Certificate.serial == keys.c.serial),
        )
    )
    for dialect, keys in (
        ("postgresql", _certificate_keys("postgresql")),
        ("sqlite", _certificate_keys("sqlite")),
    )
}

#: What ``add_return`` is given: every column but the key.
RETURN_COLUMNS = tuple(c.name for c in ReturnRecord.__table__.c if c.name != "id")
_AUDIT_COLUMNS = tuple(c.name for c in AuditEntry.__table__.c if c.name != "id")
_ADD_RETURN = _Compiled(insert(ReturnRecord).returning(ReturnRecord.id), RETURN_COLUMNS)
#: A ``returns`` row whose id was reserved beforehand (a batch's deferred writes).
_ADD_RETURN_WITH_ID = _Compiled(insert(ReturnRecord), ("id", *RETURN_COLUMNS))
_ADD_AUDIT = _Compiled(insert(AuditEntry), _AUDIT_COLUMNS)


def _pg_array_type(column: ColumnElement[Any]) -> str:
    """The column's PostgreSQL type as an array, without a length: a cast to
    ``VARCHAR(80)`` would cut a longer value short, where the insert refuses it."""
    name = column.type.compile(dialect=PGDialect())  # type: ignore[no-untyped-call]
    return re.sub(r"\(\d+\)", "", name) + "[]"


def _pg_arrays(table: Any, columns: Sequence[str], prefix: str) -> str:
    """``%(<prefix><column>)b::<type>[]`` for each column: one binary array parameter each."""
    return ", ".join(f"%({prefix}{c})b::{_pg_array_type(table.c[c])}" for c in columns)


class _PgBatchWrite:
    """A PostgreSQL batch's writes as one statement: each kind of row a data-modifying
    ``WITH`` part over arrays (one element per row, sent in binary), and the rows the
    conditional parts changed as its result.

    Why one statement: every statement is a message to the server and a wait
    for its answer, and in the writer thread every wait gives up the GIL,
    which the event loop then holds for up to 5 ms before the thread can go
    on. With a statement per kind of row (earlier rounds: one per row, then
    one per kind) a batch's writes were five such waits; here they are one,
    and on the committer's connection (``db.writer_connection``, autocommit) it
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
    again one by one (``hubreturns.committer``).
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
    RETURN_COLUMNS = ("id", *RETURN_COLUMNS)
    RECORDED = (
        f"INSERT INTO returns ({', '.join(RETURN_COLUMNS)})"
        f" SELECT * FROM unnest({_pg_arrays(ReturnRecord.__table__, RETURN_COLUMNS, 'r_')})"
    )
    AUDITED = (
        f"INSERT INTO audit_log ({', '.join(_AUDIT_COLUMNS)})"
        f" SELECT * FROM unnest({_pg_arrays(AuditEntry.__table__, _AUDIT_COLUMNS, 'a_')})"
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
            arrays("a_", audit, _AUDIT_COLUMNS)
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


def _advance_statement(dialect: str) -> _Compiled:
    """The conditional counter advance for ``dialect``, built once per dialect.

    It changes one row (inserted or moved up) or none (the counter is not
    higher): the row count says which, for one request or summed over a batch.
    """
    statement = _ADVANCE.get(dialect)
    if statement is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        columns = ReplayCounter.__table__.c
        values = insert(ReplayCounter).values(
            originator=bindparam("b_originator", type_=columns.originator.type),
            last_counter=bindparam("b_counter", type_=columns.last_counter.type),
            updated_at=bindparam("b_now", type_=columns.updated_at.type),
        )
        upsert = values.on_conflict_do_update(
            index_elements=[ReplayCounter.originator],
            set_={
                "last_counter": values.excluded.last_counter,
                "updated_at": values.excluded.updated_at,
            },
            where=ReplayCounter.last_counter < values.excluded.last_counter,
        )
        statement = _ADVANCE[dialect] = _Compiled(upsert)
    return statement


#: SQLSTATE of ``hubreturns_batch_written``: a batch's write lost a race (PostgreSQL).
_LOST_RACE = "HR409"


class WriteConflict(Exception):
    """A batch's deferred conditional write changed fewer rows than it was decided on.

    Another process won a race for a counter or a hub between the batch's read
    and its write. The batch must be rolled back and its requests decided again
    one by one, where the loser is refused (the group committer does this).
    """


class Ledger:
    """The request path's statements, over one Connection whose transaction the caller owns.

    Plain Core execution on a Connection skips the ORM's statement and
    unit-of-work processing, which cost more than the SQL itself.
    ``Repository`` exposes the same calls over a Session.

    A ``deferred`` ledger serves a batch of requests in one transaction (the
    group committer, ``hubreturns.committer``) with a constant number of
    database round trips instead of several per request:

    * ``prefetch`` reads every request's facts in one statement (on PostgreSQL
      with the ids for the batch's new returns);
    * the writes are queued and ``flush`` sends them as one ``executemany``
      per statement (on PostgreSQL as one statement over arrays,
      ``_PgBatchWrite``), counters and hubs in key order so that concurrent
      batches lock rows in the same order;
    * the facts of a later request in the batch see the earlier requests'
      counter advances and hub claims, the only facts a request changes, so
      each request is decided as if the ones before it had been written;
    * a conditional write that changes fewer rows than decided raises
      ``WriteConflict``: another process won that race after the read.
    """

    __slots__ = (
        "_advances",
        "_audit",
        "_claimed",
        "_claims",
        "_counters",
        "_cursor",
        "_facts",
        "_ids",
        "_last_id",
        "_returns",
        "connection",
        "deferred",
    )

    def __init__(self, connection: Connection, *, deferred: bool = False) -> None:
        self.connection = connection
        self.deferred = deferred
        self._cursor: Any = None
        self._audit: list[Mapping[str, Any]] = []
        #: Deferred mode: rows read by ``prefetch``, by key.
        self._facts: dict[FactsKey, list[Any]] = {}
        #: Deferred mode: return ids reserved for this batch, next first.
        self._ids: deque[int] = deque()
        #: Deferred mode on SQLite: the last return id this batch has taken.
        self._last_id: int | None = None
        #: Deferred mode: queued writes, and what they change in later facts.
        self._advances: list[Mapping[str, Any]] = []
        self._returns: list[Mapping[str, Any]] = []
        self._claims: list[Mapping[str, Any]] = []
        self._counters: dict[str, int] = {}
        self._claimed: set[str] = set()

    # -- running statements -------------------------------------------------------

    def _run(self, statement: _Compiled, parameters: Any, *, many: bool = False) -> Any:
        """Execute on the DB-API cursor of this connection's transaction; see ``_Compiled``."""
        return self._execute(self._raw_cursor(), statement, parameters, many=many)

    def _raw_cursor(self) -> Any:
        if self._cursor is None:
            # Begins the SQLAlchemy transaction first, if it is not already begun.
            self._cursor = self._driver().cursor()
        return self._cursor

    def _driver(self) -> Any:
        return self.connection.connection.driver_connection

    def _execute(
        self, cursor: Any, statement: _Compiled, parameters: Any, *, many: bool = False
    ) -> Any:
        dialect = self.connection.dialect
        sql, binds, positional = statement.form(dialect)

        def values(given: Mapping[str, Any]) -> Any:
            converted = []
            for name, convert, fixed in binds:
                value = given[name] if fixed is _GIVEN else fixed
                converted.append((name, convert(value) if convert is not None else value))
            return [v for _, v in converted] if positional else dict(converted)

        try:
            if many:
                cursor.executemany(sql, [values(row) for row in parameters])
            elif dialect.name == "postgresql":
                # Prepared from the first use: the same few statements serve every request.
                cursor.execute(sql, values(parameters), prepare=True)
            else:
                cursor.execute(sql, values(parameters))
        except dialect.loaded_dbapi.Error as exc:
            raise _wrapped(sql, parameters, exc, dialect) from exc
        return cursor

    def certificate(self, issuer: str, serial: int) -> SigningCertificate | None:
        """The stored certificate, with its revocation if one is recorded."""
        row = self.connection.execute(
            _CERTIFICATE_PEM, {"b_issuer": issuer, "b_serial": str(serial)}
        ).first()
        if row is None:
            return None
        cert = SigningCertificate.from_pem(row.pem.encode())
        return replace(cert, revoked_at=row.revoked_at) if row.revoked_at is not None else cert

    def certificate_generation(self) -> int:
        """The number every revocation and removal raises (``CertificateCache`` polls it)."""
        return int(self.connection.execute(_CERTIFICATE_GENERATION).scalar_one())

    def certificates_present(self, keys: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of these (issuer, serial) pairs the store still holds: one statement."""
        wanted = [(issuer, str(serial)) for issuer, serial in keys]
        if not wanted:
            return set()
        if self.connection.dialect.name == "postgresql":
            parameters: dict[str, Any] = {
                "issuers": [issuer for issuer, _ in wanted],
                "serials": [serial for _, serial in wanted],
            }
        else:
            parameters = _sqlite_pairs(wanted)
        statement = _CERTIFICATES_PRESENT[self.connection.dialect.name]
        rows = self._execute(self.connection.connection.cursor(), statement, parameters)
        return {(issuer, int(serial)) for issuer, serial in rows.fetchall()}

    # -- facts for the decision -------------------------------------------------

    def appointments(self, rsa_user_id: str) -> list[AppointmentFacts]:
        """Every stored appointment of this RSA, with its appointing user's registry entry."""
        rows = self.connection.execute(_APPOINTMENTS, {"b_rsa": rsa_user_id})
        return [
            AppointmentFacts(
                supplier_user_id=supplier,
                supplier_role=role,
                supplier_status=status,
                valid_from=valid_from,
                valid_to=valid_to,
                revoked_at=revoked_at,
            )
            for supplier, role, status, valid_from, valid_to, revoked_at in rows
        ]

    def appointed_by(self, rsa_user_id: str, now: datetime) -> frozenset[str]:
        """Suppliers whose appointment of this RSA holds at ``now`` (``rules``)."""
        return appointing_suppliers(self.appointments(rsa_user_id), now)

    def ordered_for(self, user_id: str, device_id: str) -> frozenset[str]:
        """Suppliers whose order placed by ``user_id`` the hub was delivered against."""
        rows = self.connection.execute(
            _ORDERED_FOR, {"b_device": device_id, "b_placed_by": user_id}
        )
        return frozenset(rows.scalars())

    def prefetch(self, keys: Iterable[FactsKey]) -> None:
        """Deferred mode: read the facts of a batch's requests, and reserve their return ids.

        A request whose key was not prefetched has its facts read when asked.
        """
        assert self.deferred, "prefetch serves a deferred (batch) ledger"
        wanted = list(dict.fromkeys(keys))
        batch_form = _FACTS_MANY.get(self.connection.dialect.name)
        if not wanted or batch_form is None:
            return
        statement, parameters = batch_form
        rows = self._run(statement, parameters(wanted)).fetchall()
        if self.connection.dialect.name == "postgresql":
            # The last column is the batch's return ids, the same on every row.
            self._ids.extend(rows[0][-1])
            rows = [row[:-1] for row in rows]
        for row in rows:
            self._facts.setdefault((row[0], row[1]), []).append(row)

    def facts(
        self,
        request: ReturnRequest,
        *,
        endpoint: Endpoint,
        access_control_broker: str,
        now: datetime,
        check_counter: bool = True,
        eligibility: EligibilityProfile = SECMP0039,
    ) -> Facts:
        # One statement, one round trip, one snapshot: user, counter, device and
        # its suppliers are read together. At READ COMMITTED an accepted request
        # commits its hub claim and counter together, so a claim seen here comes
        # with its counter (an identical concurrent request gets REPLAY, not OPEN_RETURN).
        key = (request.originator, request.device_id)
        rows = self._facts.get(key)
        if rows is None:
            rows = self._run(_FACTS, {"originator": key[0], "device_id": key[1]}).fetchall()
        (_, _, user_id, role, status, counter, found, device_type, smi, gpf, open_return, _) = rows[
            0
        ]
        user = (
            UserFacts(user_id=user_id, role=Role(role), status=UserStatus(status))
            if user_id is not None
            else None
        )
        device = (
            DeviceFacts(
                device_id=found,
                device_type=DeviceType(device_type),
                smi_status=SmiStatus(smi),
                responsible_suppliers=frozenset(r[-1] for r in rows if r[-1] is not None),
                gpf_id=gpf,
                has_open_return=open_return is not None or found in self._claimed,
            )
            if found is not None
            else None
        )
        last_counter = int(counter) if counter is not None else None
        queued = self._counters.get(request.originator)
        if queued is not None and (last_counter is None or queued > last_counter):
            last_counter = queued
        # The authorisation facts cost a statement each: read only those the
        # profile's row for the sender's role can use.
        grant = eligibility.grant(user.role) if user is not None else None
        kinds = grant.authorisations if grant is not None else ()
        appointed_by = ordered_for = frozenset[str]()
        if user is not None and Authorisation.APPOINTED in kinds:
            appointed_by = self.appointed_by(user.user_id, now)
        if user is not None and device is not None and Authorisation.ORDERED in kinds:
            ordered_for = self.ordered_for(user.user_id, device.device_id)
        return Facts(
            request=request,
            endpoint=endpoint,
            access_control_broker=access_control_broker,
            user=user,
            last_counter=last_counter if check_counter else None,
            device=device,
            appointed_by=appointed_by,
            ordered_for=ordered_for,
            eligibility=eligibility,
        )

    # -- the accepted-request writes --------------------------------------------

    def advance_counter(self, originator: str, counter: int, now: datetime) -> bool:
        """Move the originator's counter up to ``counter``; False if it is not higher.

        Deferred: queued, and True unless this batch has already gone as high;
        ``flush`` checks it against the database.
        """
        parameters = {"b_originator": originator, "b_counter": counter_text(counter), "b_now": now}
        if self.deferred:
            if self._counters.get(originator, -1) >= counter:
                return False
            self._counters[originator] = counter
            self._advances.append(parameters)
            return True
        statement = _advance_statement(self.connection.dialect.name)
        return bool(self._run(statement, parameters).rowcount == 1)

    def claim_device(self, device_id: str, return_id: int, now: datetime) -> bool:
        """Mark the hub as having an open return; False if it already has one.

        Deferred: queued, and True unless this batch has already claimed it;
        ``flush`` checks it against the database.
        """
        parameters = {"b_device": device_id, "b_return": return_id, "b_now": now}
        if self.deferred:
            if device_id in self._claimed:
                return False
            self._claimed.add(device_id)
            self._claims.append(parameters)
            return True
        return bool(self._run(_CLAIM, parameters).rowcount == 1)

    def add_return(self, values: Mapping[str, Any]) -> int:
        """Insert one ``returns`` row (column name -> value); returns its id.

        Deferred: the id is one reserved for the batch, the row is queued.
        """
        if not self.deferred:
            return int(self._run(_ADD_RETURN, values).fetchone()[0])
        return_id = self._reserved_id()
        self._returns.append({**values, "id": return_id})
        return return_id

    def _reserved_id(self) -> int:
        if self._ids:
            return self._ids.popleft()
        if self.connection.dialect.name == "postgresql":
            return int(self._run(_PG_RETURN_IDS, {"n": 1}).fetchone()[0])
        # SQLite admits one writer, and this transaction is it: nobody else can
        # take the ids above the highest one until it ends.
        if self._last_id is None:
            self._last_id = int(self._run(_LAST_RETURN_ID, {}).fetchone()[0])
        self._last_id += 1
        return self._last_id

    def add_audit(self, fields: AuditFields) -> None:
        values = {name: getattr(fields, name) for name in _AUDIT_COLUMNS}
        values["channel"] = fields.channel.value
        if self.deferred:
            self._audit.append(values)
        else:
            self._run(_ADD_AUDIT, values)

    def flush(self) -> None:
        """Deferred mode: write the queued rows (before the transaction commits).

        Raises ``WriteConflict`` if a counter advance or a hub claim changed
        fewer rows than were queued.
        """
        queued = self._take_queued()
        if self.connection.dialect.name == "postgresql":
            self._flush_postgresql(queued)
            return
        advances, returns, claims, audit = queued
        writes = [
            _Write(kind, statement, rows, len(rows) if kind in ("advances", "claims") else None)
            for kind, statement, rows in (
                ("advances", _advance_statement(self.connection.dialect.name), advances),
                ("returns", _ADD_RETURN_WITH_ID, returns),
                ("claims", _CLAIM, claims),
                ("audit", _ADD_AUDIT, audit),
            )
            if rows
        ]
        driver = self._driver()
        changed = []
        for write in writes:
            cursor = driver.cursor()
            self._execute(cursor, write.statement, write.parameters, many=True)
            changed.append(cursor.rowcount)
        _check_changed(writes, changed)

    def _take_queued(self) -> _Queued:
        """The queued rows, emptying the queues; counters and hubs in key order, so
        that concurrent batches lock rows in the same order."""
        queued = _Queued(
            advances=sorted(self._advances, key=lambda p: (p["b_originator"], p["b_counter"])),
            returns=self._returns,
            claims=sorted(self._claims, key=lambda p: p["b_device"]),
            audit=self._audit,
        )
        self._advances, self._claims, self._returns, self._audit = [], [], [], []
        return queued

    def _flush_postgresql(self, queued: _Queued) -> None:
        """The batch's writes in one statement (``_PgBatchWrite``), then its counts checked."""
        if not any(queued):
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
        sql, parameters = _PgBatchWrite.statement(counters, queued.returns, hubs, queued.audit)
        cursor = self._driver().cursor()
        try:
            cursor.execute(sql, parameters, prepare=True)
            moved, claimed, _ = cursor.fetchone()
        except self.connection.dialect.loaded_dbapi.Error as exc:
            if getattr(exc, "sqlstate", None) == _LOST_RACE:
                # The statement refused itself (migration 0006): nothing of it was written.
                raise WriteConflict(exc.diag.message_primary or str(exc)) from exc
            raise _wrapped(sql, None, exc, self.connection.dialect) from exc
        # The statement has checked these itself; a second look costs nothing.
        for kind, done, expected in (
            ("advances", moved, len(counters)),
            ("claims", claimed, len(hubs)),
        ):
            if done != expected:
                raise WriteConflict(
                    f"{kind}: {done} of {expected} rows changed; another process won a race"
                )


class _Queued(NamedTuple):
    """A deferred ledger's rows, queued for ``flush``."""

    advances: list[Mapping[str, Any]]
    returns: list[Mapping[str, Any]]
    claims: list[Mapping[str, Any]]
    audit: list[Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class _Write:
    """One statement of a SQLite batch's writes, and the rows its kind must change
    (counter advances and hub claims; None for plain inserts)."""

    kind: str
    statement: _Compiled
    parameters: Any
    must_change: int | None = None


def _check_changed(writes: list[_Write], changed: Sequence[int]) -> None:
    """``WriteConflict`` if the counter advances or the hub claims changed fewer rows,
    summed over their statements, than were queued: another process won a race."""
    wanted: dict[str, int] = {}
    done: dict[str, int] = {}
    for write, count in zip(writes, changed, strict=True):
        done[write.kind] = done.get(write.kind, 0) + count
        if write.must_change is not None:
            wanted[write.kind] = wanted.get(write.kind, 0) + write.must_change
    for kind, expected in wanted.items():
        if done[kind] != expected:
            raise WriteConflict(
                f"{kind}: {done[kind]} of {expected} rows changed; another process won a race"
            )


def _wrapped(sql: str, parameters: Any, error: Exception, dialect: Dialect) -> StatementError:
    """A driver's error as SQLAlchemy's, so callers see one family of errors."""
    return DBAPIError.instance(sql, parameters, error, dialect.loaded_dbapi.Error, dialect=dialect)


class CertificateConflict(Exception):
    """Different certificates already stored under these certificates' issuer and serial."""

    def __init__(self, certificates: Sequence[SigningCertificate]) -> None:
        self.certificates = list(certificates)
        keys = ", ".join(f"{c.issuer} serial {c.serial}" for c in self.certificates)
        super().__init__(f"a different certificate is already stored for {keys}")


class Repository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @property
    def ledger(self) -> Ledger:
        """The request path's statements on this session's connection."""
        return Ledger(self.session.connection())

    # -- facts for the decision -------------------------------------------------

    def user_facts(self, user_id: str) -> UserFacts | None:
        """The registry entry of a User ID, or None."""
        row = self.session.get(User, user_id)
        if row is None:
            return None
        return UserFacts(user_id=row.user_id, role=row.role, status=row.status)

    def appointed_by(self, rsa_user_id: str, now: datetime) -> frozenset[str]:
        """Active Suppliers whose appointment of this RSA is valid at ``now``."""
        return self.ledger.appointed_by(rsa_user_id, now)

    def facts(
        self,
        request: ReturnRequest,
        *,
        endpoint: Endpoint,
        access_control_broker: str,
        now: datetime,
        check_counter: bool = True,
        eligibility: EligibilityProfile = SECMP0039,
    ) -> Facts:
        return self.ledger.facts(
            request,
            endpoint=endpoint,
            access_control_broker=access_control_broker,
            now=now,
            check_counter=check_counter,
            eligibility=eligibility,
        )

    def advance_counter(self, originator: str, counter: int, now: datetime) -> bool:
        return self.ledger.advance_counter(originator, counter, now)

    def claim_device(self, device_id: str, return_id: int, now: datetime) -> bool:
        return self.ledger.claim_device(device_id, return_id, now)

    def add_return(self, values: Mapping[str, Any]) -> int:
        return self.ledger.add_return(values)

    def add_audit(self, fields: AuditFields) -> None:
        self.ledger.add_audit(fields)

    # -- the SMKI repository ------------------------------------------------------

    def certificate(self, issuer: str, serial: int) -> SigningCertificate | None:
        return self.ledger.certificate(issuer, serial)

    def add_certificates(
        self, certs: Iterable[SigningCertificate], now: datetime
    ) -> list[SigningCertificate]:
        """Store the certificates not held yet; returns those. An identical one is a no-op.

        Raises ``CertificateConflict`` (nothing is written by this call) if a
        *different* certificate is already stored under one's issuer and
        serial: a certificate from another CA that copies a trusted one's
        issuer name and serial must never replace it.
        """
        added: list[SigningCertificate] = []
        conflicts: list[SigningCertificate] = []
        for cert in certs:
            held = self.session.get(Certificate, (cert.issuer, str(cert.serial)))
            if held is None:
                added.append(cert)
            elif held.pem != cert.pem.decode():
                conflicts.append(cert)
        if conflicts:
            raise CertificateConflict(conflicts)
        self.session.add_all(
            Certificate(
                issuer=cert.issuer,
                serial=str(cert.serial),
                eui=cert.eui,
                organisational_units=",".join(sorted(cert.organisational_units)),
                not_before=cert.not_before,
                not_after=cert.not_after,
                pem=cert.pem.decode(),
                loaded_at=now,
            )
            for cert in added
        )
        return added

    def stored_certificates(
        self, eui: str | None = None
    ) -> list[tuple[Certificate, CertificateRevocation | None]]:
        """Every stored certificate (or one User's) with its revocation, by issuer and serial."""
        query = select(Certificate, CertificateRevocation).outerjoin(
            CertificateRevocation,
            and_(
                CertificateRevocation.issuer == Certificate.issuer,
                CertificateRevocation.serial == Certificate.serial,
            ),
        )
        if eui is not None:
            query = query.where(Certificate.eui == eui)
        rows = [(cert, revoked) for cert, revoked in self.session.execute(query)]
        return sorted(rows, key=lambda row: (row[0].issuer, int(row[0].serial)))

    def revocation(self, issuer: str, serial: int) -> CertificateRevocation | None:
        return self.session.get(CertificateRevocation, (issuer, str(serial)))

    def revoke_certificate(
        self, issuer: str, serial: int, *, revoked_at: datetime, reason: str, now: datetime
    ) -> bool:
        """Record a revocation; False if one was already recorded (the first one stays).

        Recorded whether or not the certificate is stored: a revoked
        certificate loaded later is refused all the same.
        """
        if self.revocation(issuer, serial) is not None:
            return False
        self.session.add(
            CertificateRevocation(
                issuer=issuer,
                serial=str(serial),
                revoked_at=revoked_at,
                reason=reason[:200],
                recorded_at=now,
            )
        )
        self._certificates_changed()
        return True

    def remove_certificate(self, issuer: str, serial: int) -> bool:
        """Delete a stored certificate (its revocation, if any, stays); False if none."""
        held = self.session.get(Certificate, (issuer, str(serial)))
        if held is None:
            return False
        self.session.delete(held)
        self._certificates_changed()
        return True

    def _certificates_changed(self) -> None:
        """Raise the change number, so every worker drops its cached certificates."""
        self.session.flush()
        self.session.execute(
            update(CertificateChanges)
            .where(CertificateChanges.id == 1)
            .values(generation=CertificateChanges.generation + 1)
        )

    # -- registry and inventory loads (idempotent upserts) ------------------------

    def upsert_user(
        self, user_id: str, role: Role, name: str, status: UserStatus, now: datetime
    ) -> None:
        self.session.merge(
            User(user_id=user_id, role=role, name=name, status=status, updated_at=now)
        )

    def upsert_device(
        self,
        *,
        device_id: str,
        device_type: DeviceType,
        smi_status: SmiStatus,
        responsible_suppliers: Iterable[str],
        gpf_id: str | None,
        now: datetime,
    ) -> None:
        existing = self.session.get(Device, device_id)
        if existing is None:
            self.session.add(
                Device(
                    device_id=device_id,
                    device_type=device_type,
                    smi_status=smi_status,
                    gpf_id=gpf_id,
                    updated_at=now,
                )
            )
        else:
            existing.device_type = device_type
            existing.smi_status = smi_status
            existing.gpf_id = gpf_id
            existing.updated_at = now
        self.session.flush()
        self.session.execute(delete(DeviceSupplier).where(DeviceSupplier.device_id == device_id))
        for supplier in sorted(set(responsible_suppliers)):
            self.session.add(DeviceSupplier(device_id=device_id, supplier_user_id=supplier))

    def appoint(
        self,
        rsa_user_id: str,
        supplier_user_id: str,
        valid_from: datetime,
        valid_to: datetime | None,
    ) -> Appointment:
        """Record (or update) a Supplier's confirmation of an RSA; idempotent."""
        row = self.session.scalar(
            select(Appointment).where(
                Appointment.rsa_user_id == rsa_user_id,
                Appointment.supplier_user_id == supplier_user_id,
                Appointment.valid_from == valid_from,
            )
        )
        if row is None:
            row = Appointment(
                rsa_user_id=rsa_user_id,
                supplier_user_id=supplier_user_id,
                valid_from=valid_from,
                valid_to=valid_to,
            )
            self.session.add(row)
        else:
            row.valid_to = valid_to
            row.revoked_at = None
        self.session.flush()
        return row

    def revoke(self, rsa_user_id: str, supplier_user_id: str, now: datetime) -> int:
        """Withdraw every open appointment of the RSA by the Supplier; returns how many."""
        result = self.session.execute(
            update(Appointment)
            .where(
                Appointment.rsa_user_id == rsa_user_id,
                Appointment.supplier_user_id == supplier_user_id,
                Appointment.revoked_at.is_(None),
            )
            .values(revoked_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    # -- queries --------------------------------------------------------------------

    def returns(self, where: ReturnFilter) -> Sequence[ReturnRecord]:
        query = select(ReturnRecord)
        conditions = [
            column == value
            for column, value in (
                (ReturnRecord.device_id, where.device_id),
                (ReturnRecord.originator, where.originator),
                (ReturnRecord.on_behalf_of, where.on_behalf_of),
                (ReturnRecord.role, where.role),
                (ReturnRecord.channel, where.channel),
                (ReturnRecord.status, where.status),
            )
            if value is not None
        ]
        if where.since is not None:
            conditions.append(ReturnRecord.received_at >= where.since)
        if where.until is not None:
            conditions.append(ReturnRecord.received_at < where.until)
        if conditions:
            query = query.where(and_(*conditions))
        query = query.order_by(ReturnRecord.id.desc()).limit(where.limit).offset(where.offset)
        return self.session.scalars(query).all()

    def audit(
        self,
        *,
        originator: str | None = None,
        code: str | None = None,
        accepted: bool | None = None,
        limit: int = 100,
        device_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
    ) -> Sequence[AuditEntry]:
        """Audit rows, newest first; ``originator`` matches a verified sender or a claimed one.

        ``since`` is inclusive, ``until`` exclusive.

        An operator looking into a User's traffic needs to see what was sent in
        its name too; each row says which of the two it is.
        """
        query = select(AuditEntry)
        if device_id is not None:
            query = query.where(AuditEntry.device_id == device_id)
        if since is not None:
            query = query.where(AuditEntry.received_at >= since)
        if until is not None:
            query = query.where(AuditEntry.received_at < until)
        if originator is not None:
            query = query.where(
                or_(
                    AuditEntry.originator == originator,
                    AuditEntry.claimed_originator == originator,
                )
            )
        if code is not None:
            query = query.where(AuditEntry.code == code)
        if accepted is not None:
            query = query.where(AuditEntry.accepted.is_(accepted))
        query = query.order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
        return self.session.scalars(query).all()

    def counts(self) -> dict[str, int]:
        """Row counts of the main tables (for ``hubreturns status`` and tests)."""
        tables = {
            "users": User,
            "certificates": Certificate,
            "appointments": Appointment,
            "devices": Device,
            "returns": ReturnRecord,
            "audit_log": AuditEntry,
        }
        return {
            name: int(self.session.scalar(select(func.count()).select_from(model)) or 0)
            for name, model in tables.items()
        }
