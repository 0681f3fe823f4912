"""PostgreSQL: ``curatore_direct_slot``, the dispatcher's "may a new run go straight to a worker?" as a function,
so that a run can be created, and sent on, in one statement (``backend.runs.service.create_run_alone``)

It takes the queue's dispatch lock (``pg_try_advisory_xact_lock``, held to the end of the calling statement's
transaction), then reads, in a snapshot taken after the lock (a VOLATILE function's statements each take their
own), whether a run waits in the queue, and counts the runs occupying its slots (and its type's, when the type has
a limit of its own), up to the limits. It answers ``direct``, ``locked`` (another dispatcher holds the queue),
``waiting`` or ``full``. The same reads as ``backend.queues.dispatcher.direct_slot``, which asks them inside a
transaction (``tests/unit/test_direct_dispatch.py`` checks that both answer alike).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Occupying a slot: submitted, running, cancelling or stale, except a group parent that only waits for its
# children (running or cancelling, its lease cleared): backend.queues.dispatcher.OCCUPYING and WAITING_PARENT.
OCCUPYING = ("status IN ('submitted', 'running', 'cancelling', 'stale') AND NOT (is_group_parent "
             "AND lease_expires_at IS NULL AND status IN ('running', 'cancelling'))")

FUNCTION = f"""
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
  IF (SELECT count(*) FROM (SELECT 1 FROM runs WHERE queue = p_queue AND {OCCUPYING} LIMIT p_limit) AS t)
     >= p_limit THEN
    RETURN 'full';
  END IF;
  IF p_type_limit IS NOT NULL AND (SELECT count(*) FROM (SELECT 1 FROM runs WHERE queue = p_queue AND {OCCUPYING}
                                   AND run_type = ANY (p_names) LIMIT p_type_limit) AS t) >= p_type_limit THEN
    RETURN 'full';
  END IF;
  RETURN 'direct';
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS curatore_direct_slot(bigint, text, integer, timestamptz, text[], integer)")
