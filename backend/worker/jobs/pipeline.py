"""pipeline: job types run one after another as child runs of this one.

Every stage's type and config is validated before the first stage starts. The executor spawns stage 1
in a run group of kind ``pipeline`` and returns: the pipeline then waits without holding a worker
process or a queue slot. Each time a stage ends, :func:`_stage_ended` runs in that stage's terminal
transaction: a completed stage spawns the next one (in the same transaction, so exactly once); any other
outcome, or the last stage, lets the group end, and :func:`_end_pipeline` ends the pipeline: completed,
``failed`` with ``stage N (<type>) failed: ...``, or cancelled.

Cancelling a pipeline cancels all its children (``cancel_cascade="all"``, applied by
``backend.runs.cancellation.cancel_run``); a cancel that reaches only the pipeline stops it at the next
stage boundary (no further stage is spawned).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from backend.db.engine import in_transaction
from backend.db.models import Run, RunGroup, empty_progress
from backend.db.states import LogLevel, RunStatus
from backend.errors import CuratoreError, JobFailed
from backend.jobtypes.configs import PipelineConfig
from backend.jobtypes.registry import get_registry
from backend.queues.dispatch import dispatch_after_commit
from backend.runs import groups, service
from backend.worker.base import JobContext

S = RunStatus
GROUP_KIND = f"{__name__}:PIPELINE"


def run(ctx: JobContext, config: PipelineConfig) -> dict[str, Any]:
    registry = get_registry()
    stages: list[dict[str, Any]] = []
    for n, stage in enumerate(config.stages, 1):
        try:
            key = registry.resolve(stage.run_type).key
            stages.append({"run_type": key, "config": registry.validate_config(key, stage.config)})
        except CuratoreError as exc:  # an unknown type or an invalid config: nothing has started yet
            raise JobFailed(f"stage {n} ({stage.run_type}) is not valid: {exc.message}") from None
        if key == ctx.job_type.key:
            raise JobFailed(f"stage {n}: a pipeline cannot run a pipeline as a stage.")
    keys = [s["run_type"] for s in stages]
    name = config.name or "pipeline"
    ctx.info(f"Pipeline {name}: {len(stages)} stages ({' → '.join(keys)})", "pipeline", stages=keys)
    ctx.check_cancelled()  # nothing spawned yet: a cancel simply ends the run
    ctx.use_group(GROUP_KIND, {"name": name, "stages": stages})
    ctx.progress(0, len(stages), phase=_phase(1, keys[0]), item=keys[0], unit="stages")
    child = ctx.spawn_child(keys[0], stages[0]["config"], display_name=_display_name(name, 1, keys[0]))
    ctx.info(f"Stage 1/{len(stages)} ({keys[0]}) started as run {child.id}", "stage_started", stage=1,
             run_type=keys[0], child_run_id=str(child.id))
    return {"pipeline": name, "stages_total": len(stages)}


# --------------------------------------------------------------------------- the group kind


def _stage_ended(session: Session, group: RunGroup, child_id: uuid.UUID, outcome: RunStatus) -> None:
    stages = group.hook_config["stages"]
    total, n = len(stages), group.expected  # stages run one at a time: the one that ended is the latest
    key = stages[n - 1]["run_type"]
    parent_id = group.parent_run_id
    if outcome is not S.COMPLETED:
        return  # the group ends now; _end_pipeline says why
    child = session.execute(select(Run).where(Run.id == child_id)
                            .execution_options(populate_existing=True)).scalar_one()  # just ended by an UPDATE
    service.add_log(parent_id, LogLevel.INFO, "step_complete", f"Stage {n}/{total} ({key}) completed",
                    {"stage": n, "run_type": key, "child_run_id": str(child_id), "seconds": _seconds(child)}, session)
    parent_status = session.execute(select(Run.status).where(Run.id == parent_id)).scalar_one()
    if n >= total or RunStatus(parent_status) is not S.RUNNING:
        _progress(session, parent_id, n, total, _phase(n, key), key)
        return  # the last stage, or the pipeline was cancelled: no further stage
    following = stages[n]
    key = following["run_type"]
    name = group.hook_config["name"]
    try:
        nxt = groups.add_child(group.id, key, following["config"], display_name=_display_name(name, n + 1, key),
                               session=session)
    except CuratoreError as exc:  # refused before writing anything (a duplicate run, say): the pipeline fails
        message = f"stage {n + 1} ({key}) could not start: {exc.message}"
        service.transition(session, parent_id, S.FAILED, message, level=LogLevel.ERROR,
                           values={"error_message": message, "results_summary": _results(session, group)})
        return
    dispatch_after_commit(session, nxt.id)
    service.log_phase(parent_id, _phase(n + 1, key), _phase(n, stages[n - 1]["run_type"]), session)
    _progress(session, parent_id, n, total, _phase(n + 1, key), key)
    service.add_log(parent_id, LogLevel.INFO, "stage_started", f"Stage {n + 1}/{total} ({key}) started as run "
                    f"{nxt.id}", {"stage": n + 1, "run_type": key, "child_run_id": str(nxt.id)}, session)


def _end_pipeline(session: Session, group: RunGroup) -> None:
    parent = session.get(Run, group.parent_run_id)
    session.refresh(parent)
    status = RunStatus(parent.status)
    if status.is_terminal:
        return
    stages = stage_runs(group.parent_run_id, session)
    results = _results(session, group, stages)
    last = stages[-1] if stages else None
    if status is S.CANCELLING:
        where = f" at stage {len(stages)}" if last is not None else ""
        service.transition(session, parent.id, S.CANCELLED, f"Cancelled{where}; its stages have ended",
                           level=LogLevel.WARN, values={"results_summary": results})
    elif last is not None and last.status != S.COMPLETED:
        reason = last.error_message or {S.CANCELLED: "it was cancelled", S.TIMED_OUT: "it timed out"}.get(
            RunStatus(last.status), RunStatus(last.status).value)
        message = f"stage {len(stages)} ({last.run_type}) failed: {reason}"
        service.transition(session, parent.id, S.FAILED, message, level=LogLevel.ERROR,
                           values={"results_summary": results, "error_message": message})
    else:
        service.transition(session, parent.id, S.COMPLETED, f"All {len(stages)} stages completed",
                           values={"results_summary": results})


PIPELINE = groups.GroupKind(on_child_ended=_stage_ended, end_parent=_end_pipeline)


# --------------------------------------------------------------------------- helpers


def stage_runs(pipeline_run_id: uuid.UUID, session: Session | None = None) -> list[Run]:
    """The stages of a pipeline run, in order."""
    query = (select(Run).where(Run.parent_run_id == pipeline_run_id).order_by(Run.created_at, Run.id)
             .execution_options(populate_existing=True))  # statuses were just written with plain UPDATEs
    return list(in_transaction(lambda s: s.execute(query).scalars().all(), session))


def _results(session: Session, group: RunGroup, stages: list[Run] | None = None) -> dict[str, Any]:
    """The pipeline's results: what its executor stored, and a summary of each stage so far."""
    stages = stage_runs(group.parent_run_id, session) if stages is None else stages
    stored = session.execute(select(Run.results_summary).where(Run.id == group.parent_run_id)).scalar_one()
    counts = {"children": group.expected, "completed": group.completed, "failed": group.failed,
              "cancelled": group.cancelled, "group_status": group.status}
    return (stored or {}) | {
        "pipeline": group.hook_config["name"], "stages_total": len(group.hook_config["stages"]),
        "stages_completed": sum(1 for child in stages if child.status == S.COMPLETED),
        "stages": [_stage_summary(n, child) for n, child in enumerate(stages, 1)], "children": counts}


def _phase(n: int, key: str) -> str:
    return f"stage {n}: {key}"


def _display_name(name: str, n: int, key: str) -> str:
    return f"{name} · stage {n}: {get_registry().resolve(key).label}"


def _progress(session: Session, run_id: uuid.UUID, done: int, total: int, phase: str, key: str) -> None:
    progress = empty_progress() | {"current": done, "total": total, "unit": "stages", "current_item": key,
                                   "percent": round(100.0 * done / total, 1), "phase": phase}
    service.set_progress(run_id, progress, session)


def _seconds(child: Run) -> float | None:
    if not (child.started_at and child.completed_at):
        return None
    return round((child.completed_at - child.started_at).total_seconds(), 3)


def _stage_summary(n: int, child: Run) -> dict[str, Any]:
    return {"stage": n, "run_type": child.run_type, "run_id": str(child.id), "status": RunStatus(child.status).value,
            "seconds": _seconds(child), "error": child.error_message, "results": child.results_summary}
