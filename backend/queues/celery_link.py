"""The one link to Celery: the app object, its broker configuration, publishing a run's task and revoking one.

Producers (the API, the UI, the CLI, the dispatcher in any process) and the worker share this app. Sending
needs no task registered here: a run's task is sent by its name (``curatore.jobs.<key>``); the worker
registers the tasks themselves (``backend.worker.celery_app``). The run service never imports Celery: it
asks for a revoke through :func:`backend.runs.service.on_task_dropped`, which this module answers.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis.exceptions
from celery import Celery
from kombu import Queue
from kombu.exceptions import KombuError
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy.exc import OperationalError as SQLOperationalError

from backend.config import get_settings
from backend.jobtypes.registry import get_registry
from backend.queues import broker
from backend.runs import service

log = logging.getLogger(__name__)
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    OSError, KombuError, KombuOperationalError, SQLOperationalError,
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)


def settings_conf() -> dict[str, Any]:
    """Broker, serialization, queues and delivery guarantees, from the settings and the registry."""
    settings = get_settings()
    redis_url = settings.broker_url.startswith(("redis://", "rediss://"))
    if settings.broker_url.startswith(f"{broker.ALIAS}+"):
        transport_options: dict[str, Any] = {"connect_args": {"timeout": 30, "check_same_thread": False}}
    elif redis_url and settings.broker_key_prefix:
        transport_options = {"global_keyprefix": settings.broker_key_prefix}
    else:
        transport_options = {}
    return {
        "broker_url": settings.broker_url,
        # Redis: kombu's transport with a channel that survives a Redis restart mid-task (see broker.py).
        "broker_transport": broker.REDIS_TRANSPORT if redis_url else None,
        "broker_transport_options": transport_options,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_queues": [Queue(name) for name in get_registry().celery_queues()],
        "task_default_queue": "default",
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        # Celery's task events (three messages per task) are off: a run's states are in the engine's own tables,
        # and nothing reads the events.
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
    }


def configure(app: Celery) -> Celery:
    """Apply the settings now (after they changed: tests, a worker starting)."""
    app.conf.update(settings_conf())
    return app


celery_app = Celery("curatore")
celery_app.add_defaults(settings_conf)  # read from the settings when the app is first used, not on import


def publish(task_name: str, queue: str, run_id: uuid.UUID, attempt: int, task_id: str, timeout: int) -> None:
    """Send ``[run_id, dispatch_attempt]`` to a run's queue (raises one of :data:`BROKER_ERRORS`)."""
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


@service.on_task_dropped
def revoke(task_id: str) -> None:
    """Tell the workers to skip a task (a run cancelled or killed before it started). Best effort: the
    worker's start check refuses a run that is no longer submitted for that dispatch anyway."""
    try:
        celery_app.control.revoke(task_id)
    except Exception as exc:  # noqa: BLE001 - the broker may be away; the start check still holds
        log.warning("could not revoke task %s: %s", task_id, exc)

