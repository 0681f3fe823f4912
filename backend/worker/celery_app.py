"""The worker's Celery app: the shared app of :mod:`backend.queues.celery_link` with every job type's task,
the scheduler's tick and the worker node's housekeeping.

One task per job type, named ``curatore.jobs.<key>``; each runs :func:`backend.worker.base.execute`.
The database is the source of truth: tasks store no results. ``celery -A backend.worker.celery_app``
(what ``curatore worker`` and ``curatore scheduler`` run) loads this module.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from celery.worker import state as worker_state

from backend.db.engine import dispose_engines
from backend.jobtypes.registry import JobType, get_registry
from backend.queues import celery_link, workers
from backend.queues.workers import NodeHeartbeat
from backend.worker import schedule_task
from backend.worker.base import RunTask, execute

celery_app = celery_link.celery_app


def configure(app: Celery) -> Celery:
    celery_link.configure(app)
    app.conf.imports = (schedule_task.__name__,)
    app.conf.beat_schedule = schedule_task.beat_schedule()  # the scheduler's tick: due tasks become runs
    for job_type in get_registry().types.values():
        ensure_task(app, job_type)
    return app


def ensure_task(app: Celery, job_type: JobType) -> None:
    """Register the Celery task of a job type (idempotent)."""
    if job_type.task_name in app.tasks:
        return
    app.task(
        name=job_type.task_name,
        base=RunTask,
        bind=True,
        job_key=job_type.key,
        soft_time_limit=job_type.timeout_seconds,
        time_limit=job_type.timeout_seconds + 30,
    )(_run_task)


def _run_task(task: RunTask, run_id: str, dispatch_attempt: int) -> str:
    return execute(run_id, dispatch_attempt, task.job_key, task.request.hostname)


@worker_process_init.connect
def _fresh_connections_after_fork(**_: object) -> None:
    dispose_engines()


_node_heartbeat: NodeHeartbeat | None = None


@worker_ready.connect
def _start_node_heartbeat(sender: object = None, **_: object) -> None:
    global _node_heartbeat
    consumer = sender
    hostname = getattr(consumer, "hostname", None) or "worker"
    queues = sorted(q.name for q in consumer.task_consumer.queues) if getattr(consumer, "task_consumer", None) else []
    concurrency = getattr(getattr(consumer, "pool", None), "limit", 0) or 0
    _node_heartbeat = NodeHeartbeat(hostname, queues, int(concurrency), held=_held_task_ids)
    _node_heartbeat.start()


def _held_task_ids() -> list[str]:
    """The tasks this node has received and not finished (reserved: waiting for a pool process, or running)."""
    for _ in range(10):
        try:  # weak sets the consumer thread changes as messages come and go
            return sorted({r.id for r in (*tuple(worker_state.reserved_requests), *tuple(worker_state.active_requests))})
        except RuntimeError:
            continue
    raise RuntimeError("the reserved tasks kept changing")


@worker_shutdown.connect
def _stop_node_heartbeat(sender: object = None, **_: object) -> None:
    if _node_heartbeat is not None:
        _node_heartbeat.stopped.set()
        try:
            workers.gone(_node_heartbeat.hostname)
        except Exception:  # noqa: BLE001 - shutting down; the row ages out anyway
            pass


configure(celery_app)
