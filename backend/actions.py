"""What a person (or token) does to runs: checked against their role, carried out, and audited.

The UI, the REST API and the CLI call these; none of them checks roles or writes the audit log itself.
"""

from __future__ import annotations

import uuid
from typing import Any

from backend import audit, schedules
from backend.auth.access import Principal
from backend.db.models import Run, ScheduledTask
from backend.errors import RunNotFound
from backend.queues import dispatch, priority
from backend.runs import cancellation, queries, service
from backend.runs.states import RunStatus


def visible_run(principal: Principal, run_id: uuid.UUID | str) -> Run:
    """The run, if the principal may see it (else NotFound, as if it did not exist)."""
    run = queries.get_run(run_id)
    if principal.role_in(run.organization_id) is None:  # the same answer as for a run that does not exist
        raise RunNotFound(f"No run with id {run.id}.")
    return run


def submit(principal: Principal, run_type: str, config: dict[str, Any], organization_id: uuid.UUID,
           **kwargs: Any) -> Run:
    principal.require("submit", organization_id, "That organization")
    run = dispatch.submit_run(run_type, config, organization_id=organization_id, created_by=principal.name, **kwargs)
    audit.record(principal.name, "submit", organization_id=organization_id, run_id=run.id, run_type=run_type)
    return run


def cancel(principal: Principal, run_id: uuid.UUID | str, reason: str | None = None) -> RunStatus:
    run = visible_run(principal, run_id)
    principal.require("cancel", run.organization_id)
    status = cancellation.cancel_run(run.id, by=principal.name, reason=reason)
    audit.record(principal.name, "cancel", organization_id=run.organization_id, run_id=run.id,
                 status=status.value, reason=reason)
    return status


def retry(principal: Principal, run_id: uuid.UUID | str) -> Run:
    run = visible_run(principal, run_id)
    principal.require("retry", run.organization_id)
    new = dispatch.retry_run(run.id, created_by=principal.name)
    audit.record(principal.name, "retry", organization_id=run.organization_id, run_id=run.id, new_run=str(new.id))
    return new


def boost(principal: Principal, run_id: uuid.UUID | str) -> int:
    run = visible_run(principal, run_id)
    principal.require("boost", run.organization_id)
    new_priority = priority.boost(run.id, principal.name)
    audit.record(principal.name, "boost", organization_id=run.organization_id, run_id=run.id, priority=new_priority)
    return new_priority


def force_kill(principal: Principal, run_id: uuid.UUID | str) -> bool:
    run = visible_run(principal, run_id)
    principal.require("force_kill", run.organization_id)
    done = service.force_kill(run.id, principal.name)
    audit.record(principal.name, "force_kill", organization_id=run.organization_id, run_id=run.id, applied=done)
    return done


# --------------------------------------------------------------------------- scheduled tasks (their org's admins)


def visible_schedule(principal: Principal, name: str) -> ScheduledTask:
    """The scheduled task, if the principal may see it (else NotFound, as if it did not exist)."""
    task = schedules.get_schedule(name)
    if principal.role_in(task.organization_id) is None:  # the same answer as for a task that does not exist
        raise schedules.ScheduleNotFound(f"No scheduled task {name!r}.")
    return task


def set_schedule_enabled(principal: Principal, name: str, enabled: bool) -> ScheduledTask:
    task = visible_schedule(principal, name)
    principal.require("manage", task.organization_id)
    task = schedules.enable(name) if enabled else schedules.disable(name)
    audit.record(principal.name, "schedule_enable" if enabled else "schedule_disable",
                 organization_id=task.organization_id, schedule=name)
    return task


def trigger_schedule(principal: Principal, name: str) -> Run:
    task = visible_schedule(principal, name)
    principal.require("manage", task.organization_id)
    run = schedules.trigger_now(name, by=principal.name)
    audit.record(principal.name, "schedule_trigger", organization_id=task.organization_id, run_id=run.id,
                 schedule=name)
    return run
