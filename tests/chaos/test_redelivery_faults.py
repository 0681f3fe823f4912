"""Issue 18, findings 5, 6 and 7, under real faults, with jobs that write to the database while they happen.

Throwaway servers of this module's own (see ``test_service_restarts``): a PostgreSQL cluster made with initdb
and a redis-server without persistence, each on a free port. Heartbeat 0.5 s, sweep 0.5 s in every process.

(a) A ``sharepoint_sync`` parent whose worker is SIGKILLed (its whole process group) while it spawns its child
    extractions: the surviving worker runs it again (lease 2 s), and it continues its group: one group, one
    child per file, every file extracted, the parent completed.
(b) ``pg_ctl stop -m immediate`` for 5 s while runs write progress, log lines and assets (lease 10 s): every
    run completes, on its first dispatch, never called stale or lost.
(c) Redis stopped and started again empty while two runs wait in it and two others write: every run completes
    within 30 s of the restart (the start timeout is 300 s: the lost messages are sent again by the sweep).
(d) A message received (prefetched) by a worker that is then SIGKILLed before starting it: sent again once the
    dead node no longer counts as holding it, long before the start timeout.
(e) A start refused by PostgreSQL ("too many connections" for the worker's role) is tried again, not
    acknowledged away with the run left submitted.

Timings are printed; servers are stopped and their directories removed even when a test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend.db.engine import in_transaction
from backend.db.models import Asset, Run, RunGroup, RunLogEvent
from backend.db.states import RunStatus
from tests.chaos.test_service_restarts import servers, throwaway  # noqa: F401 - fixtures, one set per module
from tests.conftest import CI, Backend, WorkerProcess, reset_process_state, restore_environ
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

S = RunStatus
ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 90.0  # generous bound on waits; the printed figures are what to look at


@pytest.fixture
def chaos(throwaway: Backend) -> Iterator[Backend]:  # noqa: F811 - the fixture imported above
    """The throwaway backend; settings a test adds with ``extend`` are put back afterwards."""
    throwaway.saved = {}
    yield throwaway
    restore_environ(throwaway.saved)
    reset_process_state()


class Workers:
    def __init__(self, backend: Backend, tmp_path: Path) -> None:
        self.backend, self.tmp_path = backend, tmp_path
        self.all: list[WorkerProcess] = []
        self.by_name: dict[str, WorkerProcess] = {}

    def start(self, concurrency: int = 2) -> WorkerProcess:
        worker = WorkerProcess(self.backend, self.tmp_path / f"worker-{len(self.all)}.log", concurrency=concurrency,
                               extra_env={"PYTHONPATH": str(ROOT)})
        self.all.append(worker)
        self.by_name[worker.proc.args[worker.proc.args.index("-n") + 1].replace("%h", socket.gethostname())] = worker
        worker.wait_ready()
        return worker

    def stop_all(self) -> None:
        for worker in self.all:
            worker.stop()
            if CI or os.environ.get("CURATORE_CHAOS_SHOW_LOGS"):
                print(worker.output()[-4000:])


def _row(run_id: uuid.UUID) -> Run:
    return in_transaction(lambda s: s.get(Run, run_id))


def _try(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except Exception:  # noqa: BLE001 - the database may be away
        return None


def _log(run_id: uuid.UUID) -> list[RunLogEvent]:
    stmt = select(RunLogEvent).where(RunLogEvent.run_id == run_id).order_by(RunLogEvent.id)
    return list(in_transaction(lambda s: s.execute(stmt).scalars().all()))


def _explain(run_ids: list[uuid.UUID], workers: Workers) -> str:
    out = []
    for run_id in run_ids:
        row = _row(run_id)
        out.append(f"run {run_id} {row.status} (dispatch {row.dispatch_attempt}, error {row.error_message!r}):\n  "
                   + "\n  ".join(f"{e.event_type}: {e.message}" for e in _log(run_id)[-25:]))
    return "\n".join(out) + "\n--- worker logs ---\n" + "\n".join(w.output()[-3000:] for w in workers.all)


def _wait_all_terminal(run_ids: list[uuid.UUID], timeout: float, workers: Workers, what: str) -> None:
    def done() -> bool:
        rows = _try(lambda: [_row(r) for r in run_ids])
        return bool(rows) and all(RunStatus(r.status).is_terminal for r in rows)

    try:
        wait_for(done, timeout, 0.1, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{_explain(run_ids, workers)}") from None


def _gated(org_id: uuid.UUID, tmp_path: Path, name: str, steps: int) -> tuple[uuid.UUID, Path]:
    from backend.queues.dispatch import submit_run

    gate = tmp_path / name
    gate.mkdir()
    run = submit_run("test_steps", {"steps": steps, "gate_dir": str(gate), "store_assets": True},
                     organization_id=org_id)
    return run.id, gate


def _stored_steps(run_id: uuid.UUID) -> set[str]:
    stmt = select(Asset.filename).where(Asset.source.like(f"test:{run_id}:%"))
    return set(in_transaction(lambda s: s.execute(stmt).scalars().all()))


# --------------------------------------------------------------------------- (a) a sync parent killed mid-spawn


@pytest.mark.timeout(240)
def test_a_sync_parent_killed_while_spawning_continues_its_group(chaos: Backend, tmp_path: Path) -> None:
    from backend.auth.orgs import ensure_org
    from backend.demo.servers import GraphServer
    from backend.queues.dispatch import submit_run

    files = 60
    graph = GraphServer("drive-1", page_size=50)
    graph.start()
    chaos.extend({"CURATORE_SHAREPOINT_BASE_URL": graph.base_url, "CURATORE_ALLOW_PRIVATE_FETCH": "true",
                  "CURATORE_LEASE_SECONDS": "2", "CURATORE_LOST_MESSAGE_GRACE_SECONDS": "2"})
    for n in range(files):
        graph.put_file(f"/Reports/file-{n:02d}.txt", f"report number {n}\n".encode())
    org = ensure_org("chaos-spawn")
    workers = Workers(chaos, tmp_path)
    try:
        workers.start()
        workers.start()
        run = submit_run("sharepoint_sync", {"sync_config_id": "sync-chaos", "drive_id": "drive-1"},
                         organization_id=org.id)

        def spawned() -> int:
            return in_transaction(lambda s: s.execute(select(RunGroup.expected).where(
                RunGroup.parent_run_id == run.id)).scalar_one_or_none()) or 0

        wait_for(lambda: spawned() >= 5, DEADLINE, 0.01, what="the parent to be spawning children")
        victim = workers.by_name[_row(run.id).worker_hostname]
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=10)
        t_kill = time.monotonic()
        at_kill = spawned()
        assert at_kill < files, "the parent had spawned every child before the kill: nothing was tested"

        _wait_all_terminal([run.id], DEADLINE, workers, "the sync parent to end after its worker was killed")
        ended_after = time.monotonic() - t_kill
        parent = _row(run.id)
        assert RunStatus(parent.status) is S.COMPLETED, _explain([run.id], workers)
        assert parent.dispatch_attempt >= 2  # it was executed again
        group_rows = in_transaction(lambda s: s.execute(select(RunGroup).where(RunGroup.parent_run_id == run.id))
                                    .scalars().all())
        assert len(group_rows) == 1, f"{len(group_rows)} groups"
        group = group_rows[0]
        children = in_transaction(lambda s: s.execute(select(Run).where(Run.parent_run_id == run.id)).scalars().all())
        live = in_transaction(lambda s: s.execute(select(Asset).where(
            Asset.organization_id == org.id, Asset.collection_id == "sync-chaos", Asset.deleted_at.is_(None)))
            .scalars().all())
        stored = in_transaction(lambda s: s.execute(select(func.count()).select_from(Asset).where(
            Asset.organization_id == org.id, Asset.collection_id == "sync-chaos")).scalar_one())
        per_file = {}
        for child in children:
            per_file[child.config["asset_id"]] = per_file.get(child.config["asset_id"], 0) + 1
        assert len(live) == files and stored == files  # each file stored once (the second execution re-stored none)
        assert per_file == {str(a.id): 1 for a in live}  # one child per file
        assert (group.expected, group.completed, group.finalized_at is not None) == (files, files, True)
        assert all(RunStatus(c.status) is S.COMPLETED for c in children)
        assert all(a.extraction_status == "completed" for a in live)
        assert "group_continued" in [e.event_type for e in _log(run.id)]
        print(f"\nsync parent killed after spawning {at_kill} of {files} children; it ended {parent.status} "
              f"{ended_after:.1f} s after the kill, on dispatch {parent.dispatch_attempt}; one group, "
              f"{len(children)} children, {stored} assets")
    finally:
        workers.stop_all()
        graph.stop()


# --------------------------------------------------------------------------- (b) PostgreSQL away for 5 s


@pytest.mark.timeout(240)
def test_postgres_stopped_immediately_for_5_s_while_jobs_write(chaos: Backend, servers, tmp_path: Path) -> None:  # noqa: F811
    from backend.auth.orgs import ensure_org

    pg, _ = servers
    chaos.extend({"CURATORE_LEASE_SECONDS": "10"})
    org = ensure_org("chaos-pg-blip")
    workers = Workers(chaos, tmp_path)
    steps = 8
    try:
        worker = workers.start(concurrency=2)
        runs = [_gated(org.id, tmp_path, f"gate-{n}", steps) for n in range(4)]  # 2 run, 2 wait (queue limit 4)
        wait_for(lambda: sum(RunStatus(_row(r).status) is S.RUNNING for r, _ in runs) == 2, DEADLINE,
                 what="two runs to be running")
        for _, gate in runs:
            (gate / "1").touch()
        wait_for(lambda: sum(len(_stored_steps(r)) for r, _ in runs) >= 2, DEADLINE, what="the first writes")

        t0 = time.monotonic()
        pg.stop()  # pg_ctl stop -m immediate: every connection cut, no clean shutdown
        for step in range(2, steps + 1):  # the jobs go on and write (progress, log, asset) while it is down
            for _, gate in runs:
                (gate / str(step)).touch()
            time.sleep(0.5)
        time.sleep(max(0.0, 5.0 - (time.monotonic() - t0)))
        pg.start()
        down = time.monotonic() - t0
        ids = [r for r, _ in runs]
        _wait_all_terminal(ids, DEADLINE, workers, "every run to end after the PostgreSQL outage")
        ended_after = time.monotonic() - t0 - down
        assert worker.proc.poll() is None
        for run_id in ids:
            row = _row(run_id)
            assert RunStatus(row.status) is S.COMPLETED, _explain([run_id], workers)
            assert row.dispatch_attempt == 1, _explain([run_id], workers)  # never re-queued as "lost"
            events = {e.event_type for e in _log(run_id)}
            assert not events & {"stale", "requeued", "timed_out"}, _explain([run_id], workers)
            assert _stored_steps(run_id) == {f"step-{n}.txt" for n in range(1, steps + 1)}
        print(f"\npostgres stopped (immediate) for {down:.1f} s while 2 runs wrote and 2 waited: all 4 completed "
              f"on their first dispatch, the last {ended_after:.1f} s after it was back")
    finally:
        workers.stop_all()


# --------------------------------------------------------------------------- (c) Redis restarted empty


@pytest.mark.timeout(240)
def test_redis_restarted_empty_with_runs_queued_in_it(chaos: Backend, servers, tmp_path: Path) -> None:  # noqa: F811
    from backend.auth.orgs import ensure_org

    _, rd = servers
    chaos.extend({"CURATORE_LOST_MESSAGE_GRACE_SECONDS": "2", "CURATORE_START_TIMEOUT_SECONDS": "300"})
    org = ensure_org("chaos-redis-empty")
    workers = Workers(chaos, tmp_path)
    steps = 3
    try:
        worker = workers.start(concurrency=2)
        runs = [_gated(org.id, tmp_path, f"gate-{n}", steps) for n in range(4)]
        wait_for(lambda: [RunStatus(_row(r).status) for r, _ in runs].count(S.RUNNING) == 2, DEADLINE,
                 what="two runs to be running")
        queued = [r for r, _ in runs if RunStatus(_row(r).status) is S.SUBMITTED]
        assert len(queued) == 2  # their messages wait in Redis

        rd.stop()
        for _, gate in runs:  # the two running jobs write their steps while Redis is away
            for n in range(1, steps + 1):
                (gate / str(n)).touch()
        time.sleep(2)
        rd.start()  # empty: no persistence; the two queued messages are gone
        t_up = time.monotonic()
        ids = [r for r, _ in runs]
        _wait_all_terminal(ids, 30, workers, "every run to end within 30 s of the Redis restart")
        ended_after = time.monotonic() - t_up
        assert worker.proc.poll() is None
        for run_id in ids:
            assert RunStatus(_row(run_id).status) is S.COMPLETED, _explain([run_id], workers)
            assert _stored_steps(run_id) == {f"step-{n}.txt" for n in range(1, steps + 1)}
        for run_id in queued:
            assert any(e.context.get("cause") == "message_lost" for e in _log(run_id)), _explain([run_id], workers)
        print(f"\nredis restarted empty with 2 runs queued in it: all 4 runs completed within {ended_after:.1f} s "
              "of the restart")
    finally:
        workers.stop_all()


# --------------------------------------------------------------------------- (d) prefetched by a dead worker


@pytest.mark.timeout(180)
def test_a_message_prefetched_by_a_killed_worker_is_sent_again(chaos: Backend, tmp_path: Path) -> None:
    """The worker's pool processes are frozen (SIGSTOP), so it receives the run's message but never starts it;
    then the whole worker is SIGKILLed and a fresh one started. The run is sent again once the dead node stops
    counting as holding it, long before the 300 s start timeout."""
    import subprocess

    from backend.auth.orgs import ensure_org

    chaos.extend({"CURATORE_LOST_MESSAGE_GRACE_SECONDS": "2", "CURATORE_START_TIMEOUT_SECONDS": "300"})
    org = ensure_org("chaos-prefetched")
    workers = Workers(chaos, tmp_path)
    try:
        victim = workers.start()
        for pid in subprocess.check_output(["pgrep", "-P", str(victim.proc.pid)]).split():
            os.kill(int(pid), signal.SIGSTOP)
        run_id, gate = _gated(org.id, tmp_path, "gate", 2)
        wait_for(lambda: "received" in victim.output(), 20, what="the worker to receive the run's message")
        assert RunStatus(_row(run_id).status) is S.SUBMITTED
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=10)
        t_kill = time.monotonic()
        workers.start()
        for n in (1, 2):
            (gate / str(n)).touch()
        _wait_all_terminal([run_id], 40, workers, "the run the killed worker had received to end")
        row = _row(run_id)
        assert RunStatus(row.status) is S.COMPLETED and row.dispatch_attempt == 2, _explain([run_id], workers)
        assert any(e.context.get("cause") == "message_lost" for e in _log(run_id))
        print(f"\na message prefetched by a killed worker: the run completed {time.monotonic() - t_kill:.1f} s "
              "after the kill (start timeout 300 s)")
    finally:
        workers.stop_all()


# --------------------------------------------------------------------------- (e) a start refused by the database


@pytest.mark.timeout(180)
def test_a_start_refused_for_too_many_connections_is_retried(chaos: Backend, servers, tmp_path: Path) -> None:  # noqa: F811
    """The worker connects as a role of its own; the role's connection limit is set to 0 and its connections cut
    when the run is published, so the worker's start is refused ("too many connections"). The start is tried
    again (with a 300 s start timeout, nothing else would rescue it soon) and the run completes once the limit
    is lifted; the signal to lift it is the worker's own "trying again" line."""
    import psycopg

    from backend.auth.orgs import ensure_org

    pg, _ = servers
    role = f"w_{uuid.uuid4().hex[:8]}"
    admin = pg.admin_url.rsplit("/", 1)[0] + "/curatore"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")

    def limit(n: int) -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"ALTER ROLE {role} CONNECTION LIMIT {n}")
            if n == 0:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))

    chaos.extend({"CURATORE_LEASE_SECONDS": "10", "CURATORE_START_TIMEOUT_SECONDS": "300"})
    org = ensure_org("chaos-too-many")
    worker = WorkerProcess(chaos, tmp_path / "worker.log", concurrency=1, extra_env={
        "PYTHONPATH": str(ROOT), "CURATORE_DATABASE_URL": pg.url("curatore").replace("postgres@", f"{role}@")})
    workers = Workers(chaos, tmp_path)
    workers.all.append(worker)
    try:
        worker.wait_ready()
        limit(0)
        run_id, gate = _gated(org.id, tmp_path, "gate", 2)
        wait_for(lambda: "too many connections" in worker.output() and "trying again" in worker.output(), 30,
                 what="the worker's start to be refused by the database")
        assert RunStatus(_row(run_id).status) is S.SUBMITTED
        limit(-1)
        for n in (1, 2):
            (gate / str(n)).touch()
        _wait_all_terminal([run_id], 40, workers, "the run whose start was refused to end")
        row = _row(run_id)
        assert RunStatus(row.status) is S.COMPLETED and row.dispatch_attempt == 1, _explain([run_id], workers)
        print("\na start refused for too many connections was tried again and the run completed on dispatch 1")
    finally:
        limit(-1)
        workers.stop_all()
