"""SMKI: certificate revocations, and the change number workers poll

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificate_revocations",
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("serial", sa.String(length=50), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "serial"),
    )
    changes = op.create_table(
        "certificate_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(changes, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    op.drop_table("certificate_changes")
    op.drop_table("certificate_revocations")
