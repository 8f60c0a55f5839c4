"""logistics tables

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_EUI = sa.String(length=23)
_MOMENT = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "hub_orders",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("supplier_user_id", _EUI, sa.ForeignKey("users.user_id"), nullable=False),
        sa.Column("placed_by", _EUI, sa.ForeignKey("users.user_id"), nullable=False),
        sa.Column("placed_by_role", sa.String(length=3), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("hub_variant", sa.String(length=64), nullable=False),
        sa.Column("delivery_location", sa.String(length=200), nullable=False),
        sa.Column("requested_month", sa.String(length=7), nullable=False),
        sa.Column("created_at", _MOMENT, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_hub_orders_supplier", "hub_orders", ["supplier_user_id"])
    op.create_table(
        "hub_deliveries",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("order_id", _ID, sa.ForeignKey("hub_orders.id"), nullable=False),
        sa.Column("hub_count", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=True),
        sa.Column("delivered_at", _MOMENT, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_hub_deliveries_order", "hub_deliveries", ["order_id"])
    op.create_table(
        "delivered_hubs",
        sa.Column("device_id", _EUI, nullable=False),
        sa.Column("gpf_id", _EUI, nullable=False),
        sa.Column("delivery_id", _ID, sa.ForeignKey("hub_deliveries.id"), nullable=False),
        sa.Column("order_id", _ID, sa.ForeignKey("hub_orders.id"), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
        sa.UniqueConstraint("gpf_id"),
    )
    op.create_index("ix_delivered_hubs_order", "delivered_hubs", ["order_id"])
    op.create_table(
        "consignments",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("party", _EUI, nullable=False),
        sa.Column("collection_location", sa.String(length=200), nullable=False),
        sa.Column("month", sa.String(length=7), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", _MOMENT, nullable=False),
        sa.Column("collected_at", _MOMENT, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_consignments_party_location", "consignments", ["party", "collection_location"]
    )
    op.create_table(
        "return_progress",
        sa.Column("return_id", _ID, sa.ForeignKey("returns.id"), nullable=False),
        sa.Column("collection_location", sa.String(length=200), nullable=True),
        sa.Column("consignment_id", _ID, sa.ForeignKey("consignments.id"), nullable=True),
        sa.Column("collected_at", _MOMENT, nullable=True),
        sa.Column("received_at", _MOMENT, nullable=True),
        sa.Column("tested_at", _MOMENT, nullable=True),
        sa.Column("test_outcome", sa.String(length=16), nullable=True),
        sa.Column("closed_at", _MOMENT, nullable=True),
        sa.PrimaryKeyConstraint("return_id"),
    )
    op.create_index("ix_return_progress_consignment", "return_progress", ["consignment_id"])
    op.create_table(
        "return_events",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("return_id", _ID, sa.ForeignKey("returns.id"), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=False),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("at", _MOMENT, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_return_events_return", "return_events", ["return_id"])


def downgrade() -> None:
    for index, table in (
        ("ix_return_events_return", "return_events"),
        ("ix_return_progress_consignment", "return_progress"),
        ("ix_consignments_party_location", "consignments"),
        ("ix_delivered_hubs_order", "delivered_hubs"),
        ("ix_hub_deliveries_order", "hub_deliveries"),
        ("ix_hub_orders_supplier", "hub_orders"),
    ):
        op.drop_index(index, table_name=table)
        op.drop_table(table)
