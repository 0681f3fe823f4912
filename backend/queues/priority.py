"""Boosting a queued run, rate-limited per organization (the limit is counted in the database, so it is
shared by every process)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import Run, RunLogEvent
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.errors import NotCapable, RateLimited
from backend.jobtypes.registry import get_registry
from backend.queues.dispatcher import kick
from backend.runs import service
from backend.runs.queries import get_run

S = RunStatus


def boost(run_id: uuid.UUID, by: str) -> int:
    """Raise a queued run's priority by one tier (4 is the top); returns the new priority."""
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
    kick(run.queue)
    return new
