"""The worker's Celery app: the shared app of :mod:`backend.queues.celery_link` with every job type's task,
the scheduler's tick and the worker node's housekeeping.

One task per job type, named ``curatore.jobs.<key>``; each runs :func:`backend.worker.base.execute`.
The database is the source of truth: tasks store no results. ``celery -A backend.worker.celery_app``
(what ``curatore worker`` and ``curatore scheduler`` run) loads this module.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from billiard.process import active_children
from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down
from celery.worker import state as worker_state

from backend.config import get_settings
from backend.db.engine import dispose_engines
from backend.jobtypes.registry import JobType, get_registry
from backend.queues import celery_link, workers
from backend.queues.workers import NodeHeartbeat
from backend.runs import recovery
from backend.worker import schedule_task
from backend.worker.base import HAND_BACK_SIGNAL, RunTask, execute, install_hand_back_signal

log = logging.getLogger(__name__)
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
    install_hand_back_signal()  # SIGTERM to the group is a warm shutdown; HAND_BACK_SIGNAL from us: hand back


_node_heartbeat: NodeHeartbeat | None = None
_consumer: Any = None
_hand_back: threading.Thread | None = None


@worker_ready.connect
def _start_node_heartbeat(sender: object = None, **_: object) -> None:
    global _node_heartbeat, _consumer
    consumer = _consumer = sender
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


@worker_shutting_down.connect
def _hand_back_on_shutdown(sender: object = None, how: str = "Warm", **_: object) -> None:
    """The worker was told to stop (SIGTERM, Ctrl-C, ``curatore dev`` stopping): in its main process, ask every
    pool process to hand its run back at its next ``check_cancelled()`` (``HAND_BACK_SIGNAL``, see
    ``backend.worker.base.install_hand_back_signal``), then hand back what is left after the grace. A cold
    shutdown (SIGQUIT) ends the pool processes at once and hands their runs back."""
    global _hand_back
    if _hand_back is not None or not isinstance(sender, str):
        return
    grace = 0.0 if how == "Cold" else get_settings().shutdown_grace_seconds
    _hand_back = threading.Thread(target=_hand_back_runs, args=(sender, _pool_pids(), grace),
                                  name="curatore-hand-back", daemon=True)
    _hand_back.start()


def _pool_pids() -> list[int]:
    pool = getattr(getattr(_consumer, "pool", None), "_pool", None)
    if pool is None:  # stopped before it was ready: the pool processes are this process's children
        return [p.pid for p in active_children() if p.pid]
    return [p.pid for p in getattr(pool, "_pool", None) or () if p.pid]


def _hand_back_runs(hostname: str, pids: list[int], grace: float) -> None:
    try:
        if grace > 0:
            for pid in pids:
                _signal(pid, HAND_BACK_SIGNAL)
            deadline = time.monotonic() + grace
            pause = threading.Event()
            while recovery.held_by(hostname) and time.monotonic() < deadline:
                pause.wait(0.1)  # the jobs hand back at their next check; nothing to do but look again
            if not recovery.held_by(hostname):
                return
        for pid in _pool_pids() or pids:  # first no more work from them, then their runs go back
            _signal(pid, signal.SIGKILL)
        why = (f"its worker {hostname} stopped, and the job had not stopped within the {grace:g} s grace; its "
               "process was ended" if grace > 0 else f"its worker {hostname} was stopped at once (cold shutdown)")
        moved = recovery.hand_back_held(hostname, why)
        if moved:
            log.warning("handed back %d run(s): %s", moved, why)
    except Exception:  # noqa: BLE001 - the database may be away: the leases expire and the sweep re-queues them
        log.exception("could not hand back the runs of %s", hostname)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@worker_shutdown.connect
def _stop_node_heartbeat(sender: object = None, **_: object) -> None:
    if _hand_back is not None:
        _hand_back.join(get_settings().shutdown_grace_seconds + 10)  # what is left goes back before we exit
    if _node_heartbeat is not None:
        _node_heartbeat.stopped.set()
        try:
            workers.gone(_node_heartbeat.hostname)
        except Exception:  # noqa: BLE001 - shutting down; the row ages out anyway
            pass


configure(celery_app)
