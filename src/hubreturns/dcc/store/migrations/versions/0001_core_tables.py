"""core tables

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=16), nullable=True),
        sa.Column("request_id", sa.String(length=80), nullable=True),
        sa.Column("originator", sa.String(length=23), nullable=True),
        sa.Column("service_reference_variant", sa.String(length=8), nullable=True),
        sa.Column("device_id", sa.String(length=23), nullable=True),
        sa.Column("code", sa.String(length=10), nullable=False),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=True),
        sa.Column("body_bytes", sa.Integer(), nullable=False),
        sa.Column("return_id", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_code", "audit_log", ["code"], unique=False)
    op.create_index("ix_audit_originator", "audit_log", ["originator"], unique=False)
    op.create_index("ix_audit_received", "audit_log", ["received_at"], unique=False)
    op.create_table(
        "certificates",
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("serial", sa.String(length=50), nullable=False),
        sa.Column("eui", sa.String(length=23), nullable=True),
        sa.Column("organisational_units", sa.String(length=100), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "serial"),
    )
    op.create_index(op.f("ix_certificates_eui"), "certificates", ["eui"], unique=False)
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(length=23), nullable=False),
        sa.Column("device_type", sa.String(length=8), nullable=False),
        sa.Column("smi_status", sa.String(length=32), nullable=False),
        sa.Column("gpf_id", sa.String(length=23), nullable=True),
        sa.Column("open_return_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "replay_counters",
        sa.Column("originator", sa.String(length=23), nullable=False),
        sa.Column(
            "last_counter",
            sa.String(length=20).with_variant(sa.String(length=20, collation="C"), "postgresql"),
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("originator"),
    )
    op.create_table(
        "returns",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("request_id", sa.String(length=80), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("originator", sa.String(length=23), nullable=False),
        sa.Column("role", sa.String(length=3), nullable=False),
        sa.Column("on_behalf_of", sa.String(length=23), nullable=False),
        sa.Column("entered_by", sa.String(length=100), nullable=True),
        sa.Column("device_id", sa.String(length=23), nullable=False),
        sa.Column("service_reference_variant", sa.String(length=8), nullable=False),
        sa.Column("return_type", sa.String(length=80), nullable=False),
        sa.Column("other_device_id", sa.String(length=23), nullable=True),
        sa.Column("connection_method", sa.String(length=16), nullable=True),
        sa.Column("fault_reason", sa.String(length=64), nullable=True),
        sa.Column("user_ref_datetime", sa.String(length=40), nullable=True),
        sa.Column("user_ref_id", sa.String(length=25), nullable=True),
        sa.Column("incident_reference", sa.String(length=15), nullable=True),
        sa.Column("additional_information", sa.String(length=200), nullable=True),
        sa.Column("smi_status_at_return", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_xml", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index("ix_returns_device", "returns", ["device_id"], unique=False)
    op.create_index("ix_returns_originator", "returns", ["originator"], unique=False)
    op.create_index("ix_returns_received", "returns", ["received_at"], unique=False)
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(length=23), nullable=False),
        sa.Column("role", sa.String(length=3), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "appointments",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("rsa_user_id", sa.String(length=23), nullable=False),
        sa.Column("supplier_user_id", sa.String(length=23), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["rsa_user_id"],
            ["users.user_id"],
        ),
        sa.ForeignKeyConstraint(
            ["supplier_user_id"],
            ["users.user_id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("rsa_user_id", "supplier_user_id", "valid_from"),
    )
    op.create_index("ix_appointments_rsa", "appointments", ["rsa_user_id"], unique=False)
    op.create_table(
        "device_suppliers",
        sa.Column("device_id", sa.String(length=23), nullable=False),
        sa.Column("supplier_user_id", sa.String(length=23), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.device_id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["supplier_user_id"],
            ["users.user_id"],
        ),
        sa.PrimaryKeyConstraint("device_id", "supplier_user_id"),
    )
    op.create_index(
        "ix_device_suppliers_supplier", "device_suppliers", ["supplier_user_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_device_suppliers_supplier", table_name="device_suppliers")
    op.drop_table("device_suppliers")
    op.drop_index("ix_appointments_rsa", table_name="appointments")
    op.drop_table("appointments")
    op.drop_table("users")
    op.drop_index("ix_returns_received", table_name="returns")
    op.drop_index("ix_returns_originator", table_name="returns")
    op.drop_index("ix_returns_device", table_name="returns")
    op.drop_table("returns")
    op.drop_table("replay_counters")
    op.drop_table("devices")
    op.drop_index(op.f("ix_certificates_eui"), table_name="certificates")
    op.drop_table("certificates")
    op.drop_index("ix_audit_received", table_name="audit_log")
    op.drop_index("ix_audit_originator", table_name="audit_log")
    op.drop_index("ix_audit_code", table_name="audit_log")
    op.drop_table("audit_log")
