"""lists that cost the same at any size: indexes for every filter and sort of the jobs page, counters kept by
triggers, a per-type duration statistic, and a trigram index for search on PostgreSQL

- Indexes ``(filter column, created_at, id)``, alone and after ``organization_id``, for type, status, origin and
  priority, and ``(status, completed_at)`` for the 24 h cards; ``ix_runs_type_created`` replaces ``ix_runs_run_type``.
- ``run_count_deltas``: triggers on ``runs`` append +1 for a row's new (organization, type, status, origin, hour it
  ended) and -1 for its old one, in the writer's transaction, on every insert, delete and change of those columns
  (so every path that writes runs is counted, and writers never update a shared row). ``backend.runs.counters``
  folds them into ``run_counts``, ``run_ends`` (per hour of ``completed_at``) and ``run_type_stats`` (an
  exponentially weighted mean duration per type); readers add the deltas not folded yet. The nil UUID's rows in
  ``run_counts`` and ``run_ends`` count every organization together.
- ``ix_runs_queued``: the queued runs of each queue in dispatch order (partial), for queue positions.
- PostgreSQL: ``ix_runs_duration`` (ended runs by their fixed duration) and ``ix_runs_unstarted`` (runs never
  started), alone and after ``organization_id``, for the duration order (``backend.list_sort._by_duration``).
- PostgreSQL: ``run_search`` holds each run's searchable text (name, type, id, config; lower case), written by a
  trigger when the run is inserted (and when those columns change, which they do not today), with a ``pg_trgm``
  GIN index. A side table rather than an index on ``runs``: every status change writes a new row version into
  every index of ``runs``, and a trigram index over the config made each transition cost about twice as much.
  SQLite keeps its LIKE scan.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ENDED = "('completed', 'failed', 'timed_out', 'cancelled')"
DURATION = "round(EXTRACT(epoch FROM completed_at - started_at), 3)"
# The searchable text of a run: name, type, the id's hex digits, the config; one per line.
SEARCH_TEXT = ("lower(coalesce(NEW.display_name, '') || E'\\n' || NEW.run_type || E'\\n' "
               "|| replace(NEW.id::text, '-', '') || E'\\n' || NEW.config::text)")
_PG_SEARCH = [
    "CREATE TABLE run_search (run_id uuid PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE, body text NOT NULL)",
    "CREATE INDEX ix_run_search_trgm ON run_search USING gin (body gin_trgm_ops)",
    # PostgreSQL estimates a LIKE '%word%' by trying it on the column's histogram: 1,000 entries make that
    # estimate close enough to choose between the trigram index and walking the list in its order
    "ALTER TABLE run_search ALTER COLUMN body SET STATISTICS 1000",
    f"""CREATE OR REPLACE FUNCTION curatore_search_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO run_search (run_id, body) VALUES (NEW.id, {SEARCH_TEXT})
  ON CONFLICT (run_id) DO UPDATE SET body = EXCLUDED.body;
  RETURN NULL;
END $$""",
    "CREATE TRIGGER runs_search_insert AFTER INSERT ON runs FOR EACH ROW EXECUTE FUNCTION curatore_search_runs()",
    "CREATE TRIGGER runs_search_update AFTER UPDATE OF display_name, run_type, config ON runs FOR EACH ROW "
    "WHEN (OLD.display_name IS DISTINCT FROM NEW.display_name OR OLD.run_type IS DISTINCT FROM NEW.run_type "
    "OR OLD.config IS DISTINCT FROM NEW.config) EXECUTE FUNCTION curatore_search_runs()",
]

INDEXES: list[tuple[str, list[str]]] = [
    ("ix_runs_type_created", ["run_type", "created_at DESC", "id DESC"]),
    ("ix_runs_org_type_created", ["organization_id", "run_type", "created_at DESC", "id DESC"]),
    ("ix_runs_status_created", ["status", "created_at", "id"]),
    ("ix_runs_org_status_created", ["organization_id", "status", "created_at", "id"]),
    ("ix_runs_origin_created", ["origin", "created_at", "id"]),
    ("ix_runs_org_origin_created", ["organization_id", "origin", "created_at", "id"]),
    ("ix_runs_priority_created", ["priority", "created_at", "id"]),
    ("ix_runs_org_priority_created", ["organization_id", "priority", "created_at", "id"]),
    ("ix_runs_status_completed", ["status", "completed_at"]),
    ("ix_runs_org_status_completed", ["organization_id", "status", "completed_at"]),
    # queue positions: the queued runs of a queue in dispatch order, without sorting them
    ("ix_runs_queued", ["queue", "priority DESC", "created_at", "id"]),
    # the duration order: ended runs by their fixed duration (backend.list_sort.ENDED_DURATION), runs never started
    ("ix_runs_duration", [f"({DURATION})", "created_at DESC", "id DESC"]),
    ("ix_runs_org_duration", ["organization_id", f"({DURATION})", "created_at DESC", "id DESC"]),
    ("ix_runs_unstarted", ["created_at", "id"]),
    ("ix_runs_org_unstarted", ["organization_id", "created_at", "id"]),
]
_ENDED_STARTED = "completed_at IS NOT NULL AND started_at IS NOT NULL"
PARTIAL = {"ix_runs_queued": "status IN ('pending', 'submitted')", "ix_runs_duration": _ENDED_STARTED,
           "ix_runs_org_duration": _ENDED_STARTED, "ix_runs_unstarted": "started_at IS NULL",
           "ix_runs_org_unstarted": "started_at IS NULL"}
POSTGRES_ONLY = {"ix_runs_duration", "ix_runs_org_duration", "ix_runs_unstarted", "ix_runs_org_unstarted"}

_PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION curatore_count_runs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  old_hour bigint;
  new_hour bigint;
  took double precision;
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF OLD.completed_at IS NOT NULL AND OLD.status IN {ENDED} THEN
      old_hour := floor(extract(epoch FROM OLD.completed_at) / 3600);
    END IF;
    INSERT INTO run_count_deltas (organization_id, run_type, status, origin, ended_hour, seconds, n)
    VALUES (OLD.organization_id, OLD.run_type, OLD.status, OLD.origin, old_hour, NULL, -1);
    RETURN NULL;
  END IF;
  IF NEW.completed_at IS NOT NULL AND NEW.status IN {ENDED} THEN
    new_hour := floor(extract(epoch FROM NEW.completed_at) / 3600);
  END IF;
  IF TG_OP = 'INSERT' THEN
    INSERT INTO run_count_deltas (organization_id, run_type, status, origin, ended_hour, seconds, n)
    VALUES (NEW.organization_id, NEW.run_type, NEW.status, NEW.origin, new_hour, NULL, 1);
    RETURN NULL;
  END IF;
  IF OLD.completed_at IS NOT NULL AND OLD.status IN {ENDED} THEN
    old_hour := floor(extract(epoch FROM OLD.completed_at) / 3600);
  END IF;
  IF NEW.status = 'completed' AND OLD.status <> 'completed' AND NEW.started_at IS NOT NULL THEN
    took := extract(epoch FROM NEW.completed_at - NEW.started_at);
  END IF;
  INSERT INTO run_count_deltas (organization_id, run_type, status, origin, ended_hour, seconds, n)
  VALUES (OLD.organization_id, OLD.run_type, OLD.status, OLD.origin, old_hour, NULL, -1),
         (NEW.organization_id, NEW.run_type, NEW.status, NEW.origin, new_hour, took, 1);
  RETURN NULL;
END $$
"""
_CHANGED = ("OLD.status IS DISTINCT FROM NEW.status OR OLD.organization_id IS DISTINCT FROM NEW.organization_id "
            "OR OLD.run_type IS DISTINCT FROM NEW.run_type OR OLD.origin IS DISTINCT FROM NEW.origin "
            "OR OLD.completed_at IS DISTINCT FROM NEW.completed_at")
_COLUMNS = "status, organization_id, run_type, origin, completed_at"
_PG_TRIGGERS = [
    "CREATE TRIGGER runs_count_insert_delete AFTER INSERT OR DELETE ON runs "
    "FOR EACH ROW EXECUTE FUNCTION curatore_count_runs()",
    f"CREATE TRIGGER runs_count_update AFTER UPDATE OF {_COLUMNS} ON runs FOR EACH ROW WHEN ({_CHANGED}) "
    "EXECUTE FUNCTION curatore_count_runs()",
]


def _sqlite_hour(row: str) -> str:
    return (f"CASE WHEN {row}.completed_at IS NOT NULL AND {row}.status IN {ENDED} "
            f"THEN CAST(strftime('%s', {row}.completed_at) AS INTEGER) / 3600 END")


_INSERT = "INSERT INTO run_count_deltas (organization_id, run_type, status, origin, ended_hour, seconds, n) VALUES "
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER runs_count_insert AFTER INSERT ON runs BEGIN {_INSERT}"
    f"(NEW.organization_id, NEW.run_type, NEW.status, NEW.origin, {_sqlite_hour('NEW')}, NULL, 1); END",
    f"CREATE TRIGGER runs_count_delete AFTER DELETE ON runs BEGIN {_INSERT}"
    f"(OLD.organization_id, OLD.run_type, OLD.status, OLD.origin, {_sqlite_hour('OLD')}, NULL, -1); END",
    f"CREATE TRIGGER runs_count_update AFTER UPDATE OF {_COLUMNS} ON runs "
    f"WHEN {_CHANGED.replace('IS DISTINCT FROM', 'IS NOT')} BEGIN {_INSERT}"
    f"(OLD.organization_id, OLD.run_type, OLD.status, OLD.origin, {_sqlite_hour('OLD')}, NULL, -1), "
    f"(NEW.organization_id, NEW.run_type, NEW.status, NEW.origin, {_sqlite_hour('NEW')}, "
    "CASE WHEN NEW.status = 'completed' AND OLD.status <> 'completed' AND NEW.started_at IS NOT NULL "
    "THEN (julianday(NEW.completed_at) - julianday(NEW.started_at)) * 86400.0 END, 1); END",
]


def upgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    op.create_table(
        "run_count_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("run_type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("ended_hour", sa.BigInteger(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("n", sa.Integer(), nullable=False),
    )
    op.create_table(
        "run_counts",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("run_type", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "run_type", "status", "origin"),
    )
    op.create_table(
        "run_ends",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "status", "hour"),
    )
    op.create_table(
        "run_type_stats",
        sa.Column("run_type", sa.String(64), nullable=False),
        sa.Column("mean_seconds", sa.Float(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_type"),
    )
    op.drop_index("ix_runs_run_type", table_name="runs")
    for name, columns in INDEXES:
        if name in POSTGRES_ONLY and not postgres:
            continue
        where = f" WHERE {PARTIAL[name]}" if name in PARTIAL else ""
        op.execute(f"CREATE INDEX {name} ON runs ({', '.join(columns)}){where}")
    if postgres:
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for statement in _PG_SEARCH:
            op.execute(statement)
        op.execute(f"INSERT INTO run_search (run_id, body) SELECT id, {SEARCH_TEXT.replace('NEW.', '')} FROM runs")
        op.execute(_PG_FUNCTION)
        for trigger in _PG_TRIGGERS:
            op.execute(trigger)
    else:
        for trigger in _SQLITE_TRIGGERS:
            op.execute(trigger)
    # The runs already there: counted once, as the triggers would have.
    every = "'00000000-0000-0000-0000-000000000000'" if postgres else "'00000000000000000000000000000000'"
    op.execute("INSERT INTO run_counts (organization_id, run_type, status, origin, n) "
               "SELECT organization_id, run_type, status, origin, count(*) FROM runs "
               "GROUP BY organization_id, run_type, status, origin")
    op.execute(f"INSERT INTO run_counts (organization_id, run_type, status, origin, n) "
               f"SELECT {every}, run_type, status, origin, count(*) FROM runs GROUP BY run_type, status, origin")
    hour = ("floor(extract(epoch FROM completed_at) / 3600)" if postgres
            else "CAST(strftime('%s', completed_at) AS INTEGER) / 3600")
    op.execute(f"INSERT INTO run_ends (organization_id, status, hour, n) "
               f"SELECT organization_id, status, {hour}, count(*) FROM runs "
               f"WHERE completed_at IS NOT NULL AND status IN {ENDED} GROUP BY organization_id, status, {hour}")
    op.execute(f"INSERT INTO run_ends (organization_id, status, hour, n) "
               f"SELECT {every}, status, {hour}, count(*) FROM runs "
               f"WHERE completed_at IS NOT NULL AND status IN {ENDED} GROUP BY status, {hour}")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS runs_count_update ON runs")
        op.execute("DROP TRIGGER IF EXISTS runs_count_insert_delete ON runs")
        op.execute("DROP FUNCTION IF EXISTS curatore_count_runs()")
        op.execute("DROP TRIGGER IF EXISTS runs_search_update ON runs")
        op.execute("DROP TRIGGER IF EXISTS runs_search_insert ON runs")
        op.execute("DROP TABLE IF EXISTS run_search")
        op.execute("DROP FUNCTION IF EXISTS curatore_search_runs()")
    else:
        for name in ("runs_count_insert", "runs_count_delete", "runs_count_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    for name, _ in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.create_index("ix_runs_run_type", "runs", ["run_type"])
    for table in ("run_type_stats", "run_ends", "run_counts", "run_count_deltas"):
        op.drop_table(table)
