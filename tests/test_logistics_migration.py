"""The logistics migration (issue 25 §3) on SQLite and PostgreSQL: free-text hub variants
become the enumeration, delivered hubs take their order's variant, and text naming no
variant stops the upgrade before anything changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.orm import Session, sessionmaker
from test_store import _config, _downgrade

from hubreturns.dcc.store.db import migrate
from hubreturns.user.scenarios import IS


def _before_logistics_fix() -> str:
    """The revision before the one that maps hub variants (whatever its number after rebases)."""
    script = ScriptDirectory.from_config(_config())
    for revision in script.walk_revisions():
        if hasattr(revision.module, "_map_variants"):
            down = revision.down_revision
            assert isinstance(down, str)
            return down
    raise AssertionError("no migration maps hub variants")


def _order(engine: Engine, variant: str) -> int:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hub_orders (supplier_user_id, placed_by, placed_by_role, quantity,"
                " hub_variant, delivery_location, requested_month, created_at)"
                " VALUES (:s, :s, 'IS', 2, :v, 'Leeds', '2027-01', :at)"
            ),
            {"s": IS, "v": variant, "at": datetime.now(UTC)},
        )
        return int(conn.execute(text("SELECT max(id) FROM hub_orders")).scalar_one())


def test_free_text_variants_are_mapped_and_delivered_hubs_keep_them(
    engine: Engine, seeded: sessionmaker[Session]
) -> None:
    _downgrade(engine, _before_logistics_fix())
    dual = _order(engine, "HAN variant: dual band")
    single = _order(engine, "SM WAN variant: Single Band")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO hub_deliveries (order_id, hub_count, source, delivered_at)"
                " VALUES (:o, 1, 'd.csv', :at)"
            ),
            {"o": single, "at": datetime.now(UTC)},
        )
        conn.execute(
            text(
                "INSERT INTO delivered_hubs (device_id, gpf_id, delivery_id, order_id)"
                " VALUES ('00-DB-12-34-56-78-F1-01', '00-DB-12-34-56-78-F1-00',"
                " (SELECT max(id) FROM hub_deliveries), :o)"
            ),
            {"o": single},
        )
    migrate(engine)
    with engine.connect() as conn:
        orders = conn.execute(text("SELECT id, hub_variant, status FROM hub_orders")).all()
        hubs = conn.execute(text("SELECT order_id, hub_variant FROM delivered_hubs")).all()
    assert sorted(tuple(r) for r in orders) == [
        (dual, "dual_band", "open"),
        (single, "single_band", "open"),
    ]
    assert [tuple(r) for r in hubs] == [(single, "single_band")]
    assert "written_off_at" in {c["name"] for c in inspect(engine).get_columns("return_progress")}


def test_a_variant_naming_neither_band_stops_the_upgrade(
    engine: Engine, seeded: sessionmaker[Session]
) -> None:
    before = _before_logistics_fix()
    _downgrade(engine, before)
    vague = _order(engine, "SM WAN variant: north")
    with pytest.raises(RuntimeError, match=rf"cannot map order\(s\) {vague} \('SM WAN"):
        migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == before
        assert conn.execute(text("SELECT hub_variant FROM hub_orders")).scalar_one() == (
            "SM WAN variant: north"
        )
    assert "status" not in {c["name"] for c in inspect(engine).get_columns("hub_orders")}
    with engine.begin() as conn:
        conn.execute(text("UPDATE hub_orders SET hub_variant = 'dual_band'"))
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT status FROM hub_orders")).scalar_one() == "open"
