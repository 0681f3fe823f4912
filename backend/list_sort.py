"""The jobs list sorted by a column (duration, status, type), keyset-paged like ``runs.listing.page``.

``runs.listing.page`` serves the newest-first and priority orders. This adds the columns an operator sorts by;
each page is addressed by a cursor holding the sort key of its last row, so page N costs what page 1 does.
A running run's duration counts up to the moment the first page was read; that moment travels in the cursor, so
the pages that follow agree with the first.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy import Numeric, and_, case, cast, false, func, literal, literal_column, or_, select, union_all
from sqlalchemy.orm import aliased
from sqlmodel import Session

from backend.db.engine import get_engine, in_transaction
from backend.db.models import Run
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.runs import listing

Column = Literal["created", "duration", "status", "type"]
COLUMNS: tuple[str, ...] = ("created", "duration", "status", "type")
# Status order, ascending: what needs attention first, finished last.
STATUS_ORDER = ("running", "cancelling", "stale", "submitted", "pending", "failed", "timed_out", "cancelled",
                "completed")


def _duration(now: datetime) -> Any:
    """Seconds from start to end (or to ``now`` while running), rounded to the millisecond; -1 if not started."""
    if get_engine().dialect.name == "sqlite":
        end = func.coalesce(Run.completed_at, literal(now.astimezone(timezone.utc).replace(tzinfo=None)))
        seconds = (func.julianday(end) - func.julianday(Run.started_at)) * 86400.0
    else:
        end = func.coalesce(Run.completed_at, literal(now))
        seconds = func.extract("epoch", end - Run.started_at)
    return func.coalesce(func.round(seconds, 3), -1)


def _key(column: str, now: datetime) -> Any:
    if column == "created":
        return Run.created_at
    if column == "duration":
        return _duration(now)
    if column == "status":
        return case({s: i for i, s in enumerate(STATUS_ORDER)}, value=Run.status, else_=len(STATUS_ORDER))
    return Run.run_type


def _encode(column: str, descending: bool, now: datetime, last: list[Any]) -> str:
    raw = {"c": column, "d": descending, "n": now.isoformat(), "k": last}
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


def _decode(cursor: str, column: str, descending: bool) -> tuple[datetime, Any, datetime, uuid.UUID]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if raw["c"] != column or raw["d"] != descending:
            raise ValueError("another order")
        key, created, rid = raw["k"]
        now = datetime.fromisoformat(raw["n"])
        created_at = datetime.fromisoformat(created)
        if column == "created":
            key = datetime.fromisoformat(key)
        elif column == "type" and not isinstance(key, str) or column not in ("type", "created") and (
                isinstance(key, bool) or not isinstance(key, (int, float))):
            raise ValueError(key)
        return now, key, created_at, uuid.UUID(rid)
    except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError):
        raise listing.InvalidCursor("That page cursor is not valid.") from None


def _ordered(q: listing.ListQuery, column: str, descending: bool, after: Any, limit: int,
             completed_since: datetime | None, now: datetime) -> Any:
    key = _key(column, now)
    stmt = listing._filtered(q).add_columns(key.label("sort_key"))  # noqa: SLF001 - the list's own filters
    if completed_since is not None:
        stmt = stmt.where(Run.completed_at >= completed_since)
    if descending:
        order = (key.desc(), Run.created_at.desc(), Run.id.desc())
    else:
        order = (key.asc(), Run.created_at.desc(), Run.id.desc())
    if after is not None:
        value, created_at, rid = after
        beyond = key < value if descending else key > value
        stmt = stmt.where(or_(beyond, and_(key == value, Run.created_at < created_at),
                              and_(key == value, Run.created_at == created_at, Run.id < rid)))
    return stmt.order_by(*order).limit(limit + 1)


def _by_status(q: listing.ListQuery, descending: bool, after: Any, limit: int,
               completed_since: datetime | None) -> Any:
    """The status order on PostgreSQL: one newest-first index scan per status (``ix_runs_status_created``, or
    its organization's), each cut at the page size, merged in status order: a page reads at most
    ``limit + 1`` rows per status, where ordering by the status's rank would sort every run."""
    wanted = {RunStatus(st).value for st in q.statuses}
    branches = []
    for rank, status in enumerate(STATUS_ORDER):
        if wanted and status not in wanted:
            continue
        stmt = listing._filtered(q, with_statuses=False).where(Run.status == status)  # noqa: SLF001
        stmt = stmt.add_columns(literal(rank).label("sort_key"))
        if completed_since is not None:
            stmt = stmt.where(Run.completed_at >= completed_since)
        if after is not None:
            value, created_at, rid = after
            if (rank > value) if descending else (rank < value):
                continue  # pages before this one had all of that status
            if rank == value:
                stmt = stmt.where(or_(Run.created_at < created_at, and_(Run.created_at == created_at, Run.id < rid)))
        branches.append(stmt.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit + 1))
    if not branches:
        return listing._filtered(q).add_columns(literal(0).label("sort_key")).where(false())  # noqa: SLF001
    merged = union_all(*branches).subquery()
    run = aliased(Run, merged)
    rank_order = merged.c.sort_key.desc() if descending else merged.c.sort_key.asc()
    return (select(run, merged.c.sort_key).order_by(rank_order, merged.c.created_at.desc(), merged.c.id.desc())
            .limit(limit + 1))


# An ended run's duration; ix_runs_duration and ix_runs_org_duration (migration 0012) index this very expression.
ENDED_DURATION = "round(EXTRACT(epoch FROM runs.completed_at - runs.started_at), 3)"


def _by_duration(q: listing.ListQuery, descending: bool, after: Any, limit: int,
                 completed_since: datetime | None, now: datetime) -> Any:
    """The duration order on PostgreSQL, in three parts merged by key: ended runs, whose duration is fixed, from
    the duration index; runs started and not ended, whose duration grows with the clock (a set as small as what
    is running), sorted; runs never started (-1), newest first from ``ix_runs_unstarted``. Each part is cut at
    the page size."""
    ended_key = literal_column(ENDED_DURATION, Numeric)
    running_key = func.round(func.extract("epoch", literal(now) - Run.started_at), 3)
    unfinished = [st for st in RunStatus if not st.is_terminal]
    parts = [
        (ended_key, [Run.completed_at.is_not(None), Run.started_at.is_not(None)]),
        (running_key, [Run.status.in_(unfinished), Run.completed_at.is_(None), Run.started_at.is_not(None)]),
        (literal(-1, Numeric), [Run.started_at.is_(None)]),
    ]
    branches = []
    for key, where in parts:
        stmt = listing._filtered(q).where(*where).add_columns(key.label("sort_key"))  # noqa: SLF001
        if completed_since is not None:
            stmt = stmt.where(Run.completed_at >= completed_since)
        if after is not None:
            value, created_at, rid = after
            value = cast(literal(str(value)), Numeric)
            beyond = key < value if descending else key > value
            stmt = stmt.where(or_(beyond, and_(key == value, Run.created_at < created_at),
                                  and_(key == value, Run.created_at == created_at, Run.id < rid)))
        order = (key.desc() if descending else key.asc(), Run.created_at.desc(), Run.id.desc())
        branches.append(stmt.order_by(*order).limit(limit + 1))
    merged = union_all(*branches).subquery()
    run = aliased(Run, merged)
    key_order = merged.c.sort_key.desc() if descending else merged.c.sort_key.asc()
    return select(run, merged.c.sort_key).order_by(key_order, merged.c.created_at.desc(), merged.c.id.desc()) \
        .limit(limit + 1)


def page(q: listing.ListQuery, column: Column, descending: bool = True, cursor: str | None = None,
         limit: int = 50, session: Session | None = None, completed_since: datetime | None = None) -> listing.Page:
    """One page of ``q`` ordered by ``column`` (then newest first within equal values), with what
    ``listing.annotate`` adds (child counts, queue positions, ETAs, organization slugs). ``completed_since``:
    only runs that ended since then (the list's "done · 24 h" and "failed · 24 h" cards)."""
    if column not in COLUMNS:
        raise listing.InvalidCursor(f"Unknown sort {column!r}.")
    now = utcnow()
    after: tuple[Any, datetime, uuid.UUID] | None = None
    if cursor:
        now, *rest = _decode(cursor, column, descending)
        after = tuple(rest)  # type: ignore[assignment]
    if column == "status" and get_engine().dialect.name == "postgresql":
        stmt = _by_status(q, descending, after, limit, completed_since)
    elif column == "duration" and get_engine().dialect.name == "postgresql":
        stmt = _by_duration(q, descending, after, limit, completed_since, now)
    else:
        stmt = _ordered(q, column, descending, after, limit, completed_since, now)

    def read(s: Session) -> listing.Page:
        rows = list(s.execute(stmt).all())
        more = len(rows) > limit
        rows = rows[:limit]
        runs = [r[0] for r in rows]
        annotated = listing.annotate(runs, s)
        if more and rows:
            last_run, last_key = rows[-1][0], rows[-1][1]
            if column == "created":
                last_key = last_run.created_at.isoformat()
            elif column in ("duration", "status"):
                last_key = float(last_key) if column == "duration" else int(last_key)
            annotated.next_cursor = _encode(column, descending, now,
                                            [last_key, last_run.created_at.isoformat(), str(last_run.id)])
        return annotated

    return in_transaction(read, session, read_only=True) if session is None else read(session)
