"""The Celery app, configured from the settings and the job-type registry.

One Celery queue per registry queue and one task per job type, named
``curatore.jobs.<key>``; each task runs :func:`backend.worker.base.execute`.
The database is the source of truth: tasks store no results.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from kombu import Queue

from backend.config import get_settings
from backend.db.engine import dispose_engines
from backend.queues import workers
from backend.queues.registry import JobType, get_registry
from backend.queues.workers import NodeHeartbeat
from backend.worker import broker
from backend.worker.schedule_task import beat_schedule

celery_app = Celery("curatore")


def configure(app: Celery) -> Celery:
    settings = get_settings()
    registry = get_registry()
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name) for name in registry.celery_queues()],
        task_default_queue="default",
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    # Redis: kombu's transport with a channel that survives a Redis restart mid-task (see broker.py).
    redis = settings.broker_url.startswith(("redis://", "rediss://"))
    app.conf.broker_transport = broker.REDIS_TRANSPORT if redis else None
    if settings.broker_url.startswith(f"{broker.ALIAS}+"):
        app.conf.broker_transport_options = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    elif redis:
        app.conf.broker_transport_options = (
            {"global_keyprefix": settings.broker_key_prefix} if settings.broker_key_prefix else {}
        )
    app.conf.imports = ("backend.worker.schedule_task",)
    app.conf.beat_schedule = beat_schedule()  # the scheduler's tick: due scheduled tasks become runs
    for job_type in registry.types.values():
        ensure_task(app, job_type)
    return app


def ensure_task(app: Celery, job_type: JobType) -> None:
    """Register the Celery task of a job type (idempotent)."""
    if job_type.task_name in app.tasks:
        return
    from backend.worker.base import RunTask

    app.task(
        name=job_type.task_name,
        base=RunTask,
        bind=True,
        job_key=job_type.key,
        soft_time_limit=job_type.timeout_seconds,
        time_limit=job_type.timeout_seconds + 30,
    )(_run_task)


def _run_task(task: "RunTask", run_id: str, dispatch_attempt: int) -> str:  # noqa: F821
    from backend.worker.base import execute

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
    _node_heartbeat = NodeHeartbeat(hostname, queues, int(concurrency))
    _node_heartbeat.start()


@worker_shutdown.connect
def _stop_node_heartbeat(sender: object = None, **_: object) -> None:
    if _node_heartbeat is not None:
        _node_heartbeat.stopped.set()
        try:
            workers.gone(_node_heartbeat.hostname)
        except Exception:  # noqa: BLE001 - shutting down; the row ages out anyway
            pass


configure(celery_app)
