"""Run counters for the jobs list: type tabs, status cards and ETAs without counting or sorting runs.

Triggers on ``runs`` (migration 0012) append a delta row in the writer's own transaction for every insert, delete
and change of a run's organization, type, status, origin or end time: -1 for its old key, +1 for its new one.
So every path that writes runs is counted (the state machine, bulk submits, retention and deletion, moving
runs to another organization, a bulk load), exactly, and writers only ever insert: no two transitions wait
for the same counter row.

:func:`compact` folds the deltas into ``run_counts`` (organization × type × status × origin), ``run_ends``
(organization × status × hour of ``completed_at``; both also under :data:`EVERY_ORG`, every organization
together, so a system-wide read is as small as one organization's) and ``run_type_stats`` (an exponentially weighted mean
duration per type, from the runs that completed); every worker node runs it on its housekeeping beat, and a
reader that finds many deltas runs it too. Readers add the deltas not folded yet, so a count is exact whenever
it is read, folded or not.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, literal, select, text, union_all
from sqlmodel import Session

from backend.db.engine import in_transaction
from backend.db.models import Run, RunCount, RunCountDelta, RunEnd, RunTypeStat
from backend.db.states import RunStatus
from backend.db.types import utcnow

ALPHA = 2 / 51  # the weight of a new sample: about the mean of the last 50 completed runs
COMPACT_AT = 2000  # a reader that sees more unfolded deltas than this folds them
BATCH = 20000  # deltas folded per transaction
KEEP_HOURS = 48  # run_ends buckets older than this are dropped (the cards look back 24 h)
_LOCK = 7_310_014  # pg_try_advisory_xact_lock key: one compactor at a time
ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED)

Scope = Collection[uuid.UUID] | None  # organizations, or None for all
EVERY_ORG = uuid.UUID(int=0)  # the folded rows that count every organization together


def _in_scope(column: Any, orgs: Scope) -> list[Any]:
    if orgs is None:
        return []
    return [column.in_(list(orgs))]


def _folded_scope(column: Any, orgs: Scope) -> list[Any]:
    """Folded rows: one organization's own, or the :data:`EVERY_ORG` rows for all of them."""
    return [column == EVERY_ORG] if orgs is None else [column.in_(list(orgs))]


def scope_of(organization_id: uuid.UUID | None, organization_ids: Collection[uuid.UUID] | None = None) -> Scope:
    """One organization, a principal's organizations, both (their intersection), or None: every one."""
    if organization_id is None:
        return None if organization_ids is None else frozenset(organization_ids)
    if organization_ids is not None and organization_id not in organization_ids:
        return frozenset()
    return frozenset({organization_id})


def counts(orgs: Scope, session: Session | None = None) -> dict[tuple[str, str, str], int]:
    """Runs per (stored run_type, status, origin) in ``orgs``."""

    def read(s: Session) -> dict[tuple[str, str, str], int]:
        folded = select(RunCount.run_type, RunCount.status, RunCount.origin, RunCount.n.label("n"),
                        literal(0).label("d")).where(*_folded_scope(RunCount.organization_id, orgs))
        unfolded = select(RunCountDelta.run_type, RunCountDelta.status, RunCountDelta.origin,
                          RunCountDelta.n.label("n"), literal(1).label("d")
                          ).where(*_in_scope(RunCountDelta.organization_id, orgs))
        both = union_all(folded, unfolded).subquery()
        rows = s.execute(select(both.c.run_type, both.c.status, both.c.origin, func.sum(both.c.n),
                                func.sum(both.c.d)).group_by(both.c.run_type, both.c.status, both.c.origin)).all()
        _note_unfolded(sum(int(r[4] or 0) for r in rows))
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows if int(r[3])}

    return in_transaction(read, session, read_only=True)


def ended_since(orgs: Scope, since: datetime, statuses: Collection[RunStatus] = ENDED,
                session: Session | None = None) -> dict[str, int]:
    """Runs per status that ended (``completed_at``) at or after ``since``, among ``statuses``: whole hours from
    the buckets, the first, partial hour counted in ``runs`` through ``ix_runs_status_completed``."""
    first = int(since.timestamp() // 3600)  # the hour ``since`` falls in
    names = [RunStatus(st).value for st in statuses]

    def read(s: Session) -> dict[str, int]:
        folded = select(RunEnd.status, RunEnd.n.label("n")).where(
            *_folded_scope(RunEnd.organization_id, orgs), RunEnd.status.in_(names), RunEnd.hour > first)
        unfolded = select(RunCountDelta.status, RunCountDelta.n.label("n")).where(
            *_in_scope(RunCountDelta.organization_id, orgs), RunCountDelta.status.in_(names),
            RunCountDelta.ended_hour > first)
        both = union_all(folded, unfolded).subquery()
        out = {str(st): int(n) for st, n in s.execute(select(both.c.status, func.sum(both.c.n))
                                                        .group_by(both.c.status)).all()}
        edge = datetime.fromtimestamp((first + 1) * 3600, tz=since.tzinfo)
        partial = s.execute(select(Run.status, func.count()).where(
            *_in_scope(Run.organization_id, orgs), Run.status.in_(names), Run.completed_at >= since,
            Run.completed_at < edge).group_by(Run.status)).all()
        for st, n in partial:
            key = st.value if isinstance(st, RunStatus) else str(st)
            out[key] = out.get(key, 0) + int(n)
        return {k: v for k, v in out.items() if v}

    return in_transaction(read, session, read_only=True)


def type_means(run_types: Collection[str], session: Session | None = None) -> dict[str, float]:
    """Each type's weighted mean duration in seconds (types that never completed a run are left out)."""
    if not run_types:
        return {}
    wanted = sorted(set(run_types))

    def read(s: Session) -> dict[str, float]:
        stats = {r.run_type: (r.mean_seconds, r.samples) for r in s.execute(
            select(RunTypeStat.run_type, RunTypeStat.mean_seconds, RunTypeStat.samples)
            .where(RunTypeStat.run_type.in_(wanted))).all()}
        samples = s.execute(select(RunCountDelta.run_type, RunCountDelta.seconds).where(
            RunCountDelta.run_type.in_(wanted), RunCountDelta.seconds.is_not(None)).order_by(RunCountDelta.id)).all()
        for run_type, seconds in samples:
            stats[run_type] = _fold(stats.get(run_type, (0.0, 0)), float(seconds))
        return {k: mean for k, (mean, n) in stats.items() if n}

    return in_transaction(read, session, read_only=True)


def _fold(stat: tuple[float, int], seconds: float) -> tuple[float, int]:
    mean, n = stat
    return (seconds if n == 0 else mean + ALPHA * (seconds - mean)), n + 1


_unfolded_seen = 0


def _note_unfolded(n: int) -> None:
    global _unfolded_seen
    _unfolded_seen = max(_unfolded_seen, n)


def compact_if_needed() -> int:
    """Fold the deltas if a recent read saw more than :data:`COMPACT_AT` of them (call outside a transaction)."""
    global _unfolded_seen
    if _unfolded_seen <= COMPACT_AT:
        return 0
    _unfolded_seen = 0
    return compact()


def compact(batch: int = BATCH) -> int:
    """Fold up to ``batch`` deltas (oldest first) into the counters, in one transaction; returns how many. On
    PostgreSQL one compactor at a time (others return 0 at once); the deltas a transaction deletes are exactly
    the ones it adds up (``DELETE … RETURNING``), so a delta committed meanwhile is folded by the next pass."""

    if in_transaction(lambda s: s.execute(select(RunCountDelta.id).limit(1)).first(), read_only=True) is None:
        return 0  # nothing to fold: no write transaction (on SQLite, no wait for the write lock)

    def write(s: Session) -> int:
        postgres = s.get_bind().dialect.name == "postgresql"
        if postgres and not s.execute(text(f"SELECT pg_try_advisory_xact_lock({_LOCK})")).scalar_one():
            return 0
        if postgres:
            return _fold_in_postgres(s, batch)
        oldest = select(RunCountDelta.id).order_by(RunCountDelta.id).limit(batch)
        if postgres:
            oldest = oldest.with_for_update(skip_locked=True)
        rows = s.execute(delete(RunCountDelta).where(RunCountDelta.id.in_(oldest.scalar_subquery()))
                         .returning(RunCountDelta.id, RunCountDelta.organization_id, RunCountDelta.run_type,
                                    RunCountDelta.status, RunCountDelta.origin, RunCountDelta.ended_hour,
                                    RunCountDelta.seconds, RunCountDelta.n)
                         .execution_options(synchronize_session=False)).all()
        if not rows:
            return 0
        by_key: dict[tuple[Any, ...], int] = defaultdict(int)
        by_hour: dict[tuple[Any, ...], int] = defaultdict(int)
        durations: dict[str, list[float]] = defaultdict(list)
        for r in sorted(rows, key=lambda r: r.id):
            for org in (r.organization_id, EVERY_ORG):
                by_key[(org, r.run_type, r.status, r.origin)] += r.n
                if r.ended_hour is not None:
                    by_hour[(org, r.status, r.ended_hour)] += r.n
            if r.seconds is not None:
                durations[r.run_type].append(float(r.seconds))
        _add(s, RunCount, ["organization_id", "run_type", "status", "origin"],
             [dict(zip(("organization_id", "run_type", "status", "origin"), k), n=n) for k, n in by_key.items() if n])
        _add(s, RunEnd, ["organization_id", "status", "hour"],
             [dict(zip(("organization_id", "status", "hour"), k), n=n) for k, n in by_hour.items() if n])
        s.execute(delete(RunCount).where(RunCount.n == 0))
        now_hour = int(utcnow().timestamp() // 3600)
        s.execute(delete(RunEnd).where(RunEnd.hour < now_hour - KEEP_HOURS))
        _fold_durations(s, durations)
        return len(rows)

    return in_transaction(write)


# PostgreSQL folds in one statement: the deltas deleted are summed by the database, and only the completed runs'
# durations come back (for the weighted means), not every delta row: a worker node's main process, which also
# hands tasks to its pool, must not spend its time adding up rows.
_FOLD = text(f"""
WITH d AS (
  DELETE FROM run_count_deltas WHERE id IN (
    SELECT id FROM run_count_deltas ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED)
  RETURNING id, organization_id, run_type, status, origin, ended_hour, seconds, n
), counted AS (
  INSERT INTO run_counts AS c (organization_id, run_type, status, origin, n)
  SELECT org, run_type, status, origin, sum(n) FROM (
    SELECT organization_id AS org, run_type, status, origin, n FROM d
    UNION ALL SELECT '{EVERY_ORG}'::uuid, run_type, status, origin, n FROM d) AS k
  GROUP BY org, run_type, status, origin HAVING sum(n) <> 0
  ON CONFLICT (organization_id, run_type, status, origin) DO UPDATE SET n = c.n + EXCLUDED.n
), ended AS (
  INSERT INTO run_ends AS e (organization_id, status, hour, n)
  SELECT org, status, ended_hour, sum(n) FROM (
    SELECT organization_id AS org, status, ended_hour, n FROM d WHERE ended_hour IS NOT NULL
    UNION ALL SELECT '{EVERY_ORG}'::uuid, status, ended_hour, n FROM d WHERE ended_hour IS NOT NULL) AS h
  GROUP BY org, status, ended_hour HAVING sum(n) <> 0
  ON CONFLICT (organization_id, status, hour) DO UPDATE SET n = e.n + EXCLUDED.n
)
SELECT count(*),
       coalesce(json_agg(json_build_array(run_type, seconds) ORDER BY id) FILTER (WHERE seconds IS NOT NULL), '[]')
FROM d
""")


def _fold_in_postgres(s: Session, batch: int) -> int:
    folded, samples = s.execute(_FOLD, {"batch": batch}).one()
    if not folded:
        return 0
    durations: dict[str, list[float]] = defaultdict(list)
    for run_type, seconds in samples:
        durations[run_type].append(float(seconds))
    s.execute(delete(RunCount).where(RunCount.n == 0))
    s.execute(delete(RunEnd).where(RunEnd.hour < int(utcnow().timestamp() // 3600) - KEEP_HOURS))
    _fold_durations(s, durations)
    return int(folded)


def _upsert(s: Session, model: Any) -> Any:
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(model)


def _add(s: Session, model: Any, key: list[str], values: list[dict[str, Any]]) -> None:
    """Add each row's ``n`` to the counter row with its key (created at 0 if missing)."""
    if not values:
        return
    stmt = _upsert(s, model)
    s.execute(stmt.on_conflict_do_update(index_elements=key, set_={"n": model.n + stmt.excluded.n}), values)


def _fold_durations(s: Session, durations: dict[str, list[float]]) -> None:
    if not durations:
        return
    current = {r.run_type: (r.mean_seconds, r.samples) for r in s.execute(
        select(RunTypeStat).where(RunTypeStat.run_type.in_(list(durations)))).scalars()}
    now = utcnow()
    values = []
    for run_type, seconds in durations.items():
        stat = current.get(run_type, (0.0, 0))
        for value in seconds:
            stat = _fold(stat, value)
        values.append({"run_type": run_type, "mean_seconds": stat[0], "samples": stat[1], "updated_at": now})
    stmt = _upsert(s, RunTypeStat)
    s.execute(stmt.on_conflict_do_update(index_elements=["run_type"], set_={
        "mean_seconds": stmt.excluded.mean_seconds, "samples": stmt.excluded.samples,
        "updated_at": stmt.excluded.updated_at}), values)


def compact_all() -> int:
    """Fold every delta there is (tests, benchmarks)."""
    total = 0
    while n := compact():
        total += n
    return total


def rebuild(session: Session | None = None, sample: int = 50) -> None:
    """Count everything again from ``runs`` (after a bulk load with the triggers off, or to repair): the counters
    and buckets, and each type's mean duration from its last ``sample`` completed runs."""

    def write(s: Session) -> None:
        postgres = s.get_bind().dialect.name == "postgresql"
        for model in (RunCountDelta, RunCount, RunEnd, RunTypeStat):
            s.execute(delete(model))
        every = f"'{EVERY_ORG}'" if postgres else f"'{EVERY_ORG.hex}'"
        s.execute(text("INSERT INTO run_counts (organization_id, run_type, status, origin, n) "
                       "SELECT organization_id, run_type, status, origin, count(*) FROM runs "
                       "GROUP BY organization_id, run_type, status, origin"))
        s.execute(text(f"INSERT INTO run_counts (organization_id, run_type, status, origin, n) "
                       f"SELECT {every}, run_type, status, origin, count(*) FROM runs GROUP BY run_type, status, origin"))
        hour = ("floor(extract(epoch FROM completed_at) / 3600)" if postgres
                else "CAST(strftime('%s', completed_at) AS INTEGER) / 3600")
        ended = ", ".join(f"'{st.value}'" for st in ENDED)
        since = int(utcnow().timestamp() // 3600) - KEEP_HOURS
        s.execute(text(f"INSERT INTO run_ends (organization_id, status, hour, n) "
                       f"SELECT organization_id, status, {hour}, count(*) FROM runs "
                       f"WHERE completed_at IS NOT NULL AND status IN ({ended}) AND {hour} >= {since} "
                       f"GROUP BY organization_id, status, {hour}"))
        s.execute(text(f"INSERT INTO run_ends (organization_id, status, hour, n) "
                       f"SELECT {every}, status, {hour}, count(*) FROM runs "
                       f"WHERE completed_at IS NOT NULL AND status IN ({ended}) AND {hour} >= {since} "
                       f"GROUP BY status, {hour}"))
        types = [t for (t,) in s.execute(select(Run.run_type).distinct()).all()]
        now = utcnow()
        for run_type in types:
            rows = s.execute(select(Run.started_at, Run.completed_at).where(
                Run.run_type == run_type, Run.status == RunStatus.COMPLETED, Run.started_at.is_not(None))
                .order_by(Run.completed_at.desc()).limit(sample)).all()
            if rows:
                stat = (0.0, 0)
                for started, ended_at in reversed(rows):
                    stat = _fold(stat, (ended_at - started).total_seconds())
                s.add(RunTypeStat(run_type=run_type, mean_seconds=stat[0], samples=stat[1], updated_at=now))

    in_transaction(write, session)


def hour_of(moment: datetime) -> int:
    return int(moment.timestamp() // 3600)

