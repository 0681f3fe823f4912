"""Queue statistics: depth, running, limits, and recent throughput and durations (all queues together, or
each queue on its own)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from backend.db.engine import in_transaction
from backend.db.models import Run
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.jobtypes.registry import get_registry

S = RunStatus
MAX_SAMPLE = 50_000


def _in_orgs(organization_ids: Collection[uuid.UUID] | None) -> list[Any]:
    return [] if organization_ids is None else [Run.organization_id.in_(list(organization_ids))]


def queue_depths(organization_ids: Collection[uuid.UUID] | None = None) -> list[dict[str, Any]]:
    """Per registry queue: pending, running and the concurrency limit (runs of ``organization_ids`` only,
    when given)."""

    def read(s: Any) -> dict[tuple[str, str], int]:
        rows = s.execute(select(Run.queue, Run.status, func.count()).where(Run.status.in_(
            (S.PENDING, S.SUBMITTED, S.RUNNING, S.CANCELLING, S.STALE)), *_in_orgs(organization_ids))
            .group_by(Run.queue, Run.status)).all()
        return {(q, RunStatus(st).value): n for q, st, n in rows}

    counts = in_transaction(read)
    out = []
    for queue in get_registry().queues.values():
        pending = counts.get((queue.name, "pending"), 0) + counts.get((queue.name, "submitted"), 0)
        running = sum(counts.get((queue.name, st), 0) for st in ("running", "cancelling"))
        out.append({"name": queue.name, "label": queue.label, "description": queue.description,
                    "pending": pending, "running": running, "stale": counts.get((queue.name, "stale"), 0),
                    "limit": queue.max_concurrency})
    return out


def history(hours: int = 12, now: datetime | None = None,
            organization_ids: Collection[uuid.UUID] | None = None) -> list[dict[str, Any]]:
    """Finished runs per hour over the last ``hours``: completed, failed, mean and p95 duration (s)
    (runs of ``organization_ids`` only, when given)."""
    now = now or utcnow()
    return _hours(_finished(hours, now, organization_ids), hours, now)("*")


def history_by_queue(hours: int = 12, now: datetime | None = None,
                     organization_ids: Collection[uuid.UUID] | None = None) -> dict[str, list[dict[str, Any]]]:
    """:func:`history` for each registry queue on its own: ``{queue name: [hour, ...]}``, every queue present
    (a queue with nothing finished has hours of zeros)."""
    now = now or utcnow()
    by_queue = _hours(_finished(hours, now, organization_ids), hours, now, per_queue=True)
    return {name: by_queue(name) for name in get_registry().queues}


def _finished(hours: int, now: datetime, organization_ids: Collection[uuid.UUID] | None) -> list[Any]:
    start = _start(hours, now)
    stmt = (select(Run.queue, Run.status, Run.started_at, Run.completed_at)
            .where(Run.completed_at >= start, Run.status.in_((S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED)),
                   *_in_orgs(organization_ids))
            .limit(MAX_SAMPLE))
    return list(in_transaction(lambda s: s.execute(stmt).all()))


def _start(hours: int, now: datetime) -> datetime:
    return (now - timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)


def _hours(rows: list[Any], hours: int, now: datetime, *, per_queue: bool = False
           ) -> Callable[[str], list[dict[str, Any]]]:
    """Rows of (queue, status, started, completed) bucketed by hour, under "*" (all together) or under each
    queue's name; returns the hours of one name (zeros where nothing finished)."""
    start = _start(hours, now)
    buckets: dict[tuple[str, datetime], dict[str, Any]] = defaultdict(
        lambda: {"completed": 0, "failed": 0, "durations": []})
    for queue, status, started, completed in rows:
        bucket = buckets[(queue if per_queue else "*", completed.replace(minute=0, second=0, microsecond=0))]
        if RunStatus(status) is S.COMPLETED:
            bucket["completed"] += 1
        elif RunStatus(status) in (S.FAILED, S.TIMED_OUT):
            bucket["failed"] += 1
        if started:
            bucket["durations"].append((completed - started).total_seconds())

    def series(name: str) -> list[dict[str, Any]]:
        out = []
        for i in range(hours):
            hour = start + timedelta(hours=i)
            b = buckets.get((name, hour), {"completed": 0, "failed": 0, "durations": []})
            durations = sorted(b["durations"])
            out.append({
                "hour": hour.strftime("%H:00"),
                "completed": b["completed"],
                "failed": b["failed"],
                "mean_s": round(sum(durations) / len(durations), 2) if durations else 0,
                "p95_s": round(durations[min(len(durations) - 1, int(0.95 * len(durations)))], 2) if durations else 0,
            })
        return out

    return series
