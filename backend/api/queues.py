"""Queue statistics: depth and limits, hourly throughput and durations (all queues, and per queue), workers online.

Counts cover the caller's organizations only (all of them for system admins); limits and workers are shared.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from backend.api.deps import CurrentPrincipal
from backend.api.schemas import HourOut, QueueOut, QueuesOut, WorkerOut, error_responses
from backend.queues import stats, workers

router = APIRouter(tags=["queues"], responses=error_responses(401, 422, 503))


@router.get("/queues", response_model=QueuesOut, summary="Queue depths, recent history and workers online")
def get_queues(
    p: CurrentPrincipal,
    hours: Annotated[int, Query(ge=1, le=168, description="Hours of history")] = 12,
) -> QueuesOut:
    orgs = p.visible_orgs()
    return QueuesOut(
        queues=[QueueOut(**q) for q in stats.queue_depths(orgs)],
        history=[HourOut(**h) for h in stats.history(hours, organization_ids=orgs)],
        history_by_queue={name: [HourOut(**h) for h in hours_of] for name, hours_of in
                          stats.history_by_queue(hours, organization_ids=orgs).items()},
        workers=[WorkerOut(**w) for w in workers.online(orgs)],
    )
