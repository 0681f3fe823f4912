"""A job type for benchmarks: progress updates at a steady pace, each stamped with the time it was sent."""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from backend.jobtypes.configs import JobConfig
from backend.jobtypes.registry import JobType


class ProgressBenchConfig(JobConfig):
    updates: int = Field(default=200, ge=1, le=100_000)
    interval_s: float = Field(default=0.05, ge=0.0, le=5.0)
    start_after_s: float = Field(default=3.0, ge=0.0, le=60.0)


def run_progress_bench(ctx: Any, config: ProgressBenchConfig) -> dict[str, Any]:
    ctx.progress(0, config.updates, phase="waiting")
    time.sleep(config.start_after_s)  # let the browser open the page before the first measured update
    sent = []
    for n in range(1, config.updates + 1):
        ctx.check_cancelled()
        sent.append(time.time())
        ctx.progress(n, config.updates, phase="measuring")
        time.sleep(config.interval_s)
    return {"sent": sent}


JOB_TYPES = [
    JobType("bench_progress", "Progress benchmark", "gauge", "gray", "default", 600, ("measuring",),
            ProgressBenchConfig, run_progress_bench),
]
