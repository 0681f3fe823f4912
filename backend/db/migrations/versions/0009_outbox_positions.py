"""outbox positions assigned in commit order by the relay, instead of a lock held by every writer

Writers used to take one advisory lock until commit so that sequence numbers became visible in commit order:
every transition of every run waited for every other. Rows are now written with ``pos`` NULL, and the relay
(``backend.runs.outbox.relay``) numbers the committed ones in order; readers follow ``pos``. Existing rows
keep their order (``pos = seq``).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch_op:
        batch_op.add_column(sa.Column("pos", sa.BigInteger(), nullable=True))
    op.execute("UPDATE outbox_events SET pos = seq")
    op.create_index("uq_outbox_events_pos", "outbox_events", ["pos"], unique=True)
    op.create_index("ix_outbox_events_unnumbered", "outbox_events", ["seq"],
                    postgresql_where=sa.text("pos IS NULL"), sqlite_where=sa.text("pos IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_outbox_events_unnumbered", table_name="outbox_events")
    op.drop_index("uq_outbox_events_pos", table_name="outbox_events")
    with op.batch_alter_table("outbox_events") as batch_op:
        batch_op.drop_column("pos")
