"""Recovery, judged by leases (never by creation time).

A running run's worker renews its lease every heartbeat. :func:`sweep`, run by every worker node every
``CURATORE_SWEEP_SECONDS`` (and by the maintenance job), then:

1. marks ``stale`` a running run whose lease has expired (a heartbeat brings it back to running);
2. re-queues a run that has been stale for two heartbeats (and whose lease expired more than two heartbeats
   ago): its worker was lost, which is not a job failure, so the run has a delivery budget of its own
   (``CURATORE_MAX_REDELIVERIES`` re-queues, each a ``redelivered`` log line naming the worker and the cause;
   the type's ``retry_policy`` is for job errors only); once the budget is spent it ends ``timed_out``,
   saying so. Counting from the moment it went stale gives a live worker's heartbeat two chances to bring
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
from backend.db.states import LogLevel, RunStatus
from backend.db.types import utcnow
from backend.jobtypes.registry import get_registry
from backend.runs import service

log = logging.getLogger(__name__)
S = RunStatus
NODE_PASS_SECONDS = 5.0  # a worker node reports itself every min(this, CURATORE_SWEEP_SECONDS) (queues.workers)
NODE_LIVE_PASSES = 3  # a node that missed this many reports is not counted as alive


def _expired(statuses: tuple[RunStatus, ...], before: Any, *, unchanged_since: Any = None) -> list[Any]:
    stmt = select(Run.id, Run.run_type, Run.dispatch_attempt, Run.lease_expires_at, Run.worker_hostname).where(
        Run.status.in_(statuses), Run.lease_expires_at.is_not(None), Run.lease_expires_at < before
    )
    if unchanged_since is not None:  # its last transition (or activity) is older than this
        stmt = stmt.where(Run.last_activity_at < unchanged_since)
    return list(in_transaction(lambda s: s.execute(stmt).all(), read_only=True))


def sweep() -> dict[str, int]:
    """One pass; returns how many runs each rule moved.

    Each move is a claim (:func:`backend.runs.service.claim`): applied only while the run is still in the
    status and dispatch attempt it was read in, so when several nodes sweep at once each expiry is handled
    by one of them, and the others write nothing."""
    settings = get_settings()
    now = utcnow()
    counts = {"stale": 0, "requeued": 0, "timed_out": 0, "cancelled": 0, "inactive": 0, "unstarted": 0}
    for run_id, _type, attempt, _lease, worker in _expired((S.RUNNING,), now):
        if service.claim(run_id, S.RUNNING, attempt, S.STALE, f"No heartbeat from its worker{_on(worker)}: its "
                         "lease expired", context={"worker": worker}, also=Run.lease_expires_at < now):
            counts["stale"] += 1
    grace = now - timedelta(seconds=2 * settings.heartbeat_seconds)
    for run_id, _type, attempt, lease, worker in _expired((S.STALE,), grace, unchanged_since=grace):
        moved = _recover_lost(run_id, attempt, lease, worker, settings.max_redeliveries, now, grace)
        if moved:
            counts[moved] += 1
    for run_id, _type, attempt, _lease, worker in _expired((S.CANCELLING,), now):
        if service.claim(run_id, S.CANCELLING, attempt, S.CANCELLED, "Cancelled: its worker stopped before "
                         "acknowledging", context={"stage": "forced", "worker": worker},
                         also=Run.lease_expires_at < now):
            counts["cancelled"] += 1
    counts["inactive"] = _time_out_inactive(get_registry(), now)
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


def _on(worker: str | None) -> str:
    return f" on {worker}" if worker else ""


def _recover_lost(run_id: Any, attempt: int, lease: Any, worker: str | None, budget: int, now: Any,
                  grace: Any) -> str | None:
    """A stale run whose worker vanished: a worker loss, not a job failure. It is re-queued while its own
    delivery budget (``CURATORE_MAX_REDELIVERIES``, apart from the type's ``retry_policy``) lasts, else it
    ends ``timed_out``, saying so."""
    silent = int((now - lease).total_seconds())
    cause = _loss_cause(worker, silent, lease)
    used = service.redeliveries(run_id)
    context = {"cause": "worker_lost", "worker": worker, "redelivery": used + 1, "budget": budget}
    if used < budget:
        message = (f"{cause}; re-queued for delivery {used + 2} (redelivery {used + 1} of {budget} after "
                   "worker loss)")
        if service.claim(run_id, S.STALE, attempt, S.PENDING, message, event_type=service.REDELIVERED,
                         values={"celery_task_id": None, "worker_hostname": None}, context=context,
                         also=Run.lease_expires_at < grace):
            return "requeued"
        return None
    message = (f"{cause}; its {budget} redelivery(ies) after worker loss are used up "
               f"(CURATORE_MAX_REDELIVERIES), so it is not re-queued again")
    if service.claim(run_id, S.STALE, attempt, S.TIMED_OUT, message, level=LogLevel.ERROR,
                     values={"error_message": message}, context={**context, "redelivery": None},
                     also=Run.lease_expires_at < grace):
        return "timed_out"
    return None


def _loss_cause(worker: str | None, silent: int, lease: Any) -> str:
    """What the node's own heartbeat says about the loss: a node that reported after the run's lease expired
    is up, so the run's process died or froze; otherwise the whole node stopped reporting."""
    node_seen = None
    if worker:
        stmt = select(WorkerHeartbeat.last_seen_at).where(WorkerHeartbeat.hostname == worker)
        node_seen = in_transaction(lambda s: s.execute(stmt).scalar_one_or_none(), read_only=True)
    base = f"no heartbeat for {silent} s past its lease"
    if not worker:
        return f"Its worker was lost: {base}"
    if node_seen is not None and node_seen > lease:
        return f"Its worker process on {worker} was lost (it died or froze while the node is up): {base}"
    return f"Its worker {worker} was lost (the node stopped reporting): {base}"


def held_by(worker: str) -> list[Any]:
    """The runs a worker node holds (running, stale or cancelling on it, with a lease: a sealed group parent
    waiting for its children holds none, and no process): ``(id, dispatch_attempt, status)``."""
    stmt = select(Run.id, Run.dispatch_attempt, Run.status).where(
        Run.worker_hostname == worker, Run.status.in_((S.RUNNING, S.STALE, S.CANCELLING)),
        Run.lease_expires_at.is_not(None))
    return list(in_transaction(lambda s: s.execute(stmt).all(), read_only=True))


def hand_back_held(worker: str, why: str) -> int:
    """A stopping worker's last act: each run it still holds goes back to the queue at once (a cancelling one
    ends cancelled), so nothing waits for a lease to expire. Returns how many runs were handed back."""
    moved = 0
    for run_id, attempt, status in held_by(worker):
        if RunStatus(status) is S.CANCELLING:
            service.claim(run_id, S.CANCELLING, attempt, S.CANCELLED, f"Cancelled: {why}",
                          context={"stage": "forced", "worker": worker})
        elif service.hand_back(run_id, attempt, f"Handed back to the queue: {why}"):
            moved += 1
    return moved


def _requeue_unstarted(before: Any) -> int:
    """A submitted run no worker started in time (its message was lost with a killed worker, say) goes back
    to the queue; if the old message turns up later, it carries an old dispatch attempt and does nothing."""
    stmt = select(Run.id, Run.dispatch_attempt).where(Run.status == S.SUBMITTED, Run.submitted_to_celery_at < before)
    moved = 0
    for run_id, attempt in in_transaction(lambda s: s.execute(stmt).all(), read_only=True):
        if service.claim(run_id, S.SUBMITTED, attempt, S.PENDING, "No worker started it in time; back to the queue",
                         values={"celery_task_id": None, "worker_hostname": None},
                         also=Run.submitted_to_celery_at < before):
            moved += 1
    return moved


def _time_out_inactive(registry: Any, now: Any) -> int:
    stmt = select(Run.id, Run.run_type, Run.last_activity_at, Run.heartbeat_at, Run.status,
                  Run.dispatch_attempt).where(
        Run.status.in_((S.RUNNING, S.STALE)),
        or_(Run.is_group_parent.is_(False), Run.lease_expires_at.is_not(None)),
    )
    moved = 0
    for run_id, run_type, activity, beat, status, attempt in in_transaction(lambda s: s.execute(stmt).all()):
        job_type = registry.find(run_type)
        last = max(t for t in (activity, beat) if t is not None) if (activity or beat) else None
        if job_type is None or last is None:
            continue
        idle = (now - last).total_seconds()
        if idle > job_type.timeout_seconds:
            message = (f"No activity for {int(idle)} s, longer than the {job_type.label} timeout of "
                       f"{job_type.timeout_seconds} s")
            if service.claim(run_id, RunStatus(status), attempt, S.TIMED_OUT, message, level=LogLevel.ERROR,
                             values={"error_message": message}):
                moved += 1
    return moved
