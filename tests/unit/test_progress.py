"""Coalesced progress: bounded writes per run, an interval that grows when writes are slow (at most one write a
second), and a held-back change still written within its interval when the job reports nothing more."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from backend.db.engine import in_transaction
from backend.db.models import OutboxEvent, Run
from backend.runs import progress as progress_module
from backend.runs import service
from backend.runs.progress import MAX_INTERVAL, ProgressTracker


@pytest.fixture
def run_id(backend) -> uuid.UUID:  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org

    org = ensure_org("acme", "Acme")
    return service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org.id).id


def progress_rows(run_id: uuid.UUID) -> int:
    return in_transaction(lambda s: s.execute(select(func.count()).select_from(OutboxEvent).where(
        OutboxEvent.run_id == run_id, OutboxEvent.kind == "progress")).scalar_one())


def stored(run_id: uuid.UUID) -> dict:
    return in_transaction(lambda s: s.execute(select(Run.progress).where(Run.id == run_id)).scalar_one())


def wait_for(condition, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_burst_is_coalesced(run_id: uuid.UUID) -> None:
    tracker = ProgressTracker(run_id, 0.2)
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 1.0:
        n += 1
        tracker.update(n, 1_000_000)
        time.sleep(0.002)
    elapsed = time.monotonic() - started
    assert n > 100
    assert tracker.writes <= elapsed / 0.2 + 2, (tracker.writes, n)
    assert wait_for(lambda: stored(run_id)["current"] == n)  # the last value arrives
    assert progress_rows(run_id) == tracker.writes
    tracker.close()


def test_a_held_back_change_is_written_without_another_update(run_id: uuid.UUID) -> None:
    tracker = ProgressTracker(run_id, 2.0)
    tracker.update(1, 10)  # the first update is written at once
    tracker.update(2, 10)  # held back: the interval has not passed
    assert stored(run_id)["current"] == 1
    assert wait_for(lambda: stored(run_id)["current"] == 2)  # written by the timer; the job said nothing more
    assert tracker.writes == 2
    tracker.close()


def test_slow_writes_stretch_the_interval_to_at_most_a_second(  # type: ignore[no-untyped-def]
        run_id: uuid.UUID, monkeypatch) -> None:
    real = service.set_progress

    def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.08)  # a database under load
        real(*args, **kwargs)

    monkeypatch.setattr(progress_module.service, "set_progress", slow)
    tracker = ProgressTracker(run_id, 0.05)
    assert tracker.interval == 0.05
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 2.5:
        n += 1
        tracker.update(n, 1_000_000)
        time.sleep(0.005)
    elapsed = time.monotonic() - started
    assert tracker.interval == MAX_INTERVAL  # 25 x 80 ms, capped
    assert tracker.writes <= elapsed / MAX_INTERVAL + 2, tracker.writes  # one a second, not one per 50 ms
    tracker.close()


def test_phase_changes_and_the_final_value_are_written_at_once(run_id: uuid.UUID) -> None:
    tracker = ProgressTracker(run_id, 10.0)
    tracker.update(1, 3, phase="scanning")
    tracker.update(2, 3)
    assert stored(run_id)["current"] == 1
    tracker.update(2, 3, phase="syncing")
    assert stored(run_id)["phase"] == "syncing" and stored(run_id)["current"] == 2
    tracker.update(3, 3)
    assert stored(run_id)["current"] == 3
    tracker.close()
