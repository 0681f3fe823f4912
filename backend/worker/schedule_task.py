"""The scheduler's Celery task: ``curatore.scheduler.tick`` starts the scheduled tasks that are due.

Celery beat (``curatore scheduler``) sends it every few seconds; whichever worker receives it calls
:func:`backend.schedules.tick`, which is safe to run in several places at once (each due task is
claimed by one conditional UPDATE). Messages older than the beat interval expire unprocessed, so a
worker that comes back after a pause does not replay a backlog of ticks.
"""

from __future__ import annotations

import logging

from celery import shared_task

from backend import schedules

log = logging.getLogger(__name__)
TICK_TASK = "curatore.scheduler.tick"
TICK_SECONDS = 10.0
_defaults_ensured = False


@shared_task(name=TICK_TASK, ignore_result=True)
def tick() -> int:
    """Start the due scheduled tasks; returns how many runs were started."""
    global _defaults_ensured
    if not _defaults_ensured:
        schedules.ensure_defaults()
        _defaults_ensured = True
    started = schedules.tick()
    for run in started:
        log.info("scheduler started %s run %s (%s)", run.run_type, run.id, run.created_by)
    return len(started)


def beat_schedule() -> dict[str, dict[str, object]]:
    """The beat entry: one tick every ``TICK_SECONDS`` on the maintenance queue, expiring after one interval."""
    return {"curatore-scheduler-tick": {"task": TICK_TASK, "schedule": TICK_SECONDS,
                                        "options": {"queue": "maintenance", "expires": TICK_SECONDS}}}
