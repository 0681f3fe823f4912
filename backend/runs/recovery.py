"""Recovery, judged by leases (never by creation time).

A running run's worker renews its lease every heartbeat. :func:`sweep`, run by every worker node every
``CURATORE_SWEEP_SECONDS`` (and by the maintenance job), then:

1. marks ``stale`` a running run whose lease has expired (a heartbeat brings it back to running);
2. re-queues a run that has been stale for two heartbeats (and whose lease expired more than two heartbeats
   ago), while the type's attempts allow (``retry_policy.max_attempts`` dispatches), else ends it
   ``timed_out``. Counting from the moment it went stale gives a live worker's heartbeat two chances to bring
   it back after every lease expired at once (the database was away longer than a lease); and only a run
   still stale is moved (one revived since it was read is left alone);
3. ends ``cancelled`` a cancelling run whose lease has expired (its process is gone);
4. ends ``timed_out`` a run with no activity for longer than its type's timeout;
5. sends again a submitted run whose message was lost: no live worker node holds its task
   ``CURATORE_LOST_MESSAGE_GRACE_SECONDS`` after it was sent, while a node of its queue reported a free slot
   after that (Redis restarted empty, a worker died holding it, a start that failed and was acknowledged).
   Worker nodes report the tasks they hold at every housekeeping pass (``worker_heartbeats.held_task_ids``);
   a node of the queue with a free slot would have taken a message still in the broker within the grace;
6. re-queues a submitted run that no worker started within ``CURATORE_START_TIMEOUT_SECONDS`` (the floor).

A worker node whose housekeeping could not reach the database for longer than a lease waits one more lease
period before it sweeps again (``NodeHeartbeat``): those leases expired while nobody could renew them.

Group parents whose own work is done hold no lease while their children run, so they are exempt.
The database is the source of truth: nothing waits for Celery to redeliver a lost message.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select

from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import Run, WorkerHeartbeat
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.jobtypes.registry import get_registry
from backend.runs import service

log = logging.getLogger(__name__)
S = RunStatus
NODE_PASS_SECONDS = 5.0  # a worker node reports itself every min(this, CURATORE_SWEEP_SECONDS) (queues.workers)
NODE_LIVE_PASSES = 3  # a node that missed this many reports is not counted as alive


def _expired(statuses: tuple[RunStatus, ...], before: Any, *, unchanged_since: Any = None) -> list[Any]:
    stmt = select(Run.id, Run.run_type, Run.dispatch_attempt, Run.lease_expires_at).where(
        Run.status.in_(statuses), Run.lease_expires_at.is_not(None), Run.lease_expires_at < before
    )
    if unchanged_since is not None:  # its last transition (or activity) is older than this
        stmt = stmt.where(Run.last_activity_at < unchanged_since)
    return list(in_transaction(lambda s: s.execute(stmt).all(), read_only=True))


def sweep() -> dict[str, int]:
    """One pass; returns how many runs each rule moved."""
    settings = get_settings()
    registry = get_registry()
    now = utcnow()
    counts = {"stale": 0, "requeued": 0, "timed_out": 0, "cancelled": 0, "inactive": 0, "unstarted": 0}
    for run_id, *_ in _expired((S.RUNNING,), now):
        if service.mark_stale(run_id, "No heartbeat from its worker: its lease expired"):
            counts["stale"] += 1
    grace = now - timedelta(seconds=2 * settings.heartbeat_seconds)
    for run_id, run_type, dispatches, lease in _expired((S.STALE,), grace, unchanged_since=grace):
        job_type = registry.find(run_type)
        attempts = job_type.retry_policy.max_attempts if job_type else 1
        silent = int((now - lease).total_seconds())
        if dispatches < attempts:
            if service.requeue(run_id, f"Its worker was lost (no heartbeat for {silent} s past its lease); "
                                       f"re-queued for dispatch {dispatches + 1} of {attempts}", expect={S.STALE}):
                counts["requeued"] += 1
        elif service.time_out(run_id, f"Its worker was lost (no heartbeat for {silent} s past its lease) "
                                      f"after {dispatches} dispatch(es); not re-queued again", expect={S.STALE}):
            counts["timed_out"] += 1
    for run_id, *_ in _expired((S.CANCELLING,), now):
        if service.mark_cancelled(run_id, "Cancelled: its worker stopped before acknowledging", stage="forced"):
            counts["cancelled"] += 1
    counts["inactive"] = _time_out_inactive(registry, now)
    counts["resent"] = _resend_lost_messages(now, settings)
    counts["unstarted"] = _requeue_unstarted(now - timedelta(seconds=settings.start_timeout_seconds))
    if any(counts.values()):
        log.info("recovery sweep: %s", counts)
    return counts


def _resend_lost_messages(now: Any, settings: Any) -> int:
    """Rule 5: a submitted run whose task no live node holds, while a node of its queue had a free slot since
    the grace passed, lost its message: back to pending, and the dispatcher sends it again."""
    grace = timedelta(seconds=settings.lost_message_grace_seconds)
    live_since = now - timedelta(seconds=NODE_LIVE_PASSES * min(NODE_PASS_SECONDS, settings.sweep_seconds) + 1)

    def read(s: Any) -> tuple[list[Any], list[Any]]:
        nodes = s.execute(select(WorkerHeartbeat.hostname, WorkerHeartbeat.queues, WorkerHeartbeat.concurrency,
                                 WorkerHeartbeat.held_task_ids, WorkerHeartbeat.last_seen_at)
                          .where(WorkerHeartbeat.last_seen_at >= live_since)).all()
        if not nodes:
            return [], []
        waiting = s.execute(select(Run.id, Run.queue, Run.celery_task_id, Run.submitted_to_celery_at).where(
            Run.status == S.SUBMITTED, Run.submitted_to_celery_at < now - grace)).all()
        return list(nodes), list(waiting)

    nodes, waiting = in_transaction(read, read_only=True)
    held = {task_id for node in nodes for task_id in (node.held_task_ids or [])}
    moved = 0
    for run_id, queue, task_id, sent_at in waiting:
        if task_id in held:
            continue
        free = next((n for n in nodes if queue in (n.queues or []) and n.concurrency
                     and len(n.held_task_ids or []) < n.concurrency and n.last_seen_at >= sent_at + grace), None)
        if free is None:  # every node of its queue is busy: the message may still wait in the broker
            continue
        waited = int((now - sent_at).total_seconds())
        if service.resend(run_id, task_id, f"Its message was lost by the broker: no worker held it {waited} s after "
                                           f"it was sent while {free.hostname} had a free slot; sent again"):
            moved += 1
    return moved


def _requeue_unstarted(before: Any) -> int:
    """A submitted run no worker started in time (its message was lost with a killed worker, say) goes back
    to the queue; if the old message turns up later, it carries an old dispatch attempt and does nothing."""
    stmt = select(Run.id).where(Run.status == S.SUBMITTED, Run.submitted_to_celery_at < before)
    moved = 0
    for (run_id,) in in_transaction(lambda s: s.execute(stmt).all()):
        if service.requeue(run_id, "No worker started it in time; back to the queue", expect={S.SUBMITTED}):
            moved += 1
    return moved


def _time_out_inactive(registry: Any, now: Any) -> int:
    stmt = select(Run.id, Run.run_type, Run.last_activity_at, Run.heartbeat_at).where(
        Run.status.in_((S.RUNNING, S.STALE)),
        or_(Run.is_group_parent.is_(False), Run.lease_expires_at.is_not(None)),
    )
    moved = 0
    for run_id, run_type, activity, beat in in_transaction(lambda s: s.execute(stmt).all()):
        job_type = registry.find(run_type)
        last = max(t for t in (activity, beat) if t is not None) if (activity or beat) else None
        if job_type is None or last is None:
            continue
        idle = (now - last).total_seconds()
        if idle > job_type.timeout_seconds and service.time_out(
            run_id, f"No activity for {int(idle)} s, longer than the {job_type.label} timeout of "
                    f"{job_type.timeout_seconds} s"):
            moved += 1
    return moved
