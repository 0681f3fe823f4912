"""Queues keep their promises, with real worker processes: limits, priority, cancellation (cooperative and
forced), force-kill, retries, duplicates, boosts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from backend.db.states import RunStatus
from backend.errors import DuplicateRun, NotCapable
from backend.queues.dispatch import retry_run, submit_run
from backend.queues.priority import boost
from backend.runs import service
from backend.runs.queries import RunFilter, get_logs, get_run, list_runs
from tests.support import wait_for, wait_terminal

pytestmark = pytest.mark.integration
S = RunStatus


@pytest.fixture
def queues(backend, org, tmp_path):  # type: ignore[no-untyped-def]
    """The queue test job types, the default queue limited to 2, a 1 s cancel grace; in this process and
    in the workers."""
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"queues": {"default": {"max_concurrency": 2}}}))
    env = {
        "CURATORE_JOB_MODULES": '["tests.jobs_for_queues"]',
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "CURATORE_REGISTRY_OVERRIDES": str(overrides),
        "CURATORE_CANCEL_GRACE_SECONDS": "1",
        "CURATORE_HEARTBEAT_SECONDS": "0.3",
        "CURATORE_SWEEP_SECONDS": "0.5",
    }
    backend.extend(env)
    return org


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def test_a_queue_limited_to_two_never_runs_three(queues, start_worker):  # type: ignore[no-untyped-def]
    start_worker(concurrency=4)
    runs = [submit_run("q_work", {"ms": 60, "label": str(i)}, organization_id=queues.id) for i in range(50)]
    done = [wait_terminal(r.id, timeout=120) for r in runs]
    assert {RunStatus(r.status) for r in done} == {S.COMPLETED}
    worked = [(r.results_summary["started"], r.results_summary["ended"]) for r in done]
    recorded = [(r.started_at.timestamp(), r.completed_at.timestamp()) for r in done]
    print(f"peak concurrency: work {max_overlap(worked)}, recorded {max_overlap(recorded)}")
    assert max_overlap(worked) == 2  # the worker could run 4; the queue allows 2, and both were used
    assert max_overlap(recorded) <= 2


def test_priority_then_age(queues, start_worker, tmp_path):  # type: ignore[no-untyped-def]
    gate = tmp_path / "open"
    blocker = submit_run("q_urgent", {"gate": str(gate), "label": "blocker"}, organization_id=queues.id)
    start_worker(concurrency=2)
    wait_for(lambda: RunStatus(get_run(blocker.id).status) is S.RUNNING, what="blocker running")
    low = [submit_run("q_urgent", {"ms": 10, "label": f"low{i}"}, organization_id=queues.id, priority=0)
           for i in range(3)]
    high = [submit_run("q_urgent", {"ms": 10, "label": f"high{i}"}, organization_id=queues.id, priority=4)
            for i in range(3)]
    mid = submit_run("q_urgent", {"ms": 10, "label": "mid"}, organization_id=queues.id, priority=2)
    boost(low[2].id, by="test")  # 0 -> 1: ahead of the other lows, behind the rest
    gate.touch()
    done = [wait_terminal(r.id) for r in [*low, *high, mid]]
    order = [r.results_summary["label"] for r in sorted(done, key=lambda r: r.started_at)]
    assert order == ["high0", "high1", "high2", "mid", "low2", "low0", "low1"]


def test_cooperative_cancel_stops_cleanly(queues, start_worker, tmp_path):  # type: ignore[no-untyped-def]
    start_worker()
    run = submit_run("q_work", {"gate": str(tmp_path / "never"), "collection_id": "c1"}, organization_id=queues.id)
    wait_for(lambda: RunStatus(get_run(run.id).status) is S.RUNNING, what="running")
    assert service.request_cancel(run.id, by="test") is S.CANCELLING
    done = wait_terminal(run.id, timeout=10)
    assert RunStatus(done.status) is S.CANCELLED
    stages = [(e.event_type, e.context.get("stage")) for e in get_logs(run.id)]
    assert ("cancel_requested", "requested") in stages and ("cancelled", "acknowledged") in stages


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _still(path: Path, seconds: float) -> bool:
    before = _lines(path)
    time.sleep(seconds)
    return _lines(path) == before


def test_a_job_that_ignores_cancel_is_forced_and_its_side_effects_stop(queues, start_worker, tmp_path):  # type: ignore[no-untyped-def]
    start_worker()
    out = tmp_path / "side-effects.txt"
    run = submit_run("q_busy", {"out": str(out)}, organization_id=queues.id)
    wait_for(lambda: _lines(out) > 5, what="side effects")
    service.request_cancel(run.id, by="test")
    done = wait_terminal(run.id, timeout=15)
    assert RunStatus(done.status) is S.CANCELLED
    assert ("cancelled", "forced") in [(e.event_type, e.context.get("stage")) for e in get_logs(run.id)]
    settled = _lines(out)
    time.sleep(1.0)  # nothing may write any more: the process that did is gone
    assert _lines(out) == settled
    follow = submit_run("q_work", {"ms": 10}, organization_id=queues.id)  # the worker carries on
    assert RunStatus(wait_terminal(follow.id).status) is S.COMPLETED


def test_force_kill_fails_the_run_and_stops_its_work(queues, start_worker, tmp_path):  # type: ignore[no-untyped-def]
    start_worker()
    out = tmp_path / "side-effects.txt"
    run = submit_run("q_busy", {"out": str(out)}, organization_id=queues.id)
    wait_for(lambda: _lines(out) > 5, what="side effects")
    assert service.force_kill(run.id, by="admin@test")
    done = get_run(run.id)
    assert RunStatus(done.status) is S.FAILED and done.error_message == "Force-killed by admin@test"
    wait_for(lambda: _still(out, 0.5), what="the writes to stop")  # its heartbeat kills it within 0.3 s
    settled = _lines(out)
    time.sleep(1.0)
    assert _lines(out) == settled


def test_automatic_retries_are_attempts_linked_to_each_other(queues, start_worker):  # type: ignore[no-untyped-def]
    start_worker()
    first = submit_run("q_flaky", {"succeed_on": 3}, organization_id=queues.id)

    def chain():  # type: ignore[no-untyped-def]
        runs = sorted(list_runs(RunFilter(run_types=("q_flaky",))), key=lambda r: r.attempt)
        return runs if len(runs) == 3 and RunStatus(runs[-1].status).is_terminal else None

    runs = wait_for(chain, timeout=60, what="three attempts")
    assert [(r.attempt, RunStatus(r.status).value) for r in runs] == [
        (1, "failed"), (2, "failed"), (3, "completed")]
    assert runs[0].id == first.id and runs[1].retry_of == runs[0].id and runs[2].retry_of == runs[1].id
    assert any(e.event_type == "retry" for e in get_logs(first.id))


def test_manual_retry_and_its_limits(queues, start_worker):  # type: ignore[no-untyped-def]
    start_worker()
    run = submit_run("q_flaky", {"succeed_on": 99}, organization_id=queues.id)
    wait_for(lambda: len(list_runs(RunFilter(run_types=("q_flaky",)))) == 3
             and all(RunStatus(r.status).is_terminal for r in list_runs(RunFilter(run_types=("q_flaky",)))),
             timeout=60, what="automatic attempts to run out")
    last = max(list_runs(RunFilter(run_types=("q_flaky",))), key=lambda r: r.attempt)
    again = retry_run(last.id, created_by="admin")
    assert again.retry_of == last.id and again.attempt == 4
    with pytest.raises(NotCapable, match="Only failed, timed-out or cancelled runs"):
        retry_run(wait_terminal(submit_run("q_work", {"ms": 1}, organization_id=queues.id).id).id)
    assert RunStatus(get_run(run.id).status) is S.FAILED


def test_the_same_job_on_the_same_resource_is_not_queued_twice(queues, start_worker, tmp_path):  # type: ignore[no-untyped-def]
    gate = tmp_path / "open"
    first = submit_run("q_work", {"collection_id": "handbook", "gate": str(gate)}, organization_id=queues.id)
    with pytest.raises(DuplicateRun, match=str(first.id)):
        submit_run("q_work", {"collection_id": "handbook", "gate": str(gate)}, organization_id=queues.id)
    other = submit_run("q_work", {"collection_id": "manual", "gate": str(gate)}, organization_id=queues.id)
    start_worker()
    gate.touch()
    assert RunStatus(wait_terminal(first.id).status) is S.COMPLETED
    assert RunStatus(wait_terminal(other.id).status) is S.COMPLETED
    again = submit_run("q_work", {"collection_id": "handbook"}, organization_id=queues.id)  # the first ended
    assert RunStatus(wait_terminal(again.id).status) is S.COMPLETED
