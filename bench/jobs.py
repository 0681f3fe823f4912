"""Job types for benchmarks: progress updates at a steady pace, each stamped with the time it was sent; a no-op."""

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


class NoopConfig(JobConfig):
    pass


def run_noop(ctx: Any, config: NoopConfig) -> dict[str, Any]:
    """Nothing: what a run's life costs on its own (``bench.throughput``)."""
    return {}


JOB_TYPES = [
    JobType("bench_noop", "No-op", "circle", "gray", "default", 60, (), NoopConfig, run_noop),
    JobType("bench_progress", "Progress benchmark", "gauge", "gray", "default", 600, ("measuring",),
            ProgressBenchConfig, run_progress_bench),
]
