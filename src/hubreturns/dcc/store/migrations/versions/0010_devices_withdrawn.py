"""Inventory: devices withdrawn by ``load devices --replace`` keep their row

A device absent from a replacing inventory file is not deleted: returns, audit
rows and deliveries name it. ``withdrawn_at`` marks it instead; the request path
then treats it as not in the inventory (E19).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-12
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("withdrawn_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("withdrawn_at")
