"""an index for the runs one creator started, newest first: a scheduled task's history (``created_by =
'schedule:<name>'``), keyset-paged on (created_at, id) on the queue page

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_runs_created_by", "runs", ["created_by", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_created_by", table_name="runs")
