"""Request and response models of the ops API (they are its OpenAPI description)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from backend.db.models import AuditEntry, Run, RunGroup, RunLogEvent
from backend.db.states import LogLevel, RunOrigin, RunStatus
from backend.jobtypes.registry import get_registry
from backend.runs.listing import Page, group_counts
from backend.validation import MAX_NAME, InvalidInput, check_text, displayable


def _storable(value: str) -> str:
    """A pydantic validator over :func:`backend.validation.check_text` (so the error names the field)."""
    try:
        check_text(value, "text")
    except InvalidInput as exc:
        raise ValueError(exc.message.removeprefix("text: ")) from None
    return value


# Text a person sends: refused (422 naming the field) when it cannot be stored (NUL, lone surrogates).
Text = Annotated[str, AfterValidator(_storable)]

# --------------------------------------------------------------------------- errors


class ErrorBody(BaseModel):
    code: str = Field(description="Stable, machine-readable: not_found, forbidden, invalid_request, ...")
    message: str = Field(description="What went wrong, for people.")


class ErrorOut(BaseModel):
    error: ErrorBody


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {400: "Bad request", 401: "Missing, invalid, revoked or expired token",
                    403: "The role does not allow it", 404: "Not found (or not visible to this token)",
                    409: "Conflicts with the current state", 422: "Invalid request",
                    429: "Rate limited", 503: "A dependency is unavailable"}
    return {s: {"model": ErrorOut, "description": descriptions.get(s, "Error")} for s in statuses}


# --------------------------------------------------------------------------- runs


class ChildCounts(BaseModel):
    total: int
    completed: int
    failed: int
    cancelled: int
    active: int


class RunOut(BaseModel):
    id: uuid.UUID
    organization_id: uuid.UUID
    organization: str = Field(description="The organization's slug")
    run_type: str
    type_label: str | None = None
    origin: RunOrigin
    status: RunStatus
    priority: int
    queue: str
    display_name: str | None = None
    config: dict[str, Any]
    progress: dict[str, Any]
    results_summary: dict[str, Any] | None = None
    error_message: str | None = None
    input_asset_ids: list[str]
    resource_type: str | None = None
    resource_id: str | None = None
    created_by: str | None = None
    created_at: datetime
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    last_activity_at: datetime | None = None
    cancel_requested_at: datetime | None = None
    duration_seconds: float | None = None
    celery_task_id: str | None = None
    worker_hostname: str | None = None
    group_id: uuid.UUID | None = None
    parent_run_id: uuid.UUID | None = None
    is_group_parent: bool
    attempt: int
    retry_of: uuid.UUID | None = None
    trace_id: str
    children: ChildCounts | None = Field(default=None, description="For group parents")
    queue_position: int | None = Field(default=None, description="1-based, for queued runs")
    eta_seconds: float | None = Field(default=None, description="Expected wait before a queued run starts")

    @classmethod
    def of(cls, run: Run, page: Page) -> RunOut:
        job_type = get_registry().find(run.run_type)
        end = run.completed_at
        duration = (end - run.started_at).total_seconds() if end and run.started_at else None
        children = page.child_counts.get(run.id)
        return cls(**displayable(dict(
            id=run.id, organization_id=run.organization_id, organization=page.org_slugs.get(run.organization_id, ""),
            run_type=run.run_type, type_label=job_type.label if job_type else None, origin=RunOrigin(run.origin),
            status=RunStatus(run.status), priority=run.priority, queue=run.queue, display_name=run.display_name,
            config=run.config or {}, progress=run.progress or {}, results_summary=run.results_summary,
            error_message=run.error_message, input_asset_ids=[str(a) for a in run.input_asset_ids or []],
            resource_type=run.resource_type, resource_id=run.resource_id, created_by=run.created_by,
            created_at=run.created_at, submitted_at=run.submitted_at, started_at=run.started_at,
            completed_at=run.completed_at, last_activity_at=run.last_activity_at,
            cancel_requested_at=run.cancel_requested_at, duration_seconds=duration,
            celery_task_id=run.celery_task_id, worker_hostname=run.worker_hostname, group_id=run.group_id,
            parent_run_id=run.parent_run_id, is_group_parent=run.is_group_parent, attempt=run.attempt,
            retry_of=run.retry_of, trace_id=run.trace_id,
            children=ChildCounts(**children) if children else None,
            queue_position=page.queue_positions.get(run.id), eta_seconds=page.etas.get(run.id),
        )))


class PageOut(BaseModel):
    items: list[RunOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page")

    @classmethod
    def of(cls, page: Page) -> PageOut:
        return cls(items=[RunOut.of(r, page) for r in page.runs], next_cursor=page.next_cursor)


class StatusCardsOut(BaseModel):
    pending: int = Field(description="pending and submitted")
    running: int = Field(description="running and cancelling")
    done_24h: int = Field(description="completed in the last 24 hours")
    failed_24h: int = Field(description="failed or timed out in the last 24 hours")
    stale: int


class RunStatsOut(BaseModel):
    total: int = Field(description="Runs under the filters (every type)")
    types: dict[str, int] = Field(description="Runs per job type key (aliases counted with their type)")
    statuses: dict[str, int] = Field(description="Runs per status, under the filters but the status filter")
    cards: StatusCardsOut


class RunList(BaseModel):
    items: list[RunOut]


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"run_type": "scrape", "config": {"start_url": "https://example.com/", "max_depth": 1},
         "organization": "acme", "priority": 2, "name": "Crawl example.com"},
    ]})

    run_type: Text = Field(min_length=1, max_length=64, description="A registry key or alias")
    config: dict[str, Any] = Field(default_factory=dict, description="Validated against the type's config schema "
                                   "(at most 256 KiB of JSON, 32 levels deep)")
    organization: Text = Field(min_length=1, max_length=64, description="The organization's slug")
    priority: int | None = Field(default=None, ge=0, le=4, strict=True,
                                 description="An integer, 0 (lowest) to 4; the type's default if unset")
    name: Text | None = Field(default=None, max_length=MAX_NAME, description="Display name")


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text | None = Field(default=None, max_length=500)


class CancelOut(BaseModel):
    run_id: uuid.UUID
    status: RunStatus = Field(description="cancelled at once for queued runs, cancelling for running ones")


class BulkCancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_ids: list[uuid.UUID] = Field(min_length=1, max_length=500)
    reason: Text | None = Field(default=None, max_length=500)


class BulkCancelItem(BaseModel):
    run_id: uuid.UUID
    status: RunStatus | None = None
    error: ErrorBody | None = None


class BulkCancelOut(BaseModel):
    cancelled: int = Field(description="Runs now cancelled or cancelling")
    refused: int
    results: list[BulkCancelItem]


class BoostOut(BaseModel):
    run_id: uuid.UUID
    priority: int


class ForceKillOut(BaseModel):
    run_id: uuid.UUID
    applied: bool = Field(description="False when the run had already ended")
    status: RunStatus


class LogOut(BaseModel):
    id: int
    run_id: uuid.UUID
    level: LogLevel
    event_type: str
    message: str
    context: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, e: RunLogEvent) -> LogOut:
        return cls(**displayable(dict(id=e.id or 0, run_id=e.run_id, level=LogLevel(e.level), event_type=e.event_type,
                                      message=e.message, context=e.context or {}, created_at=e.created_at)))


class LogPageOut(BaseModel):
    items: list[LogOut] = Field(description="Oldest first")
    next_cursor: int | None = Field(description="The last event's id: pass as `after` for newer events")
    has_more: bool = Field(description="With `after`: more events follow. Without: older events exist")


class GroupOut(BaseModel):
    id: uuid.UUID
    parent_run_id: uuid.UUID
    status: str = Field(description="running, completed, failed or partial")
    sealed: bool
    counts: ChildCounts
    created_at: datetime
    finalized_at: datetime | None = None
    completion_hook: str | None = None
    hook_fired_at: datetime | None = None

    @classmethod
    def of(cls, g: RunGroup) -> GroupOut:
        return cls(id=g.id, parent_run_id=g.parent_run_id, status=g.status, sealed=g.sealed,
                   counts=ChildCounts(**group_counts(g)), created_at=g.created_at, finalized_at=g.finalized_at,
                   completion_hook=g.completion_hook, hook_fired_at=g.hook_fired_at)


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    organization_id: uuid.UUID | None = None
    run_id: uuid.UUID | None = None
    details: dict[str, Any]

    @classmethod
    def of(cls, a: AuditEntry) -> AuditOut:
        return cls(**displayable(dict(id=a.id or 0, at=a.at, actor=a.actor, action=a.action,
                                      organization_id=a.organization_id, run_id=a.run_id, details=a.details or {})))


class AuditList(BaseModel):
    items: list[AuditOut]


# --------------------------------------------------------------------------- queues and registry


class QueueOut(BaseModel):
    name: str
    label: str
    description: str
    pending: int
    running: int
    stale: int
    limit: int


class HourOut(BaseModel):
    hour: str = Field(description="HH:00 (UTC)")
    completed: int
    failed: int
    mean_s: float
    p95_s: float


class WorkerOut(BaseModel):
    hostname: str
    queues: list[str]
    concurrency: int
    pid: int
    started_at: datetime
    last_seen_at: datetime
    active_runs: int


class QueuesOut(BaseModel):
    queues: list[QueueOut]
    history: list[HourOut] = Field(description="All queues together, per hour")
    history_by_queue: dict[str, list[HourOut]] = Field(description="Each queue on its own, per hour")
    workers: list[WorkerOut]


class QueueDefOut(BaseModel):
    name: str
    label: str
    max_concurrency: int
    description: str


class JobTypeOut(BaseModel):
    key: str
    label: str
    icon: str
    color: str
    queue: str
    timeout_seconds: int
    max_concurrency: int | None = None
    phases: list[str]
    capabilities: dict[str, bool]
    resource_type: str | None = None
    has_child_jobs: bool
    cancel_cascade: Literal["queued", "all"]
    retry_policy: dict[str, float]
    aliases: list[str]
    submit_role: Literal["viewer", "member", "admin"] = Field(
        description="The least role in an organization that submits this type")
    system_only: bool = Field(description="Only system admins submit it; its runs belong to no organization")
    description: str
    config_schema: dict[str, Any]


class RegistryOut(BaseModel):
    queues: list[QueueDefOut]
    job_types: list[JobTypeOut]
    overrides: dict[str, Any]


# --------------------------------------------------------------------------- scheduled tasks


class ScheduleOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    organization_id: uuid.UUID
    organization: str
    run_type: str
    config: dict[str, Any]
    interval_seconds: int
    enabled: bool
    last_run_id: uuid.UUID | None = None
    last_run_status: RunStatus | None = None
    last_run_at: datetime | None = None
    next_run_at: datetime | None = None


class ScheduleList(BaseModel):
    items: list[ScheduleOut]
