"""PostgreSQL: ``ix_runs_waiting`` and ``ix_runs_occupying``, small indexes for the dispatcher's two questions (does
a run wait in this queue? how many runs occupy its slots, and its type's?), asked by every submit
(``curatore_direct_slot``), every run's end and every dispatch pass. They replace ``ix_runs_status_queue``.

Every transition writes a new version of the run's row, and the old version's index entries stay until VACUUM
(autovacuum visits a busy table once a minute at best). In ``(status, queue, priority)`` a run's dead entries (its
``submitted`` and ``running`` versions) sat in the very ranges those questions read, and new entries went after
them, so each question read every run ended since the last VACUUM: at 400 runs/s a submit's count took 0.14 ms
after 1,000 runs, 0.7 ms after 6,000, and the statements' plans changed as the dead entries grew.

Here each index holds only the runs its question is about (a partial index), keyed by the run's id after the
columns asked about, and not by its status: a run's start (submitted → running) adds an entry with the same key,
which PostgreSQL's bottom-up deletion clears of the run's older versions, and new entries land among the old ones
(ids are random), on pages that are cleared of entries a scan found dead when they fill. The indexes stay about
as large as the number of active runs, however many runs passed through them.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# backend.queues.dispatcher.OCCUPYING (the statuses that hold a slot) and WAITING_PARENT (a group parent that only
# waits for its children holds none)
OCCUPYING = "status IN ('submitted', 'running', 'cancelling', 'stale')"
HOLDS_SLOT = (f"{OCCUPYING} AND NOT (is_group_parent AND lease_expires_at IS NULL "
              "AND status IN ('running', 'cancelling'))")


def _function(order: str) -> str:
    """``curatore_direct_slot`` (migration 0013), its counts read ``order``ed: in the index's order, so that no plan
    (a function's statements get a generic one, which does not know the limit) finds reading the table cheaper."""
    return f"""
CREATE OR REPLACE FUNCTION curatore_direct_slot(p_lock bigint, p_queue text, p_limit integer, p_now timestamptz,
                                                p_names text[], p_type_limit integer)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF NOT pg_try_advisory_xact_lock(p_lock) THEN
    RETURN 'locked';
  END IF;
  IF EXISTS (SELECT 1 FROM runs WHERE status = 'pending' AND queue = p_queue
             AND (not_before IS NULL OR not_before <= p_now)) THEN
    RETURN 'waiting';
  END IF;
  IF (SELECT count(*) FROM (SELECT 1 FROM runs WHERE queue = p_queue AND {HOLDS_SLOT}
                            {order} LIMIT p_limit) AS t) >= p_limit THEN
    RETURN 'full';
  END IF;
  IF p_type_limit IS NOT NULL AND (SELECT count(*) FROM (SELECT 1 FROM runs WHERE queue = p_queue AND {HOLDS_SLOT}
                                   AND run_type = ANY (p_names) {order} LIMIT p_type_limit) AS t) >= p_type_limit THEN
    RETURN 'full';
  END IF;
  RETURN 'direct';
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE INDEX IF NOT EXISTS ix_runs_waiting ON runs (queue, id) WHERE status = 'pending'")
        op.execute(f"CREATE INDEX IF NOT EXISTS ix_runs_occupying ON runs (queue, run_type, id) WHERE {OCCUPYING}")
        op.execute("DROP INDEX IF EXISTS ix_runs_status_queue")
        op.execute(_function("ORDER BY run_type, id"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_function(""))
        op.execute("CREATE INDEX IF NOT EXISTS ix_runs_status_queue ON runs (status, queue, priority)")
        op.execute("DROP INDEX IF EXISTS ix_runs_occupying")
        op.execute("DROP INDEX IF EXISTS ix_runs_waiting")
