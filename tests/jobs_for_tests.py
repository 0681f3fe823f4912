"""A job type for tests: steps that the test releases one by one.

Each step waits for the file ``<gate_dir>/<n>`` to exist (a signal the test
sends), then reports progress and a log line. Workers load this module through
``CURATORE_JOB_MODULES='["tests.jobs_for_tests"]'``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from backend.jobtypes.configs import JobConfig
from backend.jobtypes.registry import JobType, RetryPolicy
from backend.storage.assets import store_bytes


class GatedStepsConfig(JobConfig):
    steps: int = Field(default=5, ge=1, le=10_000)
    gate_dir: str | None = None
    fail_at: int | None = None
    store_assets: bool = False  # each step also stores a small file (an asset write, for the chaos tests)


def run_gated_steps(ctx: Any, config: GatedStepsConfig) -> dict[str, Any]:
    digest = hashlib.sha256()
    for n in range(1, config.steps + 1):
        if config.gate_dir:
            gate = Path(config.gate_dir) / str(n)
            while not gate.exists():
                ctx.check_cancelled()
                time.sleep(0.02)
        ctx.check_cancelled()
        if config.fail_at == n:
            raise RuntimeError(f"step {n} failed on purpose")
        digest.update(str(n).encode())
        if config.store_assets:
            store_bytes(ctx.organization_id, f"step-{n}.txt", f"{ctx.run_id} step {n}".encode(),
                        source=f"test:{ctx.run_id}:{n}")
        phase = "first_half" if n <= config.steps / 2 else "second_half"
        ctx.progress(n, config.steps, phase=phase, item=f"step {n}", unit="steps")
        ctx.info(f"Step {n} of {config.steps} done", "step_complete", step=n)
    return {"steps": config.steps, "digest": digest.hexdigest()[:16]}


JOB_TYPES = [
    JobType("test_steps", "Test Steps", "flask-conical", "pink", "default", 120, ("first_half", "second_half"),
            GatedStepsConfig, run_gated_steps, description="Steps released by a test"),
    # The same steps with a retry policy of three dispatches: a run whose worker is lost is re-queued (chaos tests).
    JobType("test_steps_retry", "Test Steps (retried)", "flask-conical", "pink", "default", 120,
            ("first_half", "second_half"), GatedStepsConfig, run_gated_steps,
            description="Steps released by a test; re-queued up to three dispatches",
            retry_policy=RetryPolicy(max_attempts=3, backoff_seconds=1)),
]
