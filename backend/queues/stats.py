"""Queue statistics: depth, running, limits, and recent throughput and durations."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection
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
    start = (now - timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)
    stmt = (select(Run.status, Run.started_at, Run.completed_at)
            .where(Run.completed_at >= start, Run.status.in_((S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED)),
                   *_in_orgs(organization_ids))
            .limit(MAX_SAMPLE))
    rows = in_transaction(lambda s: s.execute(stmt).all())
    buckets: dict[datetime, dict[str, Any]] = defaultdict(lambda: {"completed": 0, "failed": 0, "durations": []})
    for status, started, completed in rows:
        bucket = buckets[completed.replace(minute=0, second=0, microsecond=0)]
        if RunStatus(status) is S.COMPLETED:
            bucket["completed"] += 1
        elif RunStatus(status) in (S.FAILED, S.TIMED_OUT):
            bucket["failed"] += 1
        if started:
            bucket["durations"].append((completed - started).total_seconds())
    out = []
    for i in range(hours):
        hour = start + timedelta(hours=i)
        b = buckets.get(hour, {"completed": 0, "failed": 0, "durations": []})
        durations = sorted(b["durations"])
        out.append({
            "hour": hour.strftime("%H:00"),
            "completed": b["completed"],
            "failed": b["failed"],
            "mean_s": round(sum(durations) / len(durations), 2) if durations else 0,
            "p95_s": round(durations[min(len(durations) - 1, int(0.95 * len(durations)))], 2) if durations else 0,
        })
    return out
