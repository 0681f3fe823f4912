"""Sending runs to Celery, always after the transaction that created them has committed.

A dispatch moves the run pending → submitted (recording the Celery task id and
a new dispatch attempt), then publishes ``[run_id, dispatch_attempt]`` to the
run's queue. The worker starts only the current attempt, so a message that is
delivered twice, or late, does nothing.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from kombu.exceptions import KombuError
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError as SQLOperationalError
from sqlmodel import Session

from backend.config import get_settings
from backend.db.engine import after_commit, in_transaction
from backend.db.models import Run
from backend.errors import BrokerUnavailable
from backend.queues.registry import get_registry
from backend.runs import service

log = logging.getLogger(__name__)
BROKER_ERRORS: tuple[type[BaseException], ...] = (OSError, KombuError, KombuOperationalError, SQLOperationalError)
try:
    import redis.exceptions

    BROKER_ERRORS += (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
except ImportError:  # pragma: no cover - redis is a dependency
    pass


def dispatch(run_id: uuid.UUID) -> bool:
    """Publish a pending run; returns False if it was no longer pending."""
    run_type = in_transaction(lambda s: s.execute(select(Run.run_type).where(Run.id == run_id)).scalar_one())
    job_type = get_registry().resolve(run_type)
    task_id = str(uuid.uuid4())
    attempt = service.mark_submitted(run_id, task_id)
    if attempt is None:
        return False
    try:
        _publish(job_type.task_name, job_type.queue, run_id, attempt, task_id, job_type.timeout_seconds)
    except BROKER_ERRORS as exc:
        cause = getattr(exc, "orig", None) or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        message = (
            f"Could not reach the message broker ({type(cause).__name__}: {first}). "
            "The run was not started; retry it when the broker is back."
        )
        service.fail(run_id, message)
        raise BrokerUnavailable(f"{message} (run {run_id})", run_id=str(run_id)) from exc
    return True


def _publish(task_name: str, queue: str, run_id: uuid.UUID, attempt: int, task_id: str, timeout: int) -> None:
    from backend.worker.celery_app import celery_app

    retries = get_settings().broker_publish_retries
    celery_app.send_task(
        task_name,
        args=[str(run_id), attempt],
        task_id=task_id,
        queue=queue,
        soft_time_limit=timeout,
        time_limit=timeout + 30,
        retry=True,
        retry_policy={"max_retries": retries, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
    )


def dispatch_after_commit(session: Session, run_id: uuid.UUID) -> None:
    """Dispatch ``run_id`` once ``session``'s transaction commits (for runs created inside a transaction)."""

    def send() -> None:
        try:
            dispatch(run_id)
        except BrokerUnavailable as exc:
            log.error("run %s: %s", run_id, exc)

    after_commit(session, send)


def submit_run(run_type: str, config: dict[str, Any], **kwargs: Any) -> Run:
    """Create a run and dispatch it. Raises before writing if the type or config is invalid."""
    run = service.create_run(run_type, config, **kwargs)
    dispatch(run.id)
    return run


def retry_run(run_id: uuid.UUID, *, created_by: str | None = None) -> Run:
    """A new run of the same type and config, with ``retry_of`` and the next attempt number."""
    from backend.errors import NotCapable
    from backend.runs.queries import get_run
    from backend.runs.states import RunOrigin, RunStatus

    original = get_run(run_id)
    job_type = get_registry().resolve(original.run_type)
    status = RunStatus(original.status)
    if not job_type.capabilities.retry:
        raise NotCapable(f"{job_type.label} runs cannot be retried.")
    if status not in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED):
        raise NotCapable(f"Only failed, timed-out or cancelled runs can be retried; this one is {status.value}.")
    run = service.create_run(
        original.run_type,
        original.config,
        organization_id=original.organization_id,
        origin=RunOrigin(original.origin),
        priority=original.priority,
        created_by=created_by or original.created_by,
        display_name=original.display_name,
        input_asset_ids=original.input_asset_ids,
        retry_of=original.id,
        attempt=original.attempt + 1,
    )
    service.add_log(run.id, "INFO", "retry", f"Retry of {original.id} (attempt {run.attempt})",
                    {"retry_of": str(original.id)})
    dispatch(run.id)
    return run
