"""Runs: list (filters, keyset cursor), create, one run, its log, children, group, audit; cancel, bulk cancel,
retry, boost, force-kill. Every read is scoped to the caller's organizations; every action goes through
:mod:`backend.actions` (role check + audit)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query
from pydantic import BeforeValidator, StringConstraints

from backend import actions, audit
from backend.api.deps import CurrentPrincipal
from backend.api.errors import InvalidRequest
from backend.api.schemas import (
    AuditList,
    AuditOut,
    BoostOut,
    BulkCancelIn,
    BulkCancelItem,
    BulkCancelOut,
    CancelIn,
    CancelOut,
    ErrorBody,
    ForceKillOut,
    GroupOut,
    LogOut,
    LogPageOut,
    PageOut,
    RunCreate,
    RunOut,
    RunStatsOut,
    StatusCardsOut,
    Text,
    error_responses,
)
from backend.auth.access import Principal
from backend.auth.orgs import get_org
from backend.db.models import Organization, Run
from backend.db.states import RunOrigin, RunStatus
from backend.errors import CuratoreError, NotFound
from backend.jobtypes.registry import get_registry
from backend.runs import listing, queries

router = APIRouter(tags=["runs"], responses=error_responses(401, 404, 422, 503))

MAX_ID = 2**63 - 1
RunId = Annotated[uuid.UUID, Path(description="The run's id (a UUID)")]
Limit = Annotated[int, Query(ge=1, le=200, description="Runs per page (at most 200)")]
Cursor = Annotated[str | None, Query(max_length=500, pattern=r"^[A-Za-z0-9_=-]*$",
                                     description="`next_cursor` of the previous page")]


def _iso_only(value: Any) -> Any:
    """A date-time parameter is ISO 8601 (pydantic alone would also read ``0.5`` as a Unix time)."""
    if not isinstance(value, datetime) and not re.match(r"\d{4}-\d{2}-\d{2}", str(value)):
        raise ValueError("expected an ISO 8601 date-time, such as 2024-05-01T12:00:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_iso_only)]
TypeKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


def visible_org(p: Principal, slug: str) -> Organization:
    """The organization, if the principal belongs to it; otherwise the same 404 as for a slug that does not exist."""
    try:
        org = get_org(slug)
    except NotFound:
        org = None
    if org is None or p.role_in(org.id) is None:
        raise NotFound(f"No organization {slug!r}.")
    return org


def utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except OverflowError:
        raise InvalidRequest(f"Invalid request: {name} (query): the date is out of range.") from None


def one(run: Run) -> RunOut:
    return RunOut.of(run, listing.annotate([run]))


# --------------------------------------------------------------------------- collection


@router.post("/runs", status_code=201, response_model=RunOut, summary="Create and submit a run",
             responses=error_responses(403, 409, 413, 429, 503))
def create_run(p: CurrentPrincipal, body: RunCreate) -> RunOut:
    """The config is validated against the type's schema (422 naming the field) after the input checks every
    path shares (``backend.validation``: text that cannot be stored, at most 256 KiB and 32 levels; 422
    ``invalid_input``); a body over 1 MiB is refused unread (413). The same job already queued or running on
    the same resource is refused (409 ``duplicate_run``). Needs the member role."""
    org = visible_org(p, body.organization)
    run = actions.submit(p, body.run_type, body.config, org.id, priority=body.priority, display_name=body.name)
    return one(run)


@router.get("/runs", response_model=PageOut, summary="List runs (newest first, keyset pages)")
def list_runs(
    p: CurrentPrincipal,
    organization: Annotated[Text | None, Query(max_length=64, description="Only this organization (slug)")] = None,
    run_type: Annotated[list[TypeKey] | None, Query(alias="type", description="Job type keys")] = None,
    status: Annotated[list[RunStatus] | None, Query()] = None,
    origin: Annotated[list[RunOrigin] | None, Query()] = None,
    created_from: Annotated[Timestamp | None, Query(description="Created at or after")] = None,
    created_to: Annotated[Timestamp | None, Query(description="Created before")] = None,
    search: Annotated[Text, Query(max_length=200, description="Name, id (or its prefix), type or config values")] = "",
    parent: Annotated[uuid.UUID | None, Query(description="Only children of this run")] = None,
    top_level: Annotated[bool, Query(description="Only runs without a parent")] = False,
    sort: Annotated[Literal["created", "priority"], Query()] = "created",
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut:
    visible = p.visible_orgs()
    q = listing.ListQuery(
        organization_id=visible_org(p, organization).id if organization else None,
        organization_ids=None if visible is None else frozenset(visible),
        run_types=tuple(_type_key(t) for t in run_type or ()),
        statuses=tuple(status or ()),
        origins=tuple(origin or ()),
        created_from=utc(created_from, "created_from"),
        created_to=utc(created_to, "created_to"),
        search=search,
        top_level_only=top_level,
        parent_run_id=parent,
        sort=sort,
    )
    return PageOut.of(listing.page(q, cursor or None, limit))


@router.get("/runs/stats", response_model=RunStatsOut, summary="Type counts and status cards (the jobs page's)")
def run_stats(
    p: CurrentPrincipal,
    organization: Annotated[Text | None, Query(max_length=64, description="Only this organization (slug)")] = None,
    status: Annotated[list[RunStatus] | None, Query(description="Count only these statuses (types, total)")] = None,
    origin: Annotated[list[RunOrigin] | None, Query()] = None,
) -> RunStatsOut:
    """Runs per type and per status, and the status cards (pending, running, done and failed in the last 24 h,
    stale), for the caller's organizations or one of them: read from the counters the state machine's
    transactions keep (``backend.runs.counters``), never by counting runs."""
    visible = p.visible_orgs()
    org_id = visible_org(p, organization).id if organization else None
    orgs = None if visible is None else frozenset(visible)
    q = listing.ListQuery(organization_id=org_id, organization_ids=orgs, statuses=tuple(status or ()),
                          origins=tuple(origin or ()))
    types = listing.type_counts(q)
    statuses = listing.status_counts(listing.ListQuery(organization_id=org_id, organization_ids=orgs,
                                                       origins=tuple(origin or ())))
    cards = listing.status_cards(org_id, organization_ids=orgs)
    return RunStatsOut(total=sum(types.values()), types=types, statuses=statuses, cards=StatusCardsOut(**cards))


def _type_key(name: str) -> str:
    job_type = get_registry().find(name)
    return job_type.key if job_type else name


@router.post("/runs/bulk-cancel", response_model=BulkCancelOut, summary="Cancel several runs")
def bulk_cancel(p: CurrentPrincipal, body: BulkCancelIn) -> BulkCancelOut:
    """Each run is cancelled on its own; a run that cannot be cancelled (not found, role too low, already
    ended) is reported in its result and does not stop the others."""
    results = []
    for run_id in dict.fromkeys(body.run_ids):
        try:
            results.append(BulkCancelItem(run_id=run_id, status=actions.cancel(p, run_id, reason=body.reason)))
        except CuratoreError as exc:
            results.append(BulkCancelItem(run_id=run_id, error=ErrorBody(code=exc.code, message=exc.message)))
    done = sum(1 for r in results if r.status is not None)
    return BulkCancelOut(cancelled=done, refused=len(results) - done, results=results)


# --------------------------------------------------------------------------- one run


@router.get("/runs/{run_id}", response_model=RunOut, summary="One run")
def get_run(p: CurrentPrincipal, run_id: RunId) -> RunOut:
    return one(actions.visible_run(p, run_id))


@router.get("/runs/{run_id}/logs", response_model=LogPageOut, summary="A run's activity log (tail or cursor)")
def get_logs(
    p: CurrentPrincipal,
    run_id: RunId,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Events after this id, oldest first")] = None,
    before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="The last events before this id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> LogPageOut:
    """Without ``after``: the last ``limit`` events (the tail, before ``before`` if given), oldest first;
    ``next_cursor`` is the newest event's id, to pass as ``after`` when polling for newer ones. With ``after``:
    the first ``limit`` events after it (and before ``before`` if given)."""
    run = actions.visible_run(p, run_id)
    if after is not None:
        events = queries.get_logs(run.id, after_id=after, limit=limit + 1, before_id=before)
        more, events = len(events) > limit, events[:limit]
        cursor = events[-1].id if events else after
    else:
        events = queries.get_log_tail(run.id, limit=limit + 1, before_id=before)
        more, events = len(events) > limit, events[-limit:]
        cursor = events[-1].id if events else None
    items = [LogOut.of(e) for e in events]
    for item in items:  # the traceback only for system admins
        item.context = actions.shown_log_context(item.context, system_admin=p.is_system_admin)
    return LogPageOut(items=items, next_cursor=cursor, has_more=more)


@router.get("/runs/{run_id}/children", response_model=PageOut, summary="A group parent's children")
def get_children(
    p: CurrentPrincipal,
    run_id: RunId,
    status: Annotated[list[RunStatus] | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> PageOut:
    run = actions.visible_run(p, run_id)
    q = listing.ListQuery(organization_id=run.organization_id, parent_run_id=run.id, statuses=tuple(status or ()))
    return PageOut.of(listing.page(q, cursor or None, limit))


@router.get("/runs/{run_id}/group", response_model=GroupOut, summary="Group status of a parent (or of a child's group)")
def get_group(p: CurrentPrincipal, run_id: RunId) -> GroupOut:
    run = actions.visible_run(p, run_id)
    group = queries.group_for(run.id)
    if group is None and run.parent_run_id is not None:
        group = queries.group_for(run.parent_run_id)
    if group is None:
        raise NotFound(f"Run {run.id} is not part of a run group.")
    return GroupOut.of(group)


@router.get("/runs/{run_id}/audit", response_model=AuditList, summary="Who did what to this run")
def get_audit(p: CurrentPrincipal, run_id: RunId) -> AuditList:
    run = actions.visible_run(p, run_id)
    return AuditList(items=[AuditOut.of(a) for a in audit.for_run(run.id, limit=500)])


@router.post("/runs/{run_id}/cancel", response_model=CancelOut, summary="Cancel a run (and its children by policy)",
             responses=error_responses(403, 409))
def cancel_run(p: CurrentPrincipal, run_id: RunId, body: Annotated[CancelIn | None, Body()] = None) -> CancelOut:
    """Queued runs end at once; running ones move to ``cancelling`` until the job stops. Needs the member role."""
    status = actions.cancel(p, run_id, reason=body.reason if body else None)
    return CancelOut(run_id=run_id, status=status)


@router.post("/runs/{run_id}/retry", status_code=201, response_model=RunOut, summary="Retry an ended run",
             responses=error_responses(403, 409))
def retry_run(p: CurrentPrincipal, run_id: RunId) -> RunOut:
    """A new run with ``retry_of`` and the next attempt number (failed, timed-out or cancelled runs of
    retryable types). Needs the member role."""
    return one(actions.retry(p, run_id))


@router.post("/runs/{run_id}/boost", response_model=BoostOut, summary="Raise a queued run's priority by one",
             responses=error_responses(403, 409, 429))
def boost_run(p: CurrentPrincipal, run_id: RunId) -> BoostOut:
    """Rate-limited per organization (429). Needs the member role."""
    return BoostOut(run_id=run_id, priority=actions.boost(p, run_id))


@router.post("/runs/{run_id}/force-kill", response_model=ForceKillOut, summary="Fail a run now and kill its process",
             responses=error_responses(403))
def force_kill_run(p: CurrentPrincipal, run_id: RunId) -> ForceKillOut:
    """Admins only. ``applied`` is false when the run had already ended."""
    applied = actions.force_kill(p, run_id)
    return ForceKillOut(run_id=run_id, applied=applied, status=RunStatus(queries.get_run(run_id).status))

