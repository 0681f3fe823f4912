"""Prometheus metrics, read from the database at scrape time (so every process reports the same numbers).

- ``curatore_runs{status, run_type}``: runs per status and type (aliases counted under their type's key).
- ``curatore_queue_pending{queue}``, ``curatore_queue_running{queue}``, ``curatore_queue_limit{queue}``.
- ``curatore_run_duration_seconds{run_type}``: a histogram of the runs that ended in the last
  :data:`DURATION_WINDOW` (recomputed at each scrape from the database, so use it for quantiles, not ``rate``).
- ``curatore_outbox_newest_seq`` and ``curatore_outbox_age_seconds``: the newest live-update event and its age
  (how far the live bridge's cursor lags is measured UI-side).
- ``curatore_workers_online`` and ``curatore_database_up``.

Only a scraper may read them (:func:`check_scraper`): one sending ``CURATORE_METRICS_TOKEN`` as a bearer
token, or one at an address of ``CURATORE_METRICS_ALLOW`` (loopback only by default).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select

from backend.api.edges import metrics_allowed
from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import OutboxEvent, Run
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.errors import CuratoreError
from backend.jobtypes.registry import get_registry
from backend.queues import stats, workers

if TYPE_CHECKING:
    from starlette.requests import Request

log = logging.getLogger("curatore.metrics")

DURATION_WINDOW = timedelta(hours=24)
DURATION_SAMPLE = 20_000
BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED)


class MetricsRefused(CuratoreError):
    """Metrics are for the configured scraper: send its bearer token (CURATORE_METRICS_TOKEN) or scrape from an
    address of CURATORE_METRICS_ALLOW."""

    code = "forbidden"
    http_status = 403


def check_scraper(request: Request) -> None:
    """Refuse (403, saying nothing of the metrics) a request neither holding the token nor from an allowed
    address."""
    settings = get_settings()
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    client = request.client.host if request.client else None
    if not metrics_allowed(request.headers, client, token, settings.metrics_allow):
        raise MetricsRefused()


class DatabaseCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._read())
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even when the database is away
            log.warning("metrics: the database could not be read: %s", exc)
            up = GaugeMetricFamily("curatore_database_up", "1 if the database answered this scrape")
            up.add_metric([], 0)
            yield up
            return
        yield from families
        up = GaugeMetricFamily("curatore_database_up", "1 if the database answered this scrape")
        up.add_metric([], 1)
        yield up

    def _read(self) -> Iterator[Metric]:
        registry = get_registry()

        def key(run_type: str) -> str:
            job_type = registry.find(run_type)
            return job_type.key if job_type else run_type

        rows = in_transaction(lambda s: s.execute(
            select(Run.status, Run.run_type, func.count()).group_by(Run.status, Run.run_type)).all())
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for status, run_type, n in rows:
            counts[(RunStatus(status).value, key(run_type))] += n
        runs = GaugeMetricFamily("curatore_runs", "Runs in the database by status and type",
                                 labels=["status", "run_type"])
        for (status, run_type), n in sorted(counts.items()):
            runs.add_metric([status, run_type], n)
        yield runs

        pending = GaugeMetricFamily("curatore_queue_pending", "Queued runs (pending or submitted)", labels=["queue"])
        running = GaugeMetricFamily("curatore_queue_running", "Running runs (running or cancelling)", labels=["queue"])
        limit = GaugeMetricFamily("curatore_queue_limit", "Maximum concurrent runs of the queue", labels=["queue"])
        for q in stats.queue_depths():
            pending.add_metric([q["name"]], q["pending"])
            running.add_metric([q["name"]], q["running"])
            limit.add_metric([q["name"]], q["limit"])
        yield from (pending, running, limit)

        yield self._durations(key)

        newest = in_transaction(lambda s: s.execute(
            select(OutboxEvent.seq, OutboxEvent.created_at).order_by(OutboxEvent.seq.desc()).limit(1)).one_or_none())
        seq = GaugeMetricFamily("curatore_outbox_newest_seq", "Sequence number of the newest live-update event")
        age = GaugeMetricFamily("curatore_outbox_age_seconds", "Age of the newest live-update event")
        seq.add_metric([], newest.seq if newest else 0)
        age.add_metric([], max((utcnow() - newest.created_at).total_seconds(), 0.0) if newest else 0.0)
        yield from (seq, age)

        online = GaugeMetricFamily("curatore_workers_online", "Worker nodes that reported in the last 20 s")
        online.add_metric([], len(workers.online()))
        yield online

    def _durations(self, key: Callable[[str], str]) -> Metric:
        since = utcnow() - DURATION_WINDOW
        rows = in_transaction(lambda s: s.execute(
            select(Run.run_type, Run.started_at, Run.completed_at)
            .where(Run.status.in_(ENDED), Run.completed_at >= since, Run.started_at.is_not(None))
            .order_by(Run.completed_at.desc()).limit(DURATION_SAMPLE)).all())
        by_type: dict[str, list[float]] = defaultdict(list)
        for run_type, started, completed in rows:
            by_type[key(run_type)].append(max((completed - started).total_seconds(), 0.0))
        family = HistogramMetricFamily("curatore_run_duration_seconds",
                                       "Durations of the runs that ended in the last 24 h (recomputed per scrape)",
                                       labels=["run_type"])
        for run_type, values in sorted(by_type.items()):
            buckets = [(floatToGoString(b), sum(1 for v in values if v <= b)) for b in BUCKETS]
            buckets.append(("+Inf", len(values)))
            family.add_metric([run_type], buckets, sum(values))
        return family


def metrics_text() -> tuple[bytes, str]:
    """The exposition text and its content type (a fresh registry: nothing is kept between scrapes)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
