"""logistics: order status and history, hub variants, write-off (issue 25, section 3)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

- ``hub_orders.status`` (``open`` / ``cancelled``) and ``hub_order_events``:
  an order can be amended or cancelled before delivery, and every change is
  kept with who made it.
- ``hub_orders.hub_variant`` becomes an enumeration (``single_band`` /
  ``dual_band``), because the charge for a hub that cannot be redeployed depends
  on it; free text written before is mapped by the words "single"/"dual". Text
  naming neither cannot be mapped without guessing, so the upgrade stops and
  names the orders to fix (fail closed).
- ``delivered_hubs.hub_variant``: every delivered hub keeps its order's variant
  (backfilled from its order).
- ``return_progress.written_off_at``: a lost or stolen hub's return is written
  off, never collected.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_MOMENT = sa.DateTime(timezone=True)


def _variant(text: str) -> str | None:
    words = text.lower().replace("_", " ")
    single, dual = "single" in words, "dual" in words
    if single == dual:
        return None
    return "single_band" if single else "dual_band"


def _map_variants() -> None:
    connection = op.get_bind()
    orders = sa.table("hub_orders", sa.column("id"), sa.column("hub_variant"))
    unmapped = []
    for order_id, text in connection.execute(sa.select(orders.c.id, orders.c.hub_variant)):
        variant = _variant(text)
        if variant is None:
            unmapped.append(f"{order_id} ({text!r})")
            continue
        connection.execute(
            orders.update().where(orders.c.id == order_id).values(hub_variant=variant)
        )
    if unmapped:
        raise RuntimeError(
            "hub_orders.hub_variant must name single band or dual band; cannot map order(s) "
            + ", ".join(unmapped[:20])
            + ". Set each to 'single_band' or 'dual_band' and run the upgrade again."
        )


def upgrade() -> None:
    _map_variants()  # first: an order that cannot be mapped stops the upgrade before any DDL
    op.add_column(
        "hub_orders",
        sa.Column("status", sa.String(length=16), nullable=False, server_default="open"),
    )
    op.create_table(
        "hub_order_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("order_id", _ID, sa.ForeignKey("hub_orders.id"), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("changes", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("at", _MOMENT, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_hub_order_events_order", "hub_order_events", ["order_id"])
    op.add_column("delivered_hubs", sa.Column("hub_variant", sa.String(length=16)))
    op.execute(
        "UPDATE delivered_hubs SET hub_variant = (SELECT hub_orders.hub_variant FROM hub_orders "
        "WHERE hub_orders.id = delivered_hubs.order_id)"
    )
    with op.batch_alter_table("delivered_hubs") as batch:
        batch.alter_column("hub_variant", existing_type=sa.String(length=16), nullable=False)
    op.add_column("return_progress", sa.Column("written_off_at", _MOMENT))


def downgrade() -> None:
    with op.batch_alter_table("return_progress") as batch:
        batch.drop_column("written_off_at")
    with op.batch_alter_table("delivered_hubs") as batch:
        batch.drop_column("hub_variant")
    op.drop_index("ix_hub_order_events_order", table_name="hub_order_events")
    op.drop_table("hub_order_events")
    with op.batch_alter_table("hub_orders") as batch:
        batch.drop_column("status")
