"""Job types for the queue tests (loaded by workers through CURATORE_JOB_MODULES)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from backend.jobtypes.configs import JobConfig
from backend.jobtypes.registry import Capabilities, JobType, RetryPolicy


class WorkConfig(JobConfig):
    ms: int = Field(default=100, ge=0, le=60_000)
    label: str = ""
    collection_id: str | None = None
    gate: str | None = None  # wait for this file before working (cooperatively)


def hash_for(ms: int) -> int:
    """Real CPU work for about ``ms`` milliseconds; returns the rounds done."""
    deadline, rounds, digest = time.monotonic() + ms / 1000, 0, b"curatore"
    while time.monotonic() < deadline:
        digest = hashlib.sha256(digest).digest()
        rounds += 1
    return rounds


def work(ctx: Any, config: WorkConfig) -> dict[str, Any]:
    if config.gate:
        while not Path(config.gate).exists():
            ctx.check_cancelled()
            time.sleep(0.02)
    started = time.time()
    rounds = hash_for(config.ms)
    ctx.progress(1, 1, phase="working")
    return {"label": config.label, "started": started, "ended": time.time(), "rounds": rounds}


class BusyConfig(JobConfig):
    out: str
    seconds: float = Field(default=30.0, le=120)


def busy(ctx: Any, config: BusyConfig) -> dict[str, Any]:
    """Writes a line every 20 ms and never checks for cancellation (a job that does not cooperate)."""
    deadline = time.monotonic() + config.seconds
    with open(config.out, "a") as out:
        while time.monotonic() < deadline:
            out.write(f"{time.time()}\n")
            out.flush()
            hash_for(20)
    return {"done": True}


class FlakyConfig(JobConfig):
    succeed_on: int = Field(default=3, ge=1)


def flaky(ctx: Any, config: FlakyConfig) -> dict[str, Any]:
    if ctx.run.attempt < config.succeed_on:
        raise RuntimeError(f"attempt {ctx.run.attempt} fails on purpose")
    return {"attempt": ctx.run.attempt}


JOB_TYPES = [
    JobType("q_work", "Queue Work", "cpu", "blue", "default", 120, ("working",), WorkConfig, work,
            resource_type="collection", resource_id_field="collection_id",
            capabilities=Capabilities(boost=True)),
    JobType("q_urgent", "Maintenance Work", "wrench", "gray", "maintenance", 120, ("working",), WorkConfig, work,
            capabilities=Capabilities(boost=True)),
    JobType("q_busy", "Busy Writer", "pen", "orange", "default", 120, (), BusyConfig, busy),
    JobType("q_flaky", "Flaky", "bug", "red", "default", 120, (), FlakyConfig, flaky,
            retry_policy=RetryPolicy(max_attempts=3, backoff_seconds=0.2)),
]
