"""The store on SQLite and PostgreSQL: the conditional writes that settle races, the
appointment validity query, and the Alembic migrations."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Select, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from hubreturns.dcc.store import statements
from hubreturns.dcc.store.backend import FactsReader, FactsRow, facts_columns
from hubreturns.dcc.store.db import make_engine, migrate
from hubreturns.dcc.store.models import Base, Certificate, Device, DeviceSupplier, ReplayCounter
from hubreturns.dcc.store.repository import Ledger, Repository
from hubreturns.model import DeviceType, Role, SmiStatus, UserStatus

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
IS, GS, RSA = "90-B3-D5-1F-30-01-00-00", "90-B3-D5-1F-30-02-00-00", "00-DB-12-34-56-78-00-04"
HUB = "00-DB-12-34-56-78-90-A2"
CORE_TABLES = {
    "users",
    "certificates",
    "appointments",
    "devices",
    "device_suppliers",
    "returns",
    "replay_counters",
    "audit_log",
}


@pytest.fixture
def repo(sessions: sessionmaker[Session]) -> Iterator[Repository]:
    """A repository in one open transaction (rolled back at the end)."""
    with sessions() as session, session.begin():
        yield Repository(session)
        session.rollback()


def _advance(sessions: sessionmaker[Session], counter: int, who: str = IS) -> bool:
    """One counter advance in its own committed transaction, as the request path does."""
    with sessions.begin() as session:
        return Repository(session).ledger.advance_counter(who, counter, NOW)


def _stored(sessions: sessionmaker[Session], who: str = IS) -> str | None:
    with sessions() as session:
        return session.scalar(
            select(ReplayCounter.last_counter).where(ReplayCounter.originator == who)
        )


# -- replay counters ----------------------------------------------------------------------


def test_counter_first_insert_then_only_higher(sessions: sessionmaker[Session]) -> None:
    assert _stored(sessions) is None
    assert _advance(sessions, 5)
    assert _stored(sessions) == "00000000000000000005"
    assert not _advance(sessions, 5)
    assert not _advance(sessions, 4)
    assert not _advance(sessions, 0)
    assert _stored(sessions) == "00000000000000000005"
    assert _advance(sessions, 6)
    assert _advance(sessions, 1000)
    assert _stored(sessions) == "00000000000000001000"
    assert _advance(sessions, 1, who=GS)  # counters are per originator
    assert _stored(sessions, GS) == "00000000000000000001"
    assert _stored(sessions, RSA) is None


def test_counter_zero_is_a_valid_first_counter(sessions: sessionmaker[Session]) -> None:
    assert _advance(sessions, 0)
    assert not _advance(sessions, 0)
    assert _advance(sessions, 1)


def test_counter_order_is_numeric_across_digit_counts(sessions: sessionmaker[Session]) -> None:
    """Unpadded text would put "999999999" after "1000000000"; 20-digit text does not."""
    assert _advance(sessions, 999_999_999)
    assert _advance(sessions, 1_000_000_000)
    assert not _advance(sessions, 999_999_999)
    assert not _advance(sessions, 99_999_999)
    assert not _advance(sessions, 9)
    assert _advance(sessions, 9_000_000_000)
    assert not _advance(sessions, 8_999_999_999)
    assert _advance(sessions, 10**19)
    assert not _advance(sessions, 9 * 10**18)


def test_counter_top_of_the_range_is_stored_exactly(sessions: sessionmaker[Session]) -> None:
    top = 2**64 - 1
    assert _advance(sessions, top - 1)
    assert _advance(sessions, top)
    assert _stored(sessions) == str(top) == "18446744073709551615"
    assert not _advance(sessions, top)
    assert not _advance(sessions, top - 1)
    assert not _advance(sessions, 10)


def test_a_refused_counter_leaves_the_row_untouched(sessions: sessionmaker[Session]) -> None:
    assert _advance(sessions, 10)
    with sessions() as session:
        first = session.get(ReplayCounter, IS)
        assert first is not None
        stamp = first.updated_at
    with sessions.begin() as session:
        later = NOW + timedelta(hours=1)
        assert not Repository(session).ledger.advance_counter(IS, 9, later)
    with sessions() as session:
        row = session.get(ReplayCounter, IS)
        assert row is not None
        assert (row.last_counter, row.updated_at) == ("00000000000000000010", stamp)


# -- devices ---------------------------------------------------------------------------------


def _registry(repo: Repository) -> None:
    repo.upsert_user(IS, Role.IS, "Import Supplier", UserStatus.ACTIVE, NOW)
    repo.upsert_user(GS, Role.GS, "Gas Supplier", UserStatus.ACTIVE, NOW)
    repo.upsert_user(RSA, Role.RSA, "Agent", UserStatus.ACTIVE, NOW)
    repo.upsert_device(
        device_id=HUB,
        device_type=DeviceType.CHF,
        smi_status=SmiStatus.PENDING,
        responsible_suppliers=[IS],
        gpf_id=None,
        now=NOW,
    )
    repo.session.flush()


def test_a_hub_is_claimed_only_once(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        _registry(Repository(session))
    with sessions.begin() as session:
        assert Repository(session).ledger.claim_device(HUB, 41, NOW)
    with sessions.begin() as session:
        assert not Repository(session).ledger.claim_device(HUB, 42, NOW)
        assert not Repository(session).ledger.claim_device("00-DB-12-34-56-78-90-FF", 43, NOW)
    with sessions() as session:
        device = session.get(Device, HUB)
        assert device is not None
        assert device.open_return_id == 41


def test_reloading_a_device_replaces_its_suppliers(repo: Repository) -> None:
    _registry(repo)
    repo.upsert_device(
        device_id=HUB,
        device_type=DeviceType.CHF,
        smi_status=SmiStatus.COMMISSIONED,
        responsible_suppliers=[GS, GS],
        gpf_id="00-DB-12-34-56-78-90-A0",
        now=NOW,
    )
    repo.session.flush()
    suppliers = repo.session.scalars(
        select(DeviceSupplier.supplier_user_id).where(DeviceSupplier.device_id == HUB)
    ).all()
    assert suppliers == [GS]
    device = repo.session.get(Device, HUB)
    assert device is not None
    assert device.smi_status is SmiStatus.COMMISSIONED  # read back as the enum
    assert device.gpf_id == "00-DB-12-34-56-78-90-A0"


# -- appointments ----------------------------------------------------------------------------


def test_appointment_window_is_from_inclusive_to_exclusive(repo: Repository) -> None:
    _registry(repo)
    start, end = NOW, NOW + timedelta(days=10)
    repo.appoint(RSA, IS, start, end)
    assert repo.appointed_by(RSA, start - timedelta(seconds=1)) == frozenset()
    assert repo.appointed_by(RSA, start) == {IS}
    assert repo.appointed_by(RSA, end - timedelta(seconds=1)) == {IS}
    assert repo.appointed_by(RSA, end) == frozenset()
    assert repo.appointed_by(GS, start) == frozenset()


def test_open_ended_and_overlapping_appointments(repo: Repository) -> None:
    _registry(repo)
    repo.appoint(RSA, IS, NOW, None)
    repo.appoint(RSA, GS, NOW + timedelta(days=1), NOW + timedelta(days=2))
    assert repo.appointed_by(RSA, NOW + timedelta(days=3650)) == {IS}
    assert repo.appointed_by(RSA, NOW + timedelta(days=1, hours=1)) == {IS, GS}


def test_revoked_appointment_no_longer_counts_and_reappointing_restores(
    repo: Repository,
) -> None:
    _registry(repo)
    repo.appoint(RSA, IS, NOW, None)
    assert repo.revoke(RSA, IS, NOW + timedelta(hours=1)) == 1
    assert repo.revoke(RSA, IS, NOW + timedelta(hours=2)) == 0
    assert repo.appointed_by(RSA, NOW + timedelta(hours=3)) == frozenset()
    row = repo.appoint(RSA, IS, NOW, NOW + timedelta(days=5))  # the same appointment again
    assert row.revoked_at is None
    assert repo.appointed_by(RSA, NOW + timedelta(hours=3)) == {IS}
    assert repo.counts()["appointments"] == 1


def test_appointment_by_a_suspended_supplier_does_not_count(repo: Repository) -> None:
    _registry(repo)
    repo.appoint(RSA, IS, NOW, None)
    repo.upsert_user(IS, Role.IS, "Import Supplier", UserStatus.SUSPENDED, NOW)
    repo.session.flush()
    assert repo.appointed_by(RSA, NOW + timedelta(hours=1)) == frozenset()


def test_appointment_by_a_user_who_is_not_a_supplier_does_not_count(repo: Repository) -> None:
    _registry(repo)
    repo.upsert_user(GS, Role.ES, "Export Supplier", UserStatus.ACTIVE, NOW)
    repo.appoint(RSA, IS, NOW, None)
    repo.appoint(RSA, GS, NOW, None)
    assert repo.appointed_by(RSA, NOW + timedelta(hours=1)) == {IS}


# -- facts rows ---------------------------------------------------------------------------------

_FACTS = FactsRow(
    key_originator=RSA,
    key_device=HUB,
    user_id=RSA,
    role=Role.RSA,
    status=UserStatus.ACTIVE,
    last_counter="00000000000000000007",
    found_device=HUB,
    device_type=DeviceType.CHF,
    smi_status=SmiStatus.PENDING,
    gpf_id=None,
    open_return_id=41,
    supplier_user_id=GS,
)


def _reversed_facts() -> Select[*tuple[Any, ...]]:
    """The facts statement's columns in the reverse order."""
    columns = {column.key: column for column in statements.FACTS.selected_columns}
    return select(*(columns[name] for name in reversed(FactsRow._fields)))


def test_facts_rows_are_read_by_column_name_whatever_the_order() -> None:
    """A statement that lists its columns in another order still fills each field."""
    shuffled = _reversed_facts()
    assert list(shuffled.selected_columns.keys()) == list(reversed(FactsRow._fields))
    core_row = tuple(reversed(_FACTS))  # as Core reads it: enumerations already typed
    assert FactsRow._make(facts_columns(shuffled)(core_row)) == _FACTS
    # The backends' batch reads take the driver's row: enumerations as their stored text.
    driver_row = tuple(v.value if isinstance(v, Enum) else v for v in reversed(_FACTS))
    for dialect in (sqlite.dialect(), postgresql.psycopg.dialect()):
        assert FactsReader(shuffled).read(dialect, [driver_row]) == [_FACTS]


# -- migrations ---------------------------------------------------------------------------------


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_certificates_present_answers_for_more_pairs_than_one_statement_takes(
    seeded: sessionmaker[Session],
) -> None:
    """The cache's bulk confirmation: 40,000 pairs in one statement (they go as one
    or two parameters: as 80,000 they would be over PostgreSQL's cap)."""
    with seeded() as session:
        stored = {(c.issuer, int(c.serial)) for c in session.scalars(select(Certificate))}
        absent = {("CN=Nobody", 10**12 + n) for n in range(40_000)}
        present = Ledger(session.connection()).certificates_present([*absent, *stored])
    assert stored
    assert present == stored


def test_migrate_is_idempotent(engine: Engine) -> None:
    tables = _tables(engine)
    assert tables >= CORE_TABLES | {"alembic_version"}
    migrate(engine)
    migrate(engine)
    assert _tables(engine) == tables
    with engine.connect() as conn:
        versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    assert len(versions) == 1


def _diff_table(diff: tuple[object, ...]) -> str:
    """The table an Alembic autogenerate diff is about."""
    kind, subject = str(diff[0]), diff[1]
    if kind.endswith("_table"):
        return str(getattr(subject, "name", ""))
    if kind.endswith(("_index", "_constraint", "_fk")):
        table = getattr(subject, "table", None)
        if table is None:
            table = getattr(subject, "parent", None)
        return str(getattr(table, "name", ""))
    return str(diff[2])  # add_column/remove_column/modify_*: (kind, schema, table, ...)


def test_migrations_create_exactly_the_core_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    flat = [d for group in diffs for d in (group if isinstance(group, list) else [group])]
    assert [d for d in flat if _diff_table(d) in CORE_TABLES] == []


def _config() -> Config:
    config = Config()
    config.set_main_option(
        "script_location", str(resources.files("hubreturns.dcc.store") / "migrations")
    )
    return config


def _downgrade(engine: Engine, revision: str) -> None:
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def _version(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]


def test_downgrade_and_upgrade_of_0001_on_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        migrate(engine)
        heads = list(ScriptDirectory.from_config(_config()).get_heads())
        assert _version(engine) == heads
        _downgrade(engine, "0001")
        assert _version(engine) == ["0001"]
        assert _tables(engine) >= CORE_TABLES
        _downgrade(engine, "base")
        assert _version(engine) == []
        assert _tables(engine) & CORE_TABLES == set()
        migrate(engine, "0001")
        assert _version(engine) == ["0001"]
        assert _tables(engine) >= CORE_TABLES
        migrate(engine)
        assert _version(engine) == heads
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        flat = [d for group in diffs for d in (group if isinstance(group, list) else [group])]
        assert [d for d in flat if _diff_table(d) in CORE_TABLES] == []
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_returns_request_xml_is_compressed_with_lz4_and_back_with_0003(engine: Engine) -> None:
    """0004: pglz compressing every accepted request's XML cost PostgreSQL 15-30 µs."""

    def method() -> str:
        with engine.connect() as conn:
            return str(
                conn.exec_driver_sql(
                    "SELECT attcompression FROM pg_attribute"
                    " WHERE attrelid = 'returns'::regclass AND attname = 'request_xml'"
                ).scalar_one()
            )

    assert method() == "l"
    _downgrade(engine, "0003")
    assert method() == ""  # the server's default again
    migrate(engine)
    assert method() == "l"


def test_an_engine_other_than_sqlite_or_postgresql_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        make_engine("mysql://user@localhost/db")
