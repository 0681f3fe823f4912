"""Worker nodes report themselves in the database: the queue page lists who is online.

(The embedded broker cannot broadcast, so Celery's own inspect/ping would not
work there; the database works on every backend.)
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update

from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import Run, WorkerHeartbeat
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.queues.dispatcher import dispatch_pending
from backend.runs import counters
from backend.runs.recovery import sweep

log = logging.getLogger(__name__)
BEAT_SECONDS = 5.0
ONLINE_WITHIN = timedelta(seconds=20)


def beat(hostname: str, queues: list[str], concurrency: int, held: list[str] | None = None) -> None:
    """The node is alive, consumes ``queues`` with ``concurrency`` processes, and holds the tasks ``held``
    (received, not finished): what recovery reads to tell a waiting message from a lost one."""
    now = utcnow()
    held = sorted(held or [])

    def write(s: Any) -> None:
        changed = s.execute(
            update(WorkerHeartbeat).where(WorkerHeartbeat.hostname == hostname)
            .values(last_seen_at=now, queues=queues, concurrency=concurrency, pid=os.getpid(), held_task_ids=held)
        ).rowcount
        if not changed:
            s.add(WorkerHeartbeat(hostname=hostname, queues=queues, concurrency=concurrency, pid=os.getpid(),
                                  started_at=now, last_seen_at=now, held_task_ids=held))

    in_transaction(write)


def gone(hostname: str) -> None:
    in_transaction(lambda s: s.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.hostname == hostname)))


def online(organization_ids: Collection[uuid.UUID] | None = None) -> list[dict[str, Any]]:
    """Worker nodes seen lately; ``active_runs`` counts only runs of ``organization_ids`` when given."""
    since = utcnow() - ONLINE_WITHIN
    in_orgs = [] if organization_ids is None else [Run.organization_id.in_(list(organization_ids))]

    def read(s: Any) -> list[dict[str, Any]]:
        nodes = s.execute(select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen_at >= since)
                          .order_by(WorkerHeartbeat.hostname)).scalars().all()
        busy = dict(s.execute(
            select(Run.worker_hostname, func.count()).where(Run.status.in_((RunStatus.RUNNING, RunStatus.CANCELLING)),
                                                            *in_orgs)
            .group_by(Run.worker_hostname)).all())
        return [{"hostname": n.hostname, "queues": n.queues, "concurrency": n.concurrency, "pid": n.pid,
                 "started_at": n.started_at, "last_seen_at": n.last_seen_at, "active_runs": busy.get(n.hostname, 0)}
                for n in nodes]

    return in_transaction(read)


def alive(hostname: str) -> bool:
    """Whether the worker node ``hostname`` (its Celery node name, ``name@host``) reported within
    ``ONLINE_WITHIN``: ``curatore health --worker`` for a liveness probe."""
    since = utcnow() - ONLINE_WITHIN
    found = in_transaction(lambda s: s.execute(select(WorkerHeartbeat.hostname).where(
        WorkerHeartbeat.hostname == hostname, WorkerHeartbeat.last_seen_at >= since)).first(), read_only=True)
    return found is not None


def database_ok() -> None:
    """Raise ``DatabaseUnavailable`` unless the database answers (``/healthz``, ``curatore health``)."""
    in_transaction(lambda s: s.execute(select(1)).scalar_one(), read_only=True)


class NodeHeartbeat(threading.Thread):
    """In each worker's main process: report the node, sweep for lost runs, dispatch pending ones."""

    def __init__(self, hostname: str, queues: list[str], concurrency: int,
                 held: Callable[[], list[str]] | None = None) -> None:
        super().__init__(name="curatore-node-heartbeat", daemon=True)
        self.hostname, self.queues, self.concurrency = hostname, queues, concurrency
        self.held = held or list  # the task ids this node has received and not finished (from Celery)
        self.stopped = threading.Event()

    def run(self) -> None:
        settings = get_settings()
        interval = min(BEAT_SECONDS, settings.sweep_seconds, settings.heartbeat_seconds)
        lease = max(settings.lease_seconds, settings.heartbeat_seconds * 2)
        last_ok = judge_after = time.monotonic()
        while True:
            try:
                # Every pass: what the node holds must be fresh for recovery to tell a lost message.
                beat(self.hostname, self.queues, self.concurrency, self.held())
                dispatch_pending(self.queues)  # it reached the database (and the broker)
                counters.compact()  # fold the list counters' deltas (one node at a time does it)
                now = time.monotonic()
                if now - last_ok > lease:
                    # Away longer than a lease: every lease expired while no worker could renew it. That says
                    # nothing about the workers, so their heartbeats get one lease period before any is judged.
                    judge_after = now + lease
                    log.warning("housekeeping was cut off for %.1f s; judging leases again in %.1f s",
                                now - last_ok, lease)
                last_ok = now
                if now >= judge_after:
                    sweep()
            except Exception as exc:  # the database or broker may be away for a moment
                log.warning("worker housekeeping failed: %s", exc)
            if self.stopped.wait(interval):
                return
