"""Boosting a queued run, rate-limited per organization (the limit is counted in the database, so it is
shared by every process), and ETAs for queued runs from measured durations."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import Run, RunLogEvent
from backend.db.types import utcnow
from backend.errors import NotCapable, RateLimited
from backend.queues.registry import get_registry
from backend.runs import service
from backend.runs.states import RunStatus

S = RunStatus


def boost(run_id: uuid.UUID, by: str) -> int:
    """Raise a queued run's priority by one tier (4 is the top); returns the new priority."""
    from backend.runs.queries import get_run

    run = get_run(run_id)
    job_type = get_registry().resolve(run.run_type)
    if not job_type.capabilities.boost:
        raise NotCapable(f"{job_type.label} runs cannot be boosted.")
    if RunStatus(run.status) not in (S.PENDING, S.SUBMITTED):
        raise NotCapable(f"Only queued runs can be boosted; this one is {RunStatus(run.status).value}.")
    if run.priority >= 4:
        raise NotCapable("This run already has the highest priority.")
    limit = get_settings().boosts_per_minute

    def write(s: Any) -> int:
        since = utcnow() - timedelta(minutes=1)
        recent = s.execute(
            select(func.count()).select_from(RunLogEvent).join(Run, Run.id == RunLogEvent.run_id)
            .where(Run.organization_id == run.organization_id, RunLogEvent.event_type == "boost",
                   RunLogEvent.created_at >= since)
        ).scalar_one()
        if recent >= limit:
            raise RateLimited(f"At most {limit} boosts per minute per organization; try again shortly.")
        return service.set_priority(run_id, run.priority + 1, by, session=s)

    new = in_transaction(write)
    from backend.queues.dispatcher import kick

    kick(run.queue)
    return new


def mean_durations(run_types: set[str], sample: int = 50, session: Any = None) -> dict[str, float]:
    """Mean duration in seconds of the last ``sample`` completed runs of each type (in ``session`` if given:
    on SQLite a second transaction opened inside another would wait for its write lock)."""

    def read(s: Any) -> dict[str, float]:
        out = {}
        for run_type in run_types:
            rows = s.execute(
                select(Run.started_at, Run.completed_at).where(Run.run_type == run_type, Run.status == S.COMPLETED,
                                                              Run.started_at.is_not(None))
                .order_by(Run.completed_at.desc()).limit(sample)
            ).all()
            if rows:
                out[run_type] = sum((c - st).total_seconds() for st, c in rows) / len(rows)
        return out

    return in_transaction(read, session)


def eta_seconds(position: int, queue_limit: int, mean_duration: float | None) -> float | None:
    """Rough wait before a run at ``position`` (1-based) starts: the waves ahead of it times the mean duration."""
    if mean_duration is None or position <= 0:
        return None
    waves = (position - 1) // max(queue_limit, 1) + 1
    return waves * mean_duration
