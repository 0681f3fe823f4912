"""Scheduled tasks: list, enable, disable, trigger now, history. Scoped to the caller's organizations;
enabling, disabling and triggering need the admin role in the task's organization (and are audited)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from backend import actions, schedules
from backend.api.deps import CurrentPrincipal
from backend.api.runs import Cursor
from backend.api.schemas import PageOut, RunOut, ScheduleList, ScheduleOut, error_responses
from backend.db.models import ScheduledTask
from backend.runs import listing, queries

router = APIRouter(tags=["schedules"], responses=error_responses(401, 404, 422, 503))

Name = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[^\x00/]+$",
                           description="The task's name", examples=["maintenance-hourly"])]


def schedule_out(task: ScheduledTask, slug: str | None = None) -> ScheduleOut:
    data = schedules.describe(task)
    return ScheduleOut(**data, organization=slug or queries.org_slug(task.organization_id))


@router.get("/schedules", response_model=ScheduleList, summary="Scheduled tasks")
def list_schedules(p: CurrentPrincipal) -> ScheduleList:
    visible = p.visible_orgs()
    tasks = [t for t in schedules.list_schedules() if visible is None or t.organization_id in visible]
    return ScheduleList(items=[schedule_out(t) for t in tasks])


@router.post("/schedules/{name}/enable", response_model=ScheduleOut, summary="Turn a scheduled task on",
             responses=error_responses(403))
def enable(p: CurrentPrincipal, name: Name) -> ScheduleOut:
    return schedule_out(actions.set_schedule_enabled(p, name, True))


@router.post("/schedules/{name}/disable", response_model=ScheduleOut, summary="Turn a scheduled task off",
             responses=error_responses(403))
def disable(p: CurrentPrincipal, name: Name) -> ScheduleOut:
    return schedule_out(actions.set_schedule_enabled(p, name, False))


@router.post("/schedules/{name}/trigger", status_code=201, response_model=RunOut, summary="Start a scheduled task now",
             responses=error_responses(403, 409, 503))
def trigger(p: CurrentPrincipal, name: Name) -> RunOut:
    """Starts it out of turn (409 while its previous run is still active)."""
    run = actions.trigger_schedule(p, name)
    return RunOut.of(run, listing.annotate([run]))


@router.get("/schedules/{name}/history", response_model=PageOut, summary="The runs a scheduled task started")
def history(
    p: CurrentPrincipal,
    name: Name,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    cursor: Cursor = None,
) -> PageOut:
    """Newest first, keyset-paged like the runs list: pass `next_cursor` as `cursor` for the next page."""
    task = actions.visible_schedule(p, name)
    return PageOut.of(schedules.history_page(task, cursor, limit))
