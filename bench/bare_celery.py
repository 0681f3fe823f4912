"""Bare Celery for ``bench.throughput``: a no-op task on the engine's broker URL and transport, with the
worker settings the engine uses (acks_late, prefetch 1, no result backend), and nothing else."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

from backend.queues import broker  # the same kombu transports (the tuned SQLite one, Redis) as the engine


STOCK = "CURATORE_BENCH_BARE_STOCK"


def make_app(stock: bool | None = None) -> Celery:
    """A new app on the broker the environment names (the worker's, or a fresh producer for each run); ``stock``
    (by default: whether CURATORE_BENCH_BARE_STOCK is set) on kombu's own transport: its Redis one, or its
    SQLAlchemy one (polled every second) on the same SQLite file."""
    stock = bool(os.environ.get(STOCK)) if stock is None else stock
    celery = Celery("bare")
    url = os.environ["CURATORE_BROKER_URL"]
    if stock and url.startswith(broker.ALIAS):
        url = "sqla" + url.removeprefix(broker.ALIAS)  # kombu's own transport, on the same file
    prefix = os.environ.get("CURATORE_BROKER_KEY_PREFIX")
    celery.conf.update(
        broker_url=url,
        # The engine's Redis transport (its fixes, and one client per pool: see broker.RedisChannel), or kombu's
        # own, as a plain Celery install has it.
        broker_transport=broker.REDIS_TRANSPORT if url.startswith("redis") and not stock else None,
        broker_transport_options=({"global_keyprefix": f"{prefix}bare:"} if url.startswith("redis") and prefix else
                                  {"connect_args": {"timeout": 30, "check_same_thread": False}}
                                  if url.startswith(("sqla", broker.ALIAS)) else {}),
        result_backend=None, task_ignore_result=True, task_serializer="json", accept_content=["json"],
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_queues=[Queue("bare")], worker_hijack_root_logger=False,
    )
    celery.task(name="bench.noop")(noop)
    return celery


def noop(n: int) -> None:
    with open(os.environ["CURATORE_BENCH_BARE_OUT"], "a") as out:
        out.write(f"{n}\n")


app = make_app()
