"""Submitting runs and publishing them to Celery, always after the transaction that claimed them.

The dispatcher (``dispatcher.py``) decides which pending runs go now; a claimed run moves pending →
submitted (a new Celery task id and dispatch attempt) and ``[run_id, dispatch_attempt]`` is published to
its queue. The worker starts only the current attempt, so a message delivered twice, or late, does nothing.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from backend.db.engine import after_commit, in_transaction
from backend.db.models import Run
from backend.db.states import RunOrigin, RunStatus
from backend.db.types import utcnow
from backend.errors import BrokerUnavailable, NotCapable
from backend.jobtypes.registry import get_registry
from backend.queues import dispatcher
from backend.queues.dispatcher import dispatch_pending, kick
from backend.runs import service
from backend.runs.queries import get_run

log = logging.getLogger(__name__)


def create_and_dispatch(create: Callable[[Session], Run]) -> Run:
    """``create(session)`` writes a pending run; a dispatch pass over its queue claims it (or not) in the same
    transaction, and publishes after the commit. A run that could not be published because the broker is down is
    marked failed and :class:`BrokerUnavailable` is raised: whoever submitted it hears so at once."""
    return _create_and_publish(lambda s: [create(s)])[0]


def _claimed_at_creation(run: Run) -> dispatcher.Claimed:
    """A run ``create_run`` wrote submitted (``direct``), to be published like a claimed one."""
    job_type = get_registry().resolve(run.run_type)
    return dispatcher.Claimed(run.id, job_type.task_name, run.queue, run.dispatch_attempt, run.celery_task_id or "",
                              job_type.timeout_seconds)


def submit_many(specs: Iterable[tuple[str, dict[str, Any], dict[str, Any]]], batch: int = 500) -> list[Run]:
    """Create and dispatch many runs (a fan-out): ``(run_type, config, create_run keyword arguments)`` each, one
    transaction and one dispatch pass per queue for every ``batch`` of them, published after each commit.

    A batch is written whole or not at all: a spec that does not validate, or a duplicate, raises and rolls its
    batch back (the batches before it stay). Runs whose publish fails are marked failed, and
    :class:`BrokerUnavailable` is raised once the batch is done."""
    runs: list[Run] = []
    items = iter(specs)
    while chunk := tuple(itertools.islice(items, batch)):
        runs += _create_and_publish(lambda s, chunk=chunk: [
            service.create_run(run_type, config, session=s, **kwargs) for run_type, config, kwargs in chunk])
    return runs


def _create_and_publish(create: Callable[[Session], list[Run]]) -> list[Run]:
    """One transaction: ``create(session)``'s runs (pending, or submitted when ``create_run`` was told they may go
    straight to a worker), and a dispatch pass over the queue of each pending one; then the submitted and
    claimed runs are published. Runs whose publish failed are marked failed, and the first one's error is
    raised as :class:`BrokerUnavailable`."""

    def write(s: Session) -> tuple[list[Run], list[dispatcher.Claimed], dict[str, list[dispatcher.Claimed] | None]]:
        created = create(s)
        direct = [_claimed_at_creation(r) for r in created if r.status == RunStatus.SUBMITTED]
        pending = sorted({r.queue for r in created if r.status == RunStatus.PENDING})
        return created, direct, {queue: dispatcher.claim(s, queue) for queue in pending}

    created, direct, claimed = in_transaction(write)
    outcome = dispatcher.publish(direct)
    for queue, queue_claimed in claimed.items():  # a queue another dispatcher was serving: a pass of its own now
        outcome |= dispatch_pending([queue]) if queue_claimed is None else dispatcher.publish(queue_claimed)
    return _published(created, outcome)


def _published(created: list[Run], outcome: dict[uuid.UUID, Exception | None]) -> list[Run]:
    """``created``, once published (``outcome``: each published run's error, if any). Runs whose publish failed
    are marked failed, and the first one's error is raised as :class:`BrokerUnavailable`."""
    unpublished = [(r.id, exc) for r in created if (exc := outcome.get(r.id)) is not None]
    messages = [_fail_unpublished(run_id, exc) for run_id, exc in unpublished]
    if unpublished:
        run_id, exc = unpublished[0]
        more = f"; {len(unpublished) - 1} more runs were not started" if len(unpublished) > 1 else ""
        raise BrokerUnavailable(f"{messages[0]} (run {run_id}{more})", run_id=str(run_id)) from exc
    return created


def _fail_unpublished(run_id: uuid.UUID, exc: Exception) -> str:
    """Mark a run whose publish failed as failed, saying why; returns the message."""
    cause = getattr(exc, "orig", None) or exc
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    message = (
        f"Could not reach the message broker ({type(cause).__name__}: {first}). "
        "The run was not started; retry it when the broker is back."
    )
    service.fail(run_id, message)
    return message


def dispatch_after_commit(session: Session, run_id: uuid.UUID) -> None:
    """A dispatch pass for ``run_id``'s queue once ``session``'s transaction commits (for runs created
    inside a transaction, such as children)."""
    queue = session.execute(select(Run.queue).where(Run.id == run_id)).scalar_one()
    after_commit(session, lambda: kick(queue))


def submit_run(run_type: str, config: dict[str, Any], **kwargs: Any) -> Run:
    """Create a run and dispatch it. Raises before writing if the type or config is invalid.

    On PostgreSQL the run is written, and straight away submitted when its queue has room and nothing waits
    there, in one statement (``service.create_run_alone``); then it is published, or a dispatch pass decides."""
    alone = service.create_run_alone(run_type, config, direct=dispatcher.direct_slot, **kwargs)
    if alone is None:
        return create_and_dispatch(lambda s: service.create_run(run_type, config, session=s,
                                                                direct=dispatcher.direct_slot, **kwargs))
    run, verdict = alone
    if verdict == "direct":
        outcome = dispatcher.publish([_claimed_at_creation(run)])
    elif verdict in ("waiting", "locked"):  # "full": a pass would not take it (a freed slot runs one)
        outcome = dispatch_pending([run.queue])
    else:
        outcome = {}
    return _published([run], outcome)[0]


def retry_run(run_id: uuid.UUID, *, created_by: str | None = None) -> Run:
    """A new run of the same type and config, with ``retry_of`` and the next attempt number."""
    original = get_run(run_id)
    job_type = get_registry().resolve(original.run_type)
    status = RunStatus(original.status)
    if not job_type.capabilities.retry:
        raise NotCapable(f"{job_type.label} runs cannot be retried.")
    if status not in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED):
        raise NotCapable(f"Only failed, timed-out or cancelled runs can be retried; this one is {status.value}.")

    def create(s: Session) -> Run:
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
            direct=dispatcher.direct_slot,
            session=s,
        )
        service.add_log(run.id, "INFO", "retry", f"Retry of {original.id} (attempt {run.attempt})",
                        {"retry_of": str(original.id)}, session=s)
        return run

    return create_and_dispatch(create)


def schedule_retry(run_id: uuid.UUID) -> Run:
    """An automatic retry: a new run with ``retry_of``, the next attempt, dispatched after the policy's backoff."""
    original = get_run(run_id)
    policy = get_registry().resolve(original.run_type).retry_policy
    delay = policy.delay_for(original.attempt)

    def write(s: Session) -> Run:
        run = service.create_run(
            original.run_type, original.config, organization_id=original.organization_id,
            origin=RunOrigin(original.origin), priority=original.priority, created_by=original.created_by,
            display_name=original.display_name, input_asset_ids=original.input_asset_ids,
            parent_run_id=original.parent_run_id, retry_of=original.id, attempt=original.attempt + 1,
            not_before=utcnow() + timedelta(seconds=delay), session=s, check_duplicates=False,
        )
        service.add_log(original.id, "WARN", "retry",
                        f"Retrying automatically in {delay:g} s as attempt {run.attempt} of {policy.max_attempts}",
                        {"retry_run_id": str(run.id), "delay_s": delay}, session=s)
        service.add_log(run.id, "INFO", "retry", f"Automatic retry of {original.id} (attempt {run.attempt})",
                        {"retry_of": str(original.id), "not_before_s": delay}, session=s)
        return run

    return in_transaction(write)
