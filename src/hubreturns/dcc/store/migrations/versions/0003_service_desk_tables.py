"""service desk tables

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "desk_staff",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sign_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "desk_sessions",
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("staff_name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["staff_name"], ["desk_staff.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_sha256"),
    )
    op.create_index("ix_desk_sessions_staff", "desk_sessions", ["staff_name"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_desk_sessions_staff", table_name="desk_sessions")
    op.drop_table("desk_sessions")
    op.drop_table("desk_staff")
