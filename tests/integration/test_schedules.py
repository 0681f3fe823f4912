"""Scheduled tasks: a due task starts exactly once however many schedulers tick at once, never overlaps its
previous run, can be disabled, enabled and triggered, and its history is the runs it started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from backend import schedules
from backend.auth.orgs import system_org
from backend.db.engine import in_transaction
from backend.db.models import ScheduledTask
from backend.db.states import RunOrigin, RunStatus
from backend.db.types import utcnow
from backend.errors import NotCapable
from backend.runs import service
from tests.support import wait_for, wait_terminal

pytestmark = pytest.mark.integration
S = RunStatus
ROOT = Path(__file__).resolve().parents[2]
HEALTH = {"handlers": ["health"]}


def make_due(name: str) -> None:
    in_transaction(lambda s: s.execute(update(ScheduledTask).where(ScheduledTask.name == name)
                                       .values(next_run_at=utcnow() - timedelta(seconds=1))))


def schedule(org, name: str = "health-check", interval: int = 3600) -> ScheduledTask:  # type: ignore[no-untyped-def]
    """A health-report task, due since a second ago."""
    return schedules.create_schedule(name, "system_maintenance", HEALTH, organization_id=org.id,
                                     interval_seconds=interval, first_run_at=utcnow() - timedelta(seconds=1))


def test_concurrent_ticks_in_threads_start_a_due_task_once(backend, org):
    schedule(org)
    barrier = threading.Barrier(8)
    started: list[int] = []
    errors: list[BaseException] = []

    def tick() -> None:
        try:
            barrier.wait()
            started.append(len(schedules.tick()))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tick) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == [] and sorted(started) == [0] * 7 + [1]
    [run] = schedules.history("health-check")
    assert run.origin is RunOrigin.SCHEDULED and run.created_by == "schedule:health-check"
    assert run.run_type == "system_maintenance" and run.config["handlers"] == ["health"]
    task = schedules.get_schedule("health-check")
    assert task.last_run_id == run.id and task.next_run_at > utcnow() + timedelta(seconds=3500)
    assert schedules.tick() == []  # not due again for an hour


def test_concurrent_ticks_in_processes_start_each_due_task_once(backend, org, tmp_path):
    for n in range(3):
        schedule(org, f"task-{n}")
    gate, ready = tmp_path / "go", tmp_path / "ready"
    ready.mkdir()
    code = (
        "import pathlib, sys, time\n"
        "from backend.schedules import due, tick\n"
        "due()\n"  # imports done and a connection open before the start signal
        "pathlib.Path(sys.argv[2], sys.argv[3]).touch()\n"
        "while not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.005)\n"
        "print(len(tick()))\n"
    )
    env = {**os.environ, **backend.env, "PYTHONPATH": str(ROOT)}
    if backend.redis_url is None:
        env.pop("CURATORE_REDIS_URL", None)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(gate), str(ready), str(i)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    try:
        wait_for(lambda: len(list(ready.iterdir())) == 4 or any(p.poll() is not None for p in procs),
                 timeout=60, what="the tick processes to be ready")
        gate.touch()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert sum(int(out.strip()) for out, _ in outputs) == 3
    assert [len(schedules.history(f"task-{n}")) for n in range(3)] == [1, 1, 1]


def test_a_running_previous_run_prevents_overlap(backend, org):
    schedule(org)
    [first] = schedules.tick()  # no worker: the run stays queued, i.e. active
    make_due("health-check")
    assert [t.name for t in schedules.due()] == ["health-check"]
    assert schedules.tick() == []
    assert schedules.tick() == []
    with pytest.raises(NotCapable, match=f"its previous run {first.id} is still submitted"):
        schedules.trigger_now("health-check", by="admin")

    service.request_cancel(first.id, by="test")
    [second] = schedules.tick()  # still due: starts at the first tick after the previous run ended

    assert second.id != first.id
    assert [r.id for r in schedules.history("health-check")] == [second.id, first.id]


def test_disable_enable_and_trigger(backend, org):
    schedule(org)
    schedules.disable("health-check")
    assert schedules.due() == [] and schedules.tick() == []

    triggered = schedules.trigger_now("health-check", by="admin")  # a disabled task can still be run by hand
    assert triggered.created_by == "schedule:health-check" and triggered.origin is RunOrigin.SCHEDULED
    from backend.runs.queries import get_logs

    assert [e.context["by"] for e in get_logs(triggered.id) if e.event_type == "triggered"] == ["admin"]
    task = schedules.get_schedule("health-check")
    assert task.enabled is False and task.last_run_id == triggered.id
    assert task.next_run_at > utcnow() + timedelta(seconds=3500)

    service.request_cancel(triggered.id)
    schedules.enable("health-check")
    assert schedules.due() == []  # enabled, but its next time is an interval after the trigger
    make_due("health-check")
    [run] = schedules.tick()
    assert schedules.describe(schedules.get_schedule("health-check"))["last_run_status"] in ("pending", "submitted")
    assert [r.id for r in schedules.history("health-check")] == [run.id, triggered.id]
    assert schedules.history("another") == []


def test_defaults_are_ensured_once_and_valid(backend, org):
    first = schedules.ensure_defaults()
    again = schedules.ensure_defaults()
    assert [t.name for t in first] == [t.name for t in again] == ["maintenance-hourly", "retention-daily"]
    assert [t.id for t in first] == [t.id for t in again]
    hourly, daily = first
    assert hourly.organization_id == daily.organization_id == system_org().id  # no tenant's
    assert (hourly.interval_seconds, daily.interval_seconds) == (3600, 86400)
    assert hourly.config["handlers"] == ["stale_runs", "orphans", "health"]
    assert daily.config["handlers"] == ["retention"]
    with pytest.raises(schedules.ScheduleNotFound):
        schedules.trigger_now("nope")


def test_the_beat_task_on_a_real_worker_starts_and_runs_due_tasks(backend, org, start_worker):
    """What Celery beat sends every 10 s: the worker ensures the defaults and starts what is due."""
    from backend.worker.celery_app import celery_app
    from backend.worker.schedule_task import TICK_TASK, beat_schedule

    start_worker(extra_env={"CURATORE_JOB_MODULES": json.dumps(["backend.worker.schedule_task"]),
                            "PYTHONPATH": str(ROOT)})
    entry = beat_schedule()["curatore-scheduler-tick"]
    celery_app.send_task(TICK_TASK, queue=entry["options"]["queue"])

    hourly = wait_for(lambda: schedules.history("maintenance-hourly"), what="the hourly maintenance to start")[0]
    done = wait_terminal(hourly.id)
    assert S(done.status) is S.COMPLETED, done.error_message
    assert done.results_summary["health"]["database"]["ok"] is True
    retention = wait_terminal(wait_for(lambda: schedules.history("retention-daily"), what="retention")[0].id)
    assert S(retention.status) is S.COMPLETED, retention.error_message
    schedule(org, "probe")  # the next tick starts this one, and only this one: the defaults are not due
    celery_app.send_task(TICK_TASK, queue="maintenance")
    wait_terminal(wait_for(lambda: schedules.history("probe"), what="the probe to start")[0].id)
    assert len(schedules.history("maintenance-hourly")) == len(schedules.history("retention-daily")) == 1
    assert [t.name for t in schedules.list_schedules()] == ["maintenance-hourly", "probe", "retention-daily"]
