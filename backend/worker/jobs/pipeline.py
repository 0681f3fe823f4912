"""pipeline: job types run one after another as child runs of this one.

Every stage's type and config is validated before the first stage starts. Stage ``n`` is spawned
as a child (in this run's group) once stage ``n - 1`` has completed; the pipeline waits for it by
reading the child's status from the database (with a cancel check between reads). A stage that
fails, times out or is cancelled stops the pipeline, which fails with ``stage N (<type>) failed: ...``.

Cancelling a pipeline cancels all its children (``cancel_cascade="all"``, applied by
``backend.runs.cancellation.cancel_run``); the pipeline also cancels its running stage itself when
it notices the request, so a cancel made by any path reaches the stage. It then ends ``cancelled``
when that stage has ended (the run group ends the parent).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import Run
from backend.errors import CuratoreError, InvalidTransition, JobCancelled, JobFailed, RunNotFound
from backend.queues.configs import PipelineConfig
from backend.queues.registry import get_registry
from backend.runs.states import RunStatus
from backend.worker.base import JobContext

S = RunStatus
POLL_SECONDS = 0.2


def run(ctx: JobContext, config: PipelineConfig) -> dict[str, Any]:
    registry = get_registry()
    stages: list[tuple[str, dict[str, Any]]] = []
    for n, stage in enumerate(config.stages, 1):
        try:
            key = registry.resolve(stage.run_type).key
            stages.append((key, registry.validate_config(key, stage.config)))
        except CuratoreError as exc:  # an unknown type or an invalid config: nothing has started yet
            raise JobFailed(f"stage {n} ({stage.run_type}) is not valid: {exc.message}") from None
        if key == ctx.job_type.key:
            raise JobFailed(f"stage {n}: a pipeline cannot run a pipeline as a stage.")
    total = len(stages)
    ctx.results = {"pipeline": config.name, "stages_total": total, "stages_completed": 0, "stages": []}
    ctx.info(f"Pipeline {config.name}: {total} stages ({' → '.join(k for k, _ in stages)})", "pipeline",
             stages=[k for k, _ in stages])
    for n, (key, stage_config) in enumerate(stages, 1):
        try:
            ctx.check_cancelled()
        except JobCancelled:
            if n == 1:
                raise  # nothing spawned yet: the run simply ends cancelled
            ctx.results["cancelled_before_stage"] = n
            ctx.warn(f"Cancelled before stage {n} ({key}); the remaining stages will not run", "pipeline_cancelled",
                     stage=n)
            return ctx.results  # the run group (every stage ended) ends this run as cancelled
        phase = f"stage {n}: {key}"
        ctx.progress(n - 1, total, phase=phase, item=key, unit="stages")
        label = registry.resolve(key).label
        child = ctx.spawn_child(key, stage_config, display_name=f"{config.name} · stage {n}: {label}")
        ctx.info(f"Stage {n}/{total} ({key}) started as run {child.id}", "stage_started", stage=n,
                 run_type=key, child_run_id=str(child.id))
        ended = _wait_for(ctx, child.id, n, total)
        if ended is None:  # cancel requested: the stage was asked to stop, the group ends this run
            ctx.results["cancelled_at_stage"] = n
            ctx.warn(f"Cancelled during stage {n} ({key}); the pipeline ends when that stage has stopped",
                     "pipeline_cancelled", stage=n, child_run_id=str(child.id))
            return ctx.results
        summary = _stage_summary(n, key, ended)
        ctx.results["stages"].append(summary)
        status = RunStatus(ended.status)
        if status is not S.COMPLETED and _cancel_requested(ctx):
            ctx.results["cancelled_at_stage"] = n  # the stage ended because this pipeline's cancel reached it
            return ctx.results  # the run group (every stage ended) ends this run as cancelled
        if status is not S.COMPLETED:
            reason = ended.error_message or {S.CANCELLED: "it was cancelled", S.TIMED_OUT: "it timed out"}.get(
                status, status.value)
            raise JobFailed(f"stage {n} ({key}) failed: {reason}")
        ctx.results["stages_completed"] = n
        ctx.progress(n, total, phase=phase, item=key)
        ctx.info(f"Stage {n}/{total} ({key}) completed", "step_complete", stage=n, run_type=key,
                 child_run_id=str(child.id), seconds=summary["seconds"])
    return ctx.results


def _wait_for(ctx: JobContext, child_id: uuid.UUID, n: int, total: int) -> Run | None:
    """The child once it has ended, or None when this pipeline was cancelled meanwhile (the child then
    has been asked to stop too)."""
    last_percent: float | None = None
    while True:
        child = in_transaction(lambda s: s.get(Run, child_id))
        if RunStatus(child.status).is_terminal:
            return child
        try:
            ctx.check_cancelled()
        except JobCancelled:
            _cancel_child(ctx, child_id)
            return None
        percent = (child.progress or {}).get("percent")
        if percent is not None and percent != last_percent:
            last_percent = percent
            ctx.progress(n - 1 + percent / 100, total)
        time.sleep(POLL_SECONDS)  # waiting on the child's status in the database (the signal), not a timer


def _cancel_requested(ctx: JobContext) -> bool:
    try:
        ctx.check_cancelled()
    except JobCancelled:
        return True
    return False


def _cancel_child(ctx: JobContext, child_id: uuid.UUID) -> None:
    from backend.runs.cancellation import cancel_run

    try:
        cancel_run(child_id, by=f"pipeline {ctx.run_id}", reason="its pipeline was cancelled")
    except (InvalidTransition, RunNotFound):
        pass  # it ended in the meantime


def _stage_summary(n: int, key: str, child: Run) -> dict[str, Any]:
    seconds = None
    if child.started_at and child.completed_at:
        seconds = round((child.completed_at - child.started_at).total_seconds(), 3)
    return {"stage": n, "run_type": key, "run_id": str(child.id), "status": RunStatus(child.status).value,
            "seconds": seconds, "error": child.error_message, "results": child.results_summary}


def stage_runs(pipeline_run_id: uuid.UUID) -> list[Run]:
    """The stages of a pipeline run, in order."""
    query = select(Run).where(Run.parent_run_id == pipeline_run_id).order_by(Run.created_at, Run.id)
    return list(in_transaction(lambda s: s.execute(query).scalars().all()))

