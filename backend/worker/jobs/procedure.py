"""procedure: a named sequence of steps (``backend.procedures``), one ``step_complete`` log event per step."""

from __future__ import annotations

import time
import traceback
from typing import Any

from backend import procedures
from backend.errors import CuratoreError, JobCancelled, JobFailed
from backend.jobtypes.configs import ProcedureConfig
from backend.worker.base import JobContext


def run(ctx: JobContext, config: ProcedureConfig) -> dict[str, Any]:
    proc = procedures.get_procedure(config.procedure)  # unknown procedure or action: fails before any step
    params = proc.bind(config.params)
    total = len(proc.steps)
    ctx.results = {"procedure": proc.name, "steps_total": total, "steps_done": 0, "steps": []}
    ctx.info(f"Procedure {proc.name}: {total} steps ({', '.join(s.name for s in proc.steps)})", "procedure",
             procedure=proc.name, source=proc.source, params=params)
    for n, step in enumerate(proc.steps, 1):
        ctx.check_cancelled()
        ctx.progress(n - 1, total, phase=step.name, item=step.name, unit="steps")
        started = time.monotonic()
        try:
            output = procedures.get_action(step.action)(ctx, {**step.params, **params}) or {}
        except JobCancelled:
            raise
        except Exception as exc:
            expected = isinstance(exc, CuratoreError)
            message = exc.message if expected else f"{type(exc).__name__}: {exc}"
            ctx.results["failed_step"] = step.name
            ctx.log("ERROR", "step_failed", f"Step {n}/{total} {step.name} failed: {message}", step=step.name,
                    action=step.action, index=n, **({} if expected else {"traceback": traceback.format_exc()}))
            raise JobFailed(f"Step {n} ({step.name}) of procedure {proc.name} failed: {message}") from exc
        seconds = round(time.monotonic() - started, 3)
        ctx.results["steps"].append({"name": step.name, "action": step.action, "seconds": seconds,
                                     "result": output})
        ctx.results["steps_done"] = n
        ctx.progress(n, total, phase=step.name, item=step.name)
        ctx.info(f"Step {n}/{total} {step.name} done in {seconds:.2f} s", "step_complete",
                 step=step.name, action=step.action, index=n, total=total, seconds=seconds, result=output)
    return ctx.results
