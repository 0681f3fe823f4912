"""one run group per parent (unique), and the task ids each worker node holds

``run_groups.parent_run_id`` becomes unique: a parent executed again after its worker was lost continues its
group instead of making a second one. Databases that already hold several groups for one parent (the bug this
fixes) keep the oldest: the other groups' children and counts move to it, and it ends once, when sealed.

``worker_heartbeats.held_task_ids``: the Celery task ids a worker node has received and not yet finished,
reported at every housekeeping pass. A ``submitted`` run whose task no live node holds, while a node of its
queue has a free slot, lost its message (``backend.runs.recovery``): it is sent again.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _merge_duplicate_groups() -> None:
    bind = op.get_bind()
    groups = sa.table("run_groups", sa.column("id", sa.Uuid()), sa.column("parent_run_id", sa.Uuid()),
                      sa.column("created_at", sa.DateTime(timezone=True)), sa.column("expected", sa.Integer()),
                      sa.column("completed", sa.Integer()), sa.column("failed", sa.Integer()),
                      sa.column("cancelled", sa.Integer()), sa.column("sealed", sa.Boolean()))
    runs = sa.table("runs", sa.column("group_id", sa.Uuid()))
    dupes = bind.execute(sa.select(groups.c.parent_run_id).group_by(groups.c.parent_run_id)
                         .having(sa.func.count() > 1)).scalars().all()
    for parent in dupes:
        rows = bind.execute(sa.select(groups).where(groups.c.parent_run_id == parent)
                            .order_by(groups.c.created_at, groups.c.id)).all()
        keep, others = rows[0], rows[1:]
        totals = {k: sum(getattr(r, k) for r in rows) for k in ("expected", "completed", "failed", "cancelled")}
        for other in others:
            bind.execute(sa.update(runs).where(runs.c.group_id == other.id).values(group_id=keep.id))
            bind.execute(sa.delete(groups).where(groups.c.id == other.id))
        bind.execute(sa.update(groups).where(groups.c.id == keep.id)
                     .values(sealed=any(r.sealed for r in rows), **totals))


def upgrade() -> None:
    _merge_duplicate_groups()
    with op.batch_alter_table("run_groups") as batch_op:
        batch_op.drop_index("ix_run_groups_parent_run_id")
        batch_op.create_index("ix_run_groups_parent_run_id", ["parent_run_id"], unique=True)
    with op.batch_alter_table("worker_heartbeats") as batch_op:
        batch_op.add_column(sa.Column("held_task_ids", JSON, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("worker_heartbeats") as batch_op:
        batch_op.drop_column("held_task_ids")
    with op.batch_alter_table("run_groups") as batch_op:
        batch_op.drop_index("ix_run_groups_parent_run_id")
        batch_op.create_index("ix_run_groups_parent_run_id", ["parent_run_id"], unique=False)
