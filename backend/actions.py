"""What a person (or token) does to runs: checked against their role, carried out, and audited.

The UI, the REST API and the CLI call these; none of them checks roles or writes the audit log itself.
Who may submit what is the job type's rule (:meth:`Principal.require_submit`), checked here for a submit, a
retry, and every stage a pipeline names, before anything is written.
"""

from __future__ import annotations

import uuid
from typing import Any

from backend import audit, schedules
from backend.auth.access import Forbidden, Principal
from backend.auth.orgs import system_org
from backend.db.models import Run, ScheduledTask
from backend.errors import RunNotFound
from backend.queues import dispatch, priority
from backend.queues.configs import PipelineConfig
from backend.queues.registry import JobType, get_registry
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
    """Submit a run in the organization; a system-only type's run goes to the system organization instead
    (whatever organization was named: it belongs to no tenant)."""
    job_type = require_submit(principal, run_type, config, organization_id)
    if job_type.system_only:
        organization_id = system_org().id
    run = dispatch.submit_run(run_type, config, organization_id=organization_id, created_by=principal.name, **kwargs)
    audit.record(principal.name, "submit", organization_id=organization_id, run_id=run.id, run_type=run_type)
    return run


def require_submit(principal: Principal, run_type: str, config: dict[str, Any],
                   organization_id: uuid.UUID) -> JobType:
    """The job type, if the principal may submit it (with this config) in the organization; raises otherwise."""
    principal.require("view", organization_id, "That organization")  # outsiders learn nothing, not even the type
    job_type = get_registry().resolve(run_type)
    principal.require_submit(job_type, organization_id)
    _require_stages(principal, job_type, config, organization_id)
    return job_type


def _require_stages(principal: Principal, job_type: JobType, config: dict[str, Any],
                    organization_id: uuid.UUID) -> None:
    """A pipeline starts its stages in its submitter's name: each stage's type needs what submitting it alone
    needs, and a system-only type never runs as a stage (its run would belong to the pipeline's tenant)."""
    if job_type.config_model is not PipelineConfig:
        return
    registry = get_registry()
    for stage in registry.validate_config(job_type.key, config)["stages"]:
        stage_type = registry.find(stage["run_type"])
        if stage_type is None:
            continue  # an unknown type: the stage validation refuses it, naming the stage
        if stage_type.system_only:
            raise Forbidden(f"{stage_type.label} ({stage_type.key}) is system-only: it cannot run as a pipeline "
                            "stage.")
        principal.require_submit(stage_type, organization_id)
        _require_stages(principal, stage_type, stage["config"], organization_id)


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
    require_submit(principal, run.run_type, run.config, run.organization_id)  # a retry submits its type again
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
# The default schedules belong to the system organization: only system admins see or manage them.


def visible_schedule(principal: Principal, name: str) -> ScheduledTask:
    """The scheduled task, if the principal may see it (else NotFound, as if it did not exist)."""
    task = schedules.get_schedule(name)
    if principal.role_in(task.organization_id) is None:  # the same answer as for a task that does not exist
        raise schedules.ScheduleNotFound(f"No scheduled task {name!r}.")
    return task


def set_schedule_enabled(principal: Principal, name: str, enabled: bool) -> ScheduledTask:
    task = visible_schedule(principal, name)
    _require_manage(principal, task)
    task = schedules.enable(name) if enabled else schedules.disable(name)
    audit.record(principal.name, "schedule_enable" if enabled else "schedule_disable",
                 organization_id=task.organization_id, schedule=name)
    return task


def trigger_schedule(principal: Principal, name: str) -> Run:
    task = visible_schedule(principal, name)
    _require_manage(principal, task)
    run = schedules.trigger_now(name, by=principal.name)
    audit.record(principal.name, "schedule_trigger", organization_id=task.organization_id, run_id=run.id,
                 schedule=name)
    return run


def _require_manage(principal: Principal, task: ScheduledTask) -> None:
    """The admin role in the task's organization, and the right to submit its type (which it does when due)."""
    principal.require("manage", task.organization_id)
    job_type = get_registry().find(task.run_type)
    if job_type is not None:
        principal.require_submit(job_type, task.organization_id)
