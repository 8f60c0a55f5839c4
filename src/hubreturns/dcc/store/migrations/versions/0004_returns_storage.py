"""returns: the request XML compressed with lz4 rather than pglz (PostgreSQL)

A ``returns`` row (the request XML is about 1.7 KB) is over PostgreSQL's
TOAST threshold, so every accepted request's insert compresses it. pglz cost
about 15-30 µs of the server's CPU per row, measured; lz4 costs about as
little as not compressing at all and keeps the row as small. A server built
without lz4 refuses the setting: pglz then stays, which is only slower.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("ALTER TABLE returns ALTER COLUMN request_xml SET COMPRESSION lz4")
    except DBAPIError as exc:
        log.warning("returns.request_xml keeps pglz compression: %s", exc.orig)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE returns ALTER COLUMN request_xml SET COMPRESSION default")
