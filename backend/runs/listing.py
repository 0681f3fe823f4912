"""The jobs list: filters, search, keyset pages, counts, queue positions.

A page is addressed by an opaque cursor (the sort key of its last row), so
page N costs the same as page 1 however many runs there are.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from sqlalchemy import Column, MetaData, String, Table, Text, Uuid, and_, cast, exists, func, literal, or_, select
from sqlalchemy.sql import Select
from sqlmodel import Session

from backend.db.engine import get_engine, in_transaction
from backend.db.models import Organization, Run, RunGroup
from backend.db.states import RunOrigin, RunStatus
from backend.db.types import utcnow
from backend.errors import CuratoreError
from backend.jobtypes.registry import get_registry
from backend.runs import counters
from backend.validation import storable

S = RunStatus
QUEUED = (S.PENDING, S.SUBMITTED)
ACTIVE_RUNNING = (S.RUNNING, S.CANCELLING, S.STALE)


@dataclass(frozen=True)
class ListQuery:
    organization_id: uuid.UUID | None = None  # None: every organization (system admins)
    organization_ids: frozenset[uuid.UUID] | None = None  # also limit to these (a principal's visible orgs)
    run_types: tuple[str, ...] = ()  # registry keys; aliases of a key are included
    statuses: tuple[RunStatus, ...] = ()
    origins: tuple[RunOrigin, ...] = ()
    created_from: datetime | None = None
    created_to: datetime | None = None
    search: str = ""
    top_level_only: bool = False
    parent_run_id: uuid.UUID | None = None
    created_by: str | None = None  # e.g. "schedule:<name>": the runs a scheduled task started
    sort: Literal["created", "priority"] = "created"


@dataclass
class Page:
    runs: list[Run]
    next_cursor: str | None
    child_counts: dict[uuid.UUID, dict[str, int]] = field(default_factory=dict)
    queue_positions: dict[uuid.UUID, int] = field(default_factory=dict)
    etas: dict[uuid.UUID, float] = field(default_factory=dict)  # seconds until a queued run should start
    org_slugs: dict[uuid.UUID, str] = field(default_factory=dict)


def _types_with_aliases(keys: tuple[str, ...]) -> list[str]:
    registry = get_registry()
    names = set(keys)
    for alias, key in registry.aliases.items():
        if key in names:
            names.add(alias)
    return sorted(names)


def _filtered(q: ListQuery, *, with_types: bool = True, with_statuses: bool = True) -> Select[Any]:
    stmt = select(Run)
    if q.organization_id:
        stmt = stmt.where(Run.organization_id == q.organization_id)
    if q.organization_ids is not None:
        stmt = stmt.where(Run.organization_id.in_(q.organization_ids))
    if with_types and q.run_types:
        stmt = stmt.where(Run.run_type.in_(_types_with_aliases(q.run_types)))
    if with_statuses and q.statuses:
        stmt = stmt.where(Run.status.in_(q.statuses))
    if q.origins:
        stmt = stmt.where(Run.origin.in_(q.origins))
    if q.created_from:
        stmt = stmt.where(Run.created_at >= q.created_from)
    if q.created_to:
        stmt = stmt.where(Run.created_at < q.created_to)
    if q.top_level_only:
        stmt = stmt.where(Run.parent_run_id.is_(None))
    if q.parent_run_id:
        stmt = stmt.where(Run.parent_run_id == q.parent_run_id)
    if q.created_by is not None:
        stmt = stmt.where(Run.created_by == q.created_by)
    if q.search.strip():
        stmt = stmt.where(_search_clause(q.search.strip()))
    return stmt


# PostgreSQL: each run's searchable text (name, type, the id's hex digits, config; lower case), written by a
# trigger when the run is inserted, with a trigram index (migration 0012).
run_search = Table("run_search", MetaData(), Column("run_id", Uuid, primary_key=True), Column("body", Text))


def _pg_search(like: str) -> Any:
    """PostgreSQL: the runs whose text (``run_search``) matches ``like``, as a semi-join the planner can start from
    either side: walking the list in its order and checking each run (a common term: the page fills soon), or
    the trigram index (a rare one). It chooses well because ``run_search.body`` keeps a 1,000-entry histogram
    (migration 0012), against which PostgreSQL tries the pattern: with the default 100 it guessed a word on a
    quarter of all runs to match 0.03 % of them, and sorted every match."""
    return exists(select(literal(1)).where(run_search.c.run_id == Run.id, run_search.c.body.like(like)))


def _search_clause(text: str) -> Any:
    """Name, config text, type or id. A character that cannot be stored (typed into the UI's search box, say)
    matches nothing and must not reach the driver, which could not encode it. PostgreSQL: one LIKE over
    :data:`run_search` through its trigram index (an id's hex digits match anywhere in it); SQLite: a scan."""
    text = storable(text)
    like = f"%{text.lower()}%"
    exact_id = None
    try:
        exact_id = uuid.UUID(text)
    except ValueError:
        pass
    if get_engine().dialect.name == "postgresql":
        clauses = [_pg_search(like)]
        if exact_id is not None:
            clauses.append(Run.id == exact_id)
        return or_(*clauses)
    clauses = [
        func.lower(func.coalesce(Run.display_name, "")).like(like),
        func.lower(cast(Run.config, String)).like(like),
        func.lower(Run.run_type).like(like),
    ]
    if exact_id is not None:
        clauses.append(Run.id == exact_id)
    else:
        hexpart = text.lower().replace("-", "")
        if 4 <= len(hexpart) <= 32 and all(c in "0123456789abcdef" for c in hexpart):
            clauses.append(func.lower(func.replace(cast(Run.id, String), "-", "")).like(f"{hexpart}%"))
    return or_(*clauses)


def _encode(values: list[Any]) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, uuid.UUID) else v
                      for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


class InvalidCursor(CuratoreError):
    """That page cursor is not valid."""

    code = "invalid_cursor"
    http_status = 422


def _decode(cursor: str) -> list[Any]:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, json.JSONDecodeError):
        raise InvalidCursor("That page cursor is not valid.") from None


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _cursor_key(cursor: str, sort: str) -> tuple[Any, ...]:
    """The sort key a cursor holds: (created_at, id), or (priority, created_at, id) for the priority sort."""
    values = _decode(cursor)
    try:
        if sort == "priority":
            prio, created, rid = values
            if not isinstance(prio, int) or isinstance(prio, bool) or not 0 <= prio <= 4:
                raise ValueError(prio)
            return prio, _utc(created), uuid.UUID(rid)
        created, rid = values
        return _utc(created), uuid.UUID(rid)
    except (TypeError, ValueError, AttributeError, OverflowError):
        raise InvalidCursor("That page cursor is not valid.") from None


def page(q: ListQuery, cursor: str | None = None, limit: int = 50, session: Session | None = None) -> Page:
    stmt = _filtered(q)
    if q.sort == "priority":
        order = (Run.priority.desc(), Run.created_at.desc(), Run.id.desc())
        if cursor:
            prio, created_dt, rid_u = _cursor_key(cursor, "priority")
            stmt = stmt.where(
                or_(
                    Run.priority < prio,
                    and_(Run.priority == prio, Run.created_at < created_dt),
                    and_(Run.priority == prio, Run.created_at == created_dt, Run.id < rid_u),
                )
            )
    else:
        order = (Run.created_at.desc(), Run.id.desc())
        if cursor:
            created_dt, rid_u = _cursor_key(cursor, "created")
            stmt = stmt.where(or_(Run.created_at < created_dt, and_(Run.created_at == created_dt, Run.id < rid_u)))
    stmt = stmt.order_by(*order).limit(limit + 1)

    def read(s: Session) -> Page:
        rows = list(s.execute(stmt).scalars().all())
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            key = [last.priority, last.created_at, last.id] if q.sort == "priority" else [last.created_at, last.id]
            next_cursor = _encode(key)
        queued = [r for r in rows if RunStatus(r.status) in QUEUED]
        positions = queue_positions(queued, s)
        return Page(
            runs=rows,
            next_cursor=next_cursor,
            child_counts=child_counts([r.id for r in rows if r.is_group_parent], s),
            queue_positions=positions,
            etas=_etas(queued, positions, s),
            org_slugs=_org_slugs({r.organization_id for r in rows}, s),
        )

    return in_transaction(read, session)


def annotate(runs: list[Run], session: Session | None = None) -> Page:
    """What a page carries for these runs (child counts, queue positions, ETAs, organization slugs),
    without a cursor: for showing runs that did not come from :func:`page`."""

    def read(s: Session) -> Page:
        queued = [r for r in runs if RunStatus(r.status) in QUEUED]
        positions = queue_positions(queued, s)
        return Page(runs=list(runs), next_cursor=None,
                    child_counts=child_counts([r.id for r in runs if r.is_group_parent], s),
                    queue_positions=positions, etas=_etas(queued, positions, s),
                    org_slugs=_org_slugs({r.organization_id for r in runs}, s))

    return in_transaction(read, session)


def child_counts(parent_ids: list[uuid.UUID], session: Session) -> dict[uuid.UUID, dict[str, int]]:
    if not parent_ids:
        return {}
    rows = session.execute(select(RunGroup).where(RunGroup.parent_run_id.in_(parent_ids))).scalars().all()
    return {g.parent_run_id: group_counts(g) for g in rows}


def group_counts(g: RunGroup) -> dict[str, int]:
    done = g.completed + g.failed + g.cancelled
    return {
        "total": g.expected, "completed": g.completed, "failed": g.failed, "cancelled": g.cancelled,
        "active": max(g.expected - done, 0),
    }


def queue_positions(runs: list[Run], session: Session) -> dict[uuid.UUID, int]:
    """1-based position of each queued run in its queue (priority first, then age)."""
    if not runs:
        return {}
    queues = {r.queue for r in runs}
    position = func.row_number().over(
        partition_by=Run.queue, order_by=(Run.priority.desc(), Run.created_at, Run.id)
    ).label("position")
    inner = select(Run.id, position).where(Run.status.in_(QUEUED), Run.queue.in_(queues)).subquery()
    wanted = {r.id for r in runs}
    rows = session.execute(select(inner.c.id, inner.c.position).where(inner.c.id.in_(wanted))).all()
    return {row.id: int(row.position) for row in rows}


def mean_durations(run_types: set[str], sample: int = 50, session: Any = None) -> dict[str, float]:
    """Each type's mean duration in seconds: an exponentially weighted mean over its completed runs, weighted
    like the last ``sample`` of them, kept by :mod:`backend.runs.counters` (in ``session`` if given: on SQLite a
    second transaction opened inside another would wait for its write lock)."""
    return counters.type_means(run_types, session=session)


def eta_seconds(position: int, queue_limit: int, mean_duration: float | None) -> float | None:
    """Rough wait before a run at ``position`` (1-based) starts: the waves ahead of it times the mean duration."""
    if mean_duration is None or position <= 0:
        return None
    waves = (position - 1) // max(queue_limit, 1) + 1
    return waves * mean_duration


def _etas(queued: list[Run], positions: dict[uuid.UUID, int], session: Session) -> dict[uuid.UUID, float]:
    if not queued:
        return {}
    means = mean_durations({r.run_type for r in queued}, session=session)
    queues = get_registry().queues
    etas = {}
    for r in queued:
        limit = queues[r.queue].max_concurrency if r.queue in queues else 1
        eta = eta_seconds(positions.get(r.id, 0), limit, means.get(r.run_type))
        if eta is not None:
            etas[r.id] = eta
    return etas


def _org_slugs(org_ids: set[uuid.UUID], session: Session) -> dict[uuid.UUID, str]:
    if not org_ids:
        return {}
    rows = session.execute(select(Organization.id, Organization.slug).where(Organization.id.in_(org_ids))).all()
    return {row.id: row.slug for row in rows}


def _counted(q: ListQuery) -> bool:
    """Whether the counters answer ``q``'s counts: organization, type, status and origin filters only."""
    return not (q.created_from or q.created_to or q.search.strip() or q.top_level_only or q.parent_run_id)


def type_counts(q: ListQuery, session: Session | None = None) -> dict[str, int]:
    """Runs per registry key under every filter but the type filter (for the type tabs): from the counters
    (:mod:`backend.runs.counters`) when the filters are organization, status and origin; counted otherwise."""
    registry = get_registry()

    def key_of(run_type: str) -> str:
        job_type = registry.find(run_type)
        return job_type.key if job_type else run_type

    if _counted(q):
        statuses = {RunStatus(st).value for st in q.statuses}
        origins = {RunOrigin(o).value for o in q.origins}
        totals: dict[str, int] = {}
        for (run_type, status, origin), n in counters.counts(
                counters.scope_of(q.organization_id, q.organization_ids), session).items():
            if (not statuses or status in statuses) and (not origins or origin in origins):
                totals[key_of(run_type)] = totals.get(key_of(run_type), 0) + n
        if session is None:
            counters.compact_if_needed()
        return totals
    base = _filtered(q, with_types=False).subquery()
    stmt = select(base.c.run_type, func.count()).group_by(base.c.run_type)

    def read(s: Session) -> dict[str, int]:
        out: dict[str, int] = {}
        for run_type, n in s.execute(stmt).all():
            out[key_of(run_type)] = out.get(key_of(run_type), 0) + n
        return out

    return in_transaction(read, session)


def status_counts(q: ListQuery, session: Session | None = None) -> dict[str, int]:
    """Runs per status under ``q``'s organization, type and origin filters, from the counters."""
    if not _counted(q):
        raise ValueError("status_counts answers organization, type and origin filters only")
    types = set(_types_with_aliases(q.run_types)) if q.run_types else None
    origins = {RunOrigin(o).value for o in q.origins}
    out: dict[str, int] = {}
    for (run_type, status, origin), n in counters.counts(
            counters.scope_of(q.organization_id, q.organization_ids), session).items():
        if (types is None or run_type in types) and (not origins or origin in origins):
            out[status] = out.get(status, 0) + n
    return out


def status_cards(organization_id: uuid.UUID | None, session: Session | None = None,
                 organization_ids: frozenset[uuid.UUID] | None = None) -> dict[str, int]:
    """pending, running, done in the last 24 h, failed in the last 24 h, stale: from the counters
    (:mod:`backend.runs.counters`), for one organization, or the ones in ``organization_ids``, or all."""
    since = utcnow() - timedelta(hours=24)
    orgs = counters.scope_of(organization_id, organization_ids)

    def read(s: Session) -> dict[str, int]:
        by_status: dict[str, int] = {}
        for (_, status, _), n in counters.counts(orgs, s).items():
            by_status[status] = by_status.get(status, 0) + n
        ended = counters.ended_since(orgs, since, (S.COMPLETED, S.FAILED, S.TIMED_OUT), s)

        def total(statuses: tuple[RunStatus, ...], source: dict[str, int]) -> int:
            return sum(source.get(st.value, 0) for st in statuses)

        return {
            "pending": total(QUEUED, by_status),
            "running": total((S.RUNNING, S.CANCELLING), by_status),
            "done_24h": total((S.COMPLETED,), ended),
            "failed_24h": total((S.FAILED, S.TIMED_OUT), ended),
            "stale": total((S.STALE,), by_status),
        }

    cards = in_transaction(read, session, read_only=True)
    if session is None:
        counters.compact_if_needed()
    return cards


def active_for_resource(
    resource_type: str,
    resource_id: str,
    run_type: str | None = None,
    organization_id: uuid.UUID | None = None,
    session: Session | None = None,
) -> tuple[list[Run], dict[uuid.UUID, dict[str, int]]]:
    """Active runs working on one resource (oldest first), with child counts for group parents."""
    stmt = select(Run).where(Run.resource_type == resource_type, Run.resource_id == resource_id,
                             Run.status.in_([s for s in RunStatus if s.is_active]))
    if run_type:
        stmt = stmt.where(Run.run_type.in_(_types_with_aliases((run_type,))))
    if organization_id:
        stmt = stmt.where(Run.organization_id == organization_id)
    stmt = stmt.order_by(Run.created_at, Run.id).limit(20)

    def read(s: Session) -> tuple[list[Run], dict[uuid.UUID, dict[str, int]]]:
        runs = list(s.execute(stmt).scalars().all())
        return runs, child_counts([r.id for r in runs if r.is_group_parent], s)

    return in_transaction(read, session)
