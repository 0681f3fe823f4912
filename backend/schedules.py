"""Scheduled tasks: runs the scheduler starts on an interval (the ``scheduled_tasks`` table).

:func:`tick` (called every few seconds by the Celery beat task ``curatore.scheduler.tick``, see
``backend/worker/schedule_task.py``) starts every enabled task that is due as a run with origin
``scheduled`` and ``created_by = "schedule:<name>"``. Any number of schedulers may tick at once:

- a task is *claimed* by one conditional UPDATE on the ``next_run_at`` (and ``last_run_id``) it was
  read with, in the transaction that also creates its run; of two schedulers that read the same
  occurrence, exactly one updates the row, the other changes nothing;
- a task whose previous run is still active is not started (it stays due and starts at the first
  tick after that run has ended).

A task's history is the runs it created (:func:`history`, by ``created_by``; :func:`history_page` pages them).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from backend.auth.orgs import system_org
from backend.db.engine import in_transaction
from backend.db.models import OutboxEvent, Run, ScheduledTask
from backend.db.states import RunOrigin, RunStatus
from backend.db.types import utcnow
from backend.errors import CuratoreError, NotCapable, NotFound
from backend.jobtypes.registry import get_registry
from backend.queues.dispatch import dispatch_after_commit
from backend.runs import listing, service

log = logging.getLogger(__name__)
CREATED_BY_PREFIX = "schedule:"


@dataclass(frozen=True)
class DefaultSchedule:
    name: str
    description: str
    run_type: str
    config: dict[str, Any] = field(default_factory=dict)
    interval_seconds: int = 3600


DEFAULTS: tuple[DefaultSchedule, ...] = (
    DefaultSchedule("maintenance-hourly", "Stale-run recovery, orphan detection and a health report",
                    "system_maintenance", {"handlers": ["stale_runs", "orphans", "health"]}, 3600),
    DefaultSchedule("retention-daily", "Deletes finished runs (and their logs) older than the retention period",
                    "system_maintenance", {"handlers": ["retention"]}, 86400),
)


class ScheduleNotFound(NotFound):
    """No such scheduled task."""

    code = "schedule_not_found"


# --------------------------------------------------------------------------- definitions


def ensure_defaults() -> list[ScheduledTask]:
    """Create the default schedules that do not exist yet, in the system organization (their type is
    system-only: they belong to no tenant). Safe to call from several processes at once.

    Also a data fix for databases from before system-only types: schedules of a system-only type owned by a
    tenant (the default organization, then) move to the system organization, with the top-level runs of
    those types, so that a tenant neither manages them nor reads their cross-organization results."""
    organization_id = system_org().id
    _adopt_system_work(organization_id)
    for default in DEFAULTS:
        if _find(default.name) is None:
            try:
                create_schedule(default.name, default.run_type, default.config, organization_id=organization_id,
                                interval_seconds=default.interval_seconds, description=default.description)
            except IntegrityError:
                pass  # another process created it first
    return list_schedules()


def _adopt_system_work(system_id: uuid.UUID) -> None:
    """Move schedules and top-level runs of system-only types (and those runs' outbox rows) to the system
    organization."""
    keys = [t.key for t in get_registry().types.values() if t.system_only]
    if not keys:
        return

    def write(s: Session) -> None:
        s.execute(update(ScheduledTask).where(ScheduledTask.run_type.in_(keys),
                                              ScheduledTask.organization_id != system_id)
                  .values(organization_id=system_id).execution_options(synchronize_session=False))
        moved = select(Run.id).where(Run.run_type.in_(keys), Run.parent_run_id.is_(None),
                                     Run.organization_id != system_id)
        s.execute(update(OutboxEvent).where(OutboxEvent.run_id.in_(moved)).values(organization_id=system_id)
                  .execution_options(synchronize_session=False))
        s.execute(update(Run).where(Run.id.in_(moved)).values(organization_id=system_id)
                  .execution_options(synchronize_session=False))

    in_transaction(write)


def create_schedule(
    name: str,
    run_type: str,
    config: dict[str, Any],
    *,
    organization_id: uuid.UUID,
    interval_seconds: int,
    description: str = "",
    enabled: bool = True,
    first_run_at: datetime | None = None,
) -> ScheduledTask:
    """Add a scheduled task; its type and config are validated now. It first runs at ``first_run_at``
    (default: at the next tick). A task of a system-only type belongs to the system organization, whatever
    organization was named."""
    if interval_seconds < 1:
        raise CuratoreError(f"A schedule's interval must be at least 1 second, not {interval_seconds}.")
    job_type = get_registry().resolve(run_type)
    clean = get_registry().validate_config(run_type, config)
    if job_type.system_only:
        organization_id = system_org().id
    task = ScheduledTask(name=name, description=description, organization_id=organization_id,
                         run_type=job_type.key, config=clean,
                         interval_seconds=interval_seconds, enabled=enabled, next_run_at=first_run_at or utcnow())

    def write(s: Session) -> ScheduledTask:
        s.add(task)
        s.flush()
        return task

    return in_transaction(write)


def list_schedules() -> list[ScheduledTask]:
    return list(in_transaction(lambda s: s.execute(select(ScheduledTask).order_by(ScheduledTask.name))
                               .scalars().all()))


def get_schedule(name: str) -> ScheduledTask:
    task = _find(name)
    if task is None:
        raise ScheduleNotFound(f"No scheduled task {name!r}.")
    return task


def describe(task: ScheduledTask) -> dict[str, Any]:
    """A schedule as the API and the queue page show it, with its last run's status."""
    last_status = None
    if task.last_run_id:
        raw = in_transaction(lambda s: s.execute(select(Run.status).where(Run.id == task.last_run_id))
                             .scalar_one_or_none())
        last_status = RunStatus(raw).value if raw is not None else None
    return {"id": str(task.id), "name": task.name, "description": task.description, "run_type": task.run_type,
            "config": task.config, "interval_seconds": task.interval_seconds, "enabled": task.enabled,
            "organization_id": str(task.organization_id),
            "last_run_id": str(task.last_run_id) if task.last_run_id else None, "last_run_status": last_status,
            "last_run_at": task.last_run_at, "next_run_at": task.next_run_at}


def _find(name: str) -> ScheduledTask | None:
    return in_transaction(lambda s: s.execute(select(ScheduledTask).where(ScheduledTask.name == name))
                          .scalar_one_or_none())


# --------------------------------------------------------------------------- enable, disable, trigger


def enable(name: str) -> ScheduledTask:
    """Turn a task on; it runs at its next due time (at once if that has passed)."""
    return _set_enabled(name, True)


def disable(name: str) -> ScheduledTask:
    """Turn a task off: the scheduler no longer starts it (a run already started goes on)."""
    return _set_enabled(name, False)


def _set_enabled(name: str, enabled: bool) -> ScheduledTask:
    task = get_schedule(name)
    values: dict[str, Any] = {"enabled": enabled}
    if enabled and task.next_run_at is None:
        values["next_run_at"] = utcnow()
    in_transaction(lambda s: s.execute(update(ScheduledTask).where(ScheduledTask.id == task.id).values(**values)))
    return get_schedule(name)


def trigger_now(name: str, by: str | None = None) -> Run:
    """Start the task now, enabled or not, unless its previous run is still active. Its next scheduled
    time moves one interval from now."""
    task = get_schedule(name)
    active = _active_last_run(task)
    if active is not None:
        raise NotCapable(f"{name} was not started: its previous run {active.id} is still "
                         f"{RunStatus(active.status).value}.")
    run = _claim_and_start(task, utcnow(), manual=True, by=by)
    if run is None:
        raise NotCapable(f"{name} was not started: it was started by someone else at this moment.")
    return run


# --------------------------------------------------------------------------- the scheduler


def due(now: datetime | None = None) -> list[ScheduledTask]:
    """Enabled tasks whose next run time has come."""
    now = now or utcnow()
    query = (select(ScheduledTask)
             .where(ScheduledTask.enabled.is_(True), ScheduledTask.next_run_at.is_not(None),
                    ScheduledTask.next_run_at <= now)
             .order_by(ScheduledTask.next_run_at, ScheduledTask.name))
    return list(in_transaction(lambda s: s.execute(query).scalars().all()))


def tick(now: datetime | None = None) -> list[Run]:
    """Start every due task whose previous run has ended; returns the runs this call started."""
    now = now or utcnow()
    started: list[Run] = []
    for task in due(now):
        if _active_last_run(task) is not None:
            continue  # no overlap: it stays due until its previous run has ended
        try:
            run = _claim_and_start(task, now)
        except CuratoreError as exc:  # unknown type, invalid config, broker down: skip this occurrence
            log.error("scheduled task %s could not start: %s", task.name, exc.message)
            _skip_occurrence(task, now)
            continue
        if run is not None:
            started.append(run)
    return started


def history(name: str, limit: int = 20) -> list[Run]:
    """The runs this schedule started, newest first."""
    query = (select(Run).where(Run.created_by == CREATED_BY_PREFIX + name)
             .order_by(Run.created_at.desc(), Run.id.desc()).limit(limit))
    return list(in_transaction(lambda s: s.execute(query).scalars().all()))


def history_page(task: ScheduledTask, cursor: str | None = None, limit: int = 20) -> listing.Page:
    """One page of the runs ``task`` started (in its organization), newest first, keyset-paged like the jobs
    list: pass the page's ``next_cursor`` for the one after it (an invalid cursor raises ``InvalidCursor``)."""
    query = listing.ListQuery(organization_id=task.organization_id, created_by=CREATED_BY_PREFIX + task.name)
    return listing.page(query, cursor, limit)


def _next_time(task: ScheduledTask, now: datetime) -> datetime:
    """The next occurrence on the task's cadence, never in the past (missed occurrences are not replayed)."""
    interval = timedelta(seconds=task.interval_seconds)
    following = (task.next_run_at or now) + interval
    return following if following > now else now + interval


def _claim_and_start(task: ScheduledTask, now: datetime, *, manual: bool = False, by: str | None = None) -> Run | None:
    """Claim this occurrence of ``task`` and create its run, in one transaction; None if another scheduler
    claimed it first (the row no longer has the ``next_run_at``/``last_run_id`` it was read with)."""
    following = now + timedelta(seconds=task.interval_seconds) if manual else _next_time(task, now)

    def write(s: Session) -> Run | None:
        claimed = s.execute(
            update(ScheduledTask)
            .where(ScheduledTask.id == task.id, *_as_read(task))
            .values(next_run_at=following, last_run_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            return None
        run = service.create_run(
            task.run_type, task.config, organization_id=task.organization_id, origin=RunOrigin.SCHEDULED,
            created_by=CREATED_BY_PREFIX + task.name, display_name=task.name, session=s,
        )
        s.execute(update(ScheduledTask).where(ScheduledTask.id == task.id).values(last_run_id=run.id)
                  .execution_options(synchronize_session=False))
        if manual:
            who = f" by {by}" if by else ""
            service.add_log(run.id, "INFO", "triggered", f"Started now{who}, out of schedule {task.name}'s turn",
                            {"by": by, "schedule": task.name}, session=s)
        dispatch_after_commit(s, run.id)
        return run

    return in_transaction(write)


def _skip_occurrence(task: ScheduledTask, now: datetime) -> None:
    in_transaction(lambda s: s.execute(
        update(ScheduledTask).where(ScheduledTask.id == task.id, *_as_read(task))
        .values(next_run_at=_next_time(task, now)).execution_options(synchronize_session=False)))


def _as_read(task: ScheduledTask) -> list[Any]:
    """Conditions that hold only while the row is as ``task`` was read (the compare of compare-and-set)."""
    t = ScheduledTask
    return [
        t.next_run_at.is_(None) if task.next_run_at is None else t.next_run_at == task.next_run_at,
        t.last_run_id.is_(None) if task.last_run_id is None else t.last_run_id == task.last_run_id,
    ]


def _active_last_run(task: ScheduledTask) -> Run | None:
    if task.last_run_id is None:
        return None
    last = in_transaction(lambda s: s.get(Run, task.last_run_id))
    return last if last is not None and RunStatus(last.status).is_active else None
