"""SIGKILL a worker (main process and pool, the whole process group) in the middle of runs, 20 times.

PostgreSQL and Redis; every process (this one and the workers) uses a 0.5 s heartbeat, a 2 s lease and a
0.5 s sweep, and a delivery budget of two redeliveries after worker loss (``CURATORE_MAX_REDELIVERIES``).
Two workers (concurrency 2) consume the queue. Each round has a gated run of a type with three attempts
(``test_steps_retry``) and one of a type with one (``test_steps``) running; the worker holding the first
is killed with its whole process group and a replacement is started at once (not waited for). Recovery is
by leases alone, done by the surviving worker's sweep. Worker loss is not a job failure (issue 18): the
type's ``retry_policy`` plays no part, only the delivery budget does:

- a run on the killed worker, of either type, is re-queued and runs again (a new dispatch attempt) while
  its budget lasts; killed on its third delivery it ends ``timed_out``. Every fifth round starts a chain in
  which the same run is killed three times in a row;
- a run on the surviving worker is untouched;
- released, every run that is still alive completes.

At the end no run is pending, submitted, running, cancelling or stale. The time from the kill to each
recovery step (stale, re-queued or timed out, running again) is printed and bounded by a generous deadline
(the expected figure is lease + two heartbeats + a sweep, about 3.5 s).

A second test (XFAIL, strict) kills a worker that has received a run's message but not started it: the run
stays submitted (see the marker's reason).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import Run, RunLogEvent
from backend.db.states import RunStatus
from backend.db.types import utcnow
from tests.conftest import Backend, WorkerProcess, reset_process_state
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

S = RunStatus
KILLS = 20
ROUND_DEADLINE = 30.0  # seconds from a kill to every recovery step: generous; the expected figure is ~3.5 s
TIMING = {
    "CURATORE_HEARTBEAT_SECONDS": "0.5",
    "CURATORE_LEASE_SECONDS": "2",
    "CURATORE_SWEEP_SECONDS": "0.5",
    "CURATORE_START_TIMEOUT_SECONDS": "6",
    "CURATORE_MAX_REDELIVERIES": "2",
    "CURATORE_JOB_MODULES": '["tests.jobs_for_tests"]',
}
WORKER_ENV = {**TIMING, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


@pytest.fixture
def chaos_backend(pg_backend: Backend) -> Iterator[Backend]:
    """The PostgreSQL + Redis backend, with the chaos timings in this process too."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in TIMING.items():
            mp.setenv(key, value)
        reset_process_state()
        yield pg_backend
    reset_process_state()


class Workers:
    """The worker processes of one test, by node name; all stopped at the end."""

    def __init__(self, backend: Backend, log_dir: Path) -> None:
        self.backend, self.log_dir = backend, log_dir
        self.by_name: dict[str, WorkerProcess] = {}
        self.all: list[WorkerProcess] = []

    def start(self, wait: bool = True) -> WorkerProcess:
        worker = WorkerProcess(self.backend, self.log_dir / f"worker-{len(self.all)}.log", concurrency=2,
                               queues="default", extra_env=WORKER_ENV)
        self.all.append(worker)
        name = worker.proc.args[worker.proc.args.index("-n") + 1].replace("%h", socket.gethostname())
        self.by_name[name] = worker
        if wait:
            worker.wait_ready()
        return worker

    def kill_group(self, worker: WorkerProcess) -> None:
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)

    def stop_all(self) -> None:
        for worker in self.all:
            worker.stop()


@dataclass
class Tracked:
    run_id: uuid.UUID
    run_type: str
    gate: Path
    kills: int = 0
    outcome: list[str] = field(default_factory=list)  # what each kill did to it


def _row(run_id: uuid.UUID) -> Run:
    return in_transaction(lambda s: s.get(Run, run_id))


def _events_since(run_id: uuid.UUID, since: datetime) -> list[RunLogEvent]:
    stmt = (select(RunLogEvent).where(RunLogEvent.run_id == run_id, RunLogEvent.created_at >= since)
            .order_by(RunLogEvent.id))
    return list(in_transaction(lambda s: s.execute(stmt).scalars().all()))


def _release(run: Tracked, steps: int = 2) -> None:
    for n in range(1, steps + 1):
        (run.gate / str(n)).touch()


def _wait_running(run_id: uuid.UUID, attempt: int, what: str) -> Run:
    def check() -> Run | None:
        row = _row(run_id)
        return row if RunStatus(row.status) is S.RUNNING and row.dispatch_attempt == attempt else None

    return wait_for(check, ROUND_DEADLINE, what=what)  # type: ignore[return-value]


@pytest.mark.timeout(400)
def test_sigkilled_workers_lose_no_run(chaos_backend: Backend, tmp_path: Path) -> None:
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_run

    org = ensure_org("chaos", "Chaos")
    workers = Workers(chaos_backend, tmp_path)
    tracked: list[Tracked] = []
    figures: dict[str, list[float]] = {"stale": [], "requeued": [], "timed_out": [], "running_again": []}
    started = time.monotonic()

    def submit(run_type: str) -> Tracked:
        gate = tmp_path / f"gate-{len(tracked)}"
        gate.mkdir()
        run = submit_run(run_type, {"steps": 2, "gate_dir": str(gate)}, organization_id=org.id)
        tracked.append(Tracked(run.id, run_type, gate))
        return tracked[-1]

    try:
        workers.start()
        workers.start()
        chain: Tracked | None = None  # a retried run killed again in the next round
        for kill in range(KILLS):
            phase = kill % 5
            retried = chain if chain is not None else submit("test_steps_retry")
            single = submit("test_steps")
            expected_attempt = retried.kills + 1
            _wait_running(retried.run_id, expected_attempt, f"round {kill}: the retried run to run")
            _wait_running(single.run_id, 1, f"round {kill}: the single-dispatch run to run")
            if kill % 2:
                (retried.gate / "1").touch()  # sometimes past its first step: killed in the middle of step 2
            victim_name = _row(retried.run_id).worker_hostname
            victim = workers.by_name[victim_name]
            on_victim = [t for t in (retried, single) if _row(t.run_id).worker_hostname == victim_name]
            others = [t for t in (retried, single) if t not in on_victim]
            attempts = {t.run_id: _row(t.run_id).dispatch_attempt for t in (retried, single)}

            t_kill = utcnow()
            workers.kill_group(victim)
            workers.start(wait=False)  # the replacement boots while the survivor recovers the runs

            for t in on_victim:
                t.kills += 1
                deliveries = 3  # the first and CURATORE_MAX_REDELIVERIES more, whatever the type's retry policy
                if attempts[t.run_id] < deliveries:
                    row = _wait_running(t.run_id, attempts[t.run_id] + 1, f"round {kill}: {t.run_type} to run again")
                    assert row.worker_hostname != victim_name
                    t.outcome.append("requeued")
                else:
                    row = wait_for(lambda t=t: RunStatus(_row(t.run_id).status).is_terminal and _row(t.run_id),
                                   ROUND_DEADLINE, what=f"round {kill}: {t.run_type} to end")
                    assert RunStatus(row.status) is S.TIMED_OUT, (row.status, row.error_message)
                    assert "was lost" in (row.error_message or "") and "used up" in (row.error_message or "")
                    t.outcome.append("timed_out")
                seen = {e.event_type: (e.created_at - t_kill).total_seconds() for e in _events_since(t.run_id, t_kill)}
                assert "stale" in seen, f"round {kill}: no stale event: {seen}"
                figures["stale"].append(seen["stale"])
                if "redelivered" in seen:  # re-queued after the worker loss (its own log event, issue 18)
                    figures["requeued"].append(seen["redelivered"])
                    figures["running_again"].append(seen["start"])
                else:
                    figures["timed_out"].append(seen["timed_out"])
            for t in others:  # the surviving worker's run was not touched
                row = _row(t.run_id)
                assert RunStatus(row.status) is S.RUNNING and row.dispatch_attempt == attempts[t.run_id]

            # the chain: the same retried run is killed on dispatches 1, 2 and 3 (rounds 0-2 of every five)
            keep = phase in (0, 1) and retried in on_victim and not RunStatus(_row(retried.run_id).status).is_terminal
            chain = retried if keep else None
            for t in (retried, single):
                if t is not chain:
                    _release(t)
            for t in (retried, single):
                if t is not chain:
                    ended = wait_for(lambda t=t: RunStatus(_row(t.run_id).status).is_terminal and _row(t.run_id),
                                     ROUND_DEADLINE, what=f"round {kill}: {t.run_type} to end")
                    want = S.TIMED_OUT if t.outcome and t.outcome[-1] == "timed_out" else S.COMPLETED
                    assert RunStatus(ended.status) is want, (t, ended.status, ended.error_message)
            print(f"kill {kill + 1:2d}: victim held {[t.run_type for t in on_victim]}, "
                  f"outcomes {[(t.run_type, t.outcome) for t in on_victim]}")
        assert chain is None
    finally:
        workers.stop_all()

    # every run ended: completed after its re-queues, or timed out when its dispatches were used up
    rows = {t.run_id: _row(t.run_id) for t in tracked}
    stuck = [(t.run_type, rows[t.run_id].status) for t in tracked if not RunStatus(rows[t.run_id].status).is_terminal]
    assert not stuck, f"runs left active: {stuck}"
    for t in tracked:
        row = rows[t.run_id]
        if t.run_type == "test_steps_retry":
            assert row.dispatch_attempt == min(t.kills + 1, 3)
            assert RunStatus(row.status) is (S.TIMED_OUT if t.kills >= 3 else S.COMPLETED), (t, row.status)
        else:
            assert row.dispatch_attempt == t.kills + 1
            assert RunStatus(row.status) is S.COMPLETED, (t, row.status)  # one attempt, yet no run lost
    chains = sum(1 for t in tracked if t.kills >= 3)
    assert chains == KILLS // 5, f"{chains} runs were killed three times"
    assert sum(t.kills for t in tracked if t.run_type == "test_steps_retry") == KILLS

    elapsed = time.monotonic() - started
    print(f"\n{KILLS} kills in {elapsed:.1f} s; {len(tracked)} runs: "
          f"{sum(1 for r in rows.values() if r.status == S.COMPLETED)} completed, "
          f"{sum(1 for r in rows.values() if r.status == S.TIMED_OUT)} timed out")
    for step, values in figures.items():
        if values:
            print(f"  kill -> {step:13s}: n={len(values):2d} min {min(values):5.2f} s  "
                  f"median {statistics.median(values):5.2f} s  max {max(values):5.2f} s")
    recovered = figures["requeued"] + figures["timed_out"]
    assert recovered and max(recovered) < ROUND_DEADLINE


@pytest.mark.timeout(120)
def test_a_run_received_but_not_started_by_a_killed_worker_is_recovered(chaos_backend: Backend,
                                                                         tmp_path: Path) -> None:
    """The worker's pool processes are frozen (SIGSTOP) so the run's message is received by the worker but
    the run never starts; then the whole worker is killed and a fresh one started."""
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_run

    org = ensure_org("chaos-unstarted")
    workers = Workers(chaos_backend, tmp_path)
    try:
        victim = workers.start()
        import subprocess

        pool = [int(pid) for pid in subprocess.check_output(["pgrep", "-P", str(victim.proc.pid)]).split()]
        for pid in pool:
            os.kill(pid, signal.SIGSTOP)
        run = submit_run("test_steps_retry", {"steps": 1}, organization_id=org.id)
        wait_for(lambda: "received" in victim.output(), 10, what="the worker to receive the run's message")
        assert RunStatus(_row(run.id).status) is S.SUBMITTED
        workers.kill_group(victim)
        workers.start()
        # the start timeout (6 s here) puts it back to the queue; allow far more
        ended = wait_for(lambda: RunStatus(_row(run.id).status) is S.COMPLETED, 40,
                         what="the run received by the killed worker to be recovered and completed")
        assert ended
    finally:
        workers.stop_all()
