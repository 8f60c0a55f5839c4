"""audit log: the verified sender apart from the claimed one (issue 21, section 5)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Until now a refused request's audit row took ``originator`` from its
RequestID, read without trusting it: a forged request naming a Supplier was
logged as if that Supplier had sent it. From here on ``originator`` only ever
holds a *verified* sender (the User ID whose certificate verified the
signature, or the Service User a signed-in desk member entered a return for),
and the new ``claimed_originator`` holds the RequestID's originator when it
was not verified to be the sender.

Why two columns rather than an ``originator_verified`` flag: every existing
reader of ``originator`` (filters, reports, ``WHERE originator = …``) stays
right without learning a flag it could forget, and E43 (signed by one User,
naming another) needs both values at once, which one column and a flag
cannot hold.

Backfill: a row whose originator may have come from an unverified RequestID
moves it to ``claimed_originator``. That is every refused row except those
the rules decided, which only ever run on an authenticated request (the
codes in ``_DECIDED_AFTER_AUTHENTICATION``); failing closed, any other code
(E30, E31, E40 - E43, E100 and codes added later) counts as unverified.
Accepted rows were authenticated. The downgrade puts a claim back into an
empty ``originator``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: Refusal codes the decision table gives, after the signature and identity checks.
_DECIDED_AFTER_AUTHENTICATION = (
    "E1",
    "E2",
    "E3",
    "E4",
    "E5",
    "E11",
    "E12",
    "E13",
    "E19",
    "E20",
    "E21",
    "E44",
    "E45",
)

_audit = sa.table(
    "audit_log",
    sa.column("originator", sa.String(23)),
    sa.column("claimed_originator", sa.String(23)),
    sa.column("accepted", sa.Boolean()),
    sa.column("code", sa.String(10)),
)


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("claimed_originator", sa.String(length=23)))
    op.create_index(
        "ix_audit_claimed_originator", "audit_log", ["claimed_originator"], unique=False
    )
    op.execute(
        _audit.update()
        .where(
            _audit.c.originator.is_not(None),
            _audit.c.accepted.is_(False),
            _audit.c.code.not_in(_DECIDED_AFTER_AUTHENTICATION),
        )
        .values(claimed_originator=_audit.c.originator, originator=None)
    )


def downgrade() -> None:
    op.execute(
        _audit.update()
        .where(_audit.c.originator.is_(None), _audit.c.claimed_originator.is_not(None))
        .values(originator=_audit.c.claimed_originator)
    )
    op.drop_index("ix_audit_claimed_originator", table_name="audit_log")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("claimed_originator")
