"""PostgreSQL: a batch's write statement refuses itself when it lost a race

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

The committer's PostgreSQL connection commits each statement by itself
(autocommit), so a batch's writes are one statement that is also its
transaction. That statement counts the counters and hubs it changed and
hands the counts to ``hubreturns_batch_written``, which raises SQLSTATE
``HR409`` when they fall short of what was decided: the statement, and with
it the whole batch, is then rolled back, and ``Ledger.flush`` reports
``WriteConflict``. SQL has no expression that raises, hence the function.
SQLite needs nothing: its batches keep an explicit transaction.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_FUNCTION = """
CREATE OR REPLACE FUNCTION hubreturns_batch_written(
    counters_decided integer, counters_changed bigint,
    hubs_decided integer, hubs_changed bigint
) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    short text[] := '{}';
BEGIN
    IF counters_changed <> counters_decided THEN
        short := short || format(
            'advances: %s of %s rows changed', counters_changed, counters_decided
        );
    END IF;
    IF hubs_changed <> hubs_decided THEN
        short := short || format('claims: %s of %s rows changed', hubs_changed, hubs_decided);
    END IF;
    IF cardinality(short) > 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'HR409',
            MESSAGE = array_to_string(short, '; ') || '; another process won a race';
    END IF;
    RETURN true;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS hubreturns_batch_written(integer, bigint, integer, bigint)"
        )
