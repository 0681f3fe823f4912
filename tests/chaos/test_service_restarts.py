"""Restart Redis, then PostgreSQL, under a running worker: runs end cleanly and the engine reconnects.

The test starts its own THROWAWAY servers (never the machine's shared ones on 5432/6379): a PostgreSQL
cluster made with ``initdb`` in a temporary directory (run as the ``postgres`` user when this process is
root) on a free port, and a ``redis-server`` without persistence on another free port. The database is
migrated; one real worker (concurrency 2) uses that Redis as its broker and for ``CURATORE_REDIS_URL``.
Heartbeat 0.5 s, lease 2 s, sweep 0.5 s in every process.

(a) Redis restarted while no task is in flight: worker and submitter reconnect; the next run completes.
(a') Redis restarted mid-run: two gated runs are running; Redis stops (its data is gone: no persistence);
    the first is released while it is down; Redis starts again on the same port; the second is released
    once the worker has reconnected (its late ack then goes to the lost connection). Both end (completed
    or failed, never stuck), the worker stays up, and runs submitted after the restart complete.
(b) PostgreSQL restarted mid-run (``pg_ctl restart -m fast``, every connection cut): the run completes
    (a cancel check that cannot reach the database does not fail the run), the next run completes.
(c) PostgreSQL down for longer than a lease (4 s, lease 2 s): every lease expires meanwhile; the run's
    heartbeat brings it back before recovery re-queues or times it out, and it completes.

Timings are printed. Servers are stopped and their directories removed even when a test fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.db.engine import in_transaction
from backend.db.models import Run, RunLogEvent
from backend.db.states import RunStatus
from tests.conftest import CI, Backend, WorkerProcess, require, reset_process_state
from tests.processes import free_port
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

S = RunStatus
ROOT = Path(__file__).resolve().parents[2]
TIMING = {
    "CURATORE_HEARTBEAT_SECONDS": "0.5",
    "CURATORE_LEASE_SECONDS": "2",
    "CURATORE_SWEEP_SECONDS": "0.5",
    "CURATORE_JOB_MODULES": '["tests.jobs_for_tests"]',
}
DEADLINE = 60.0  # generous bound on each wait; the printed figures are what to look at


# --------------------------------------------------------------------------- throwaway servers


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


class ThrowawayPostgres:
    """A PostgreSQL cluster of its own, in a temporary directory, on a free port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="curatore-chaos-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                   "--no-sync"], timeout=120)

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        done = subprocess.run(_as_postgres(argv), capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{self.server_log()}")

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.log), "-w",
                   "-t", "60", action, *extra])

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart", "-m", "fast")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._ctl("stop", "-m", "immediate")

    def stop_fast(self) -> None:
        self._ctl("stop", "-m", "fast")

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class ThrowawayRedis:
    """A redis-server of its own on a free port, without persistence, restartable on the same port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="curatore-chaos-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        log = open(self.root / "redis.log", "ab")  # noqa: SIM115 - handed to the process
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.root)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        wait_for(lambda: self._ping(client), 20, 0.05, what="the throwaway redis to answer")
        client.close()

    def _ping(self, client) -> bool:  # type: ignore[no-untyped-def]
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {(self.root / 'redis.log').read_text()[-2000:]}")
        try:
            return bool(client.ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ThrowawayPostgres, ThrowawayRedis]]:
    bindir = _pg_bindir()
    reason = None
    if bindir is None:
        reason = "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
    elif shutil.which("redis-server") is None:
        reason = "no redis-server on PATH"
    elif os.geteuid() == 0 and shutil.which("runuser") is None:
        reason = "running as root without runuser: initdb cannot run"
    require(reason)
    assert bindir is not None
    pg: ThrowawayPostgres | None = None
    rd: ThrowawayRedis | None = None
    try:
        pg = ThrowawayPostgres(bindir)
        pg.start()
        rd = ThrowawayRedis()
        rd.start()
        import psycopg

        with psycopg.connect(pg.admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE curatore")
        from backend.db.engine import dispose_engines
        from backend.db.migrate import upgrade

        upgrade(pg.url("curatore"))
        dispose_engines()
        yield pg, rd
    finally:
        from backend.db.engine import dispose_engines

        dispose_engines()
        for server in (rd, pg):
            if server is not None:
                server.cleanup()


@pytest.fixture
def throwaway(servers: tuple[ThrowawayPostgres, ThrowawayRedis], tmp_path: Path) -> Iterator[Backend]:
    """A Backend pointing this process (and the workers) at the throwaway servers."""
    pg, rd = servers
    if rd.proc is None or rd.proc.poll() is not None:  # a failed test may have left it down
        rd.start()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    backend = Backend("postgres", pg.url("curatore"), rd.url, rd.url, data_dir)
    backend.env = {
        "CURATORE_ENV": "test",
        "CURATORE_DATA_DIR": str(data_dir),
        "CURATORE_DATABASE_URL": backend.database_url,
        "CURATORE_BROKER_URL": backend.broker_url,
        "CURATORE_REDIS_URL": rd.url,
        "CURATORE_PROGRESS_MIN_INTERVAL": "0.05",
        **TIMING,
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in backend.env.items():
            mp.setenv(key, value)
        reset_process_state()
        yield backend
    reset_process_state()


@pytest.fixture
def chaos_worker(throwaway: Backend, tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(throwaway, tmp_path / "worker.log", concurrency=2, queues="default",
                           extra_env={"PYTHONPATH": str(ROOT)})
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
        if CI or os.environ.get("CURATORE_CHAOS_SHOW_LOGS"):
            print(worker.output()[-6000:])


# --------------------------------------------------------------------------- helpers


def _row(run_id: uuid.UUID) -> Run:
    return in_transaction(lambda s: s.get(Run, run_id))


def _status(run_id: uuid.UUID) -> RunStatus:
    return RunStatus(_row(run_id).status)


def _submit(org_id: uuid.UUID, gate: Path | None, steps: int = 2) -> uuid.UUID:
    from backend.queues.dispatch import submit_run

    config = {"steps": steps, "gate_dir": str(gate)} if gate else {"steps": steps}
    return submit_run("test_steps", config, organization_id=org_id).id


def _gate(tmp_path: Path, name: str) -> Path:
    gate = tmp_path / name
    gate.mkdir()
    return gate


def _release(gate: Path, steps: int = 2) -> None:
    for n in range(1, steps + 1):
        (gate / str(n)).touch()


def _wait_status(run_id: uuid.UUID, what: str, *statuses: RunStatus) -> float:
    """Wait for the run to reach one of ``statuses`` (reading through database hiccups); returns seconds."""
    t0 = time.monotonic()

    def check() -> bool:
        try:
            return _status(run_id) in statuses
        except Exception:  # noqa: BLE001 - the database may be restarting
            return False

    wait_for(check, DEADLINE, 0.05, what=what)
    return time.monotonic() - t0


def _wait_terminal(run_id: uuid.UUID, what: str, worker: WorkerProcess) -> tuple[RunStatus, float]:
    try:
        seconds = _wait_status(run_id, what, S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{_explain(run_id, worker)}") from None
    return _status(run_id), seconds


def _log(run_id: uuid.UUID) -> list[str]:
    from sqlalchemy import select

    stmt = select(RunLogEvent).where(RunLogEvent.run_id == run_id).order_by(RunLogEvent.id)
    return [f"{e.level.value} {e.event_type}: {e.message}" for e in in_transaction(lambda s: s.execute(stmt).scalars().all())]


def _explain(run_id: uuid.UUID, worker: WorkerProcess) -> str:
    row = _row(run_id)
    return (f"run {run_id} is {row.status} (dispatch {row.dispatch_attempt}, error {row.error_message!r})\n"
            + "\n".join(_log(run_id)) + "\n--- worker log (tail) ---\n" + worker.output()[-5000:])


# --------------------------------------------------------------------------- the tests


def _worker_alive(worker: WorkerProcess) -> None:
    if worker.proc.poll() is not None:
        lines = [line for line in worker.output().splitlines() if "CRITICAL" in line or "Unrecoverable" in line]
        raise AssertionError(f"the worker process exited with status {worker.proc.returncode}: "
                             + ("; ".join(lines) or worker.output()[-3000:]))


@pytest.mark.timeout(240)
def test_redis_restart_while_idle(throwaway: Backend, chaos_worker: WorkerProcess, servers, tmp_path: Path) -> None:
    """No task in flight: the worker and this process reconnect by themselves."""
    from backend.auth.orgs import ensure_org

    _, rd = servers
    org = ensure_org("chaos-redis-idle")
    t0 = time.monotonic()
    rd.stop()
    time.sleep(2)
    rd.start()
    down = time.monotonic() - t0
    time.sleep(3)  # the worker's consumer retries every 2 s
    _worker_alive(chaos_worker)
    run = _submit(org.id, None)
    outcome, seconds = _wait_terminal(run, "a run submitted after the Redis restart to end", chaos_worker)
    assert outcome is S.COMPLETED, _explain(run, chaos_worker)
    # the outage is logged as a lost connection, not as a traceback (issue 18: celery's gossip step raised
    # AttributeError on 'connection_errors' of a connection that was already gone)
    assert "AttributeError" not in chaos_worker.output() and "Error on restarting" not in chaos_worker.output()
    print(f"\nredis restart while idle: down {down:.1f} s; a run submitted 3 s later completed in {seconds:.2f} s")


@pytest.mark.timeout(240)
def test_redis_restart_mid_run(throwaway: Backend, chaos_worker: WorkerProcess, servers, tmp_path: Path) -> None:
    from backend.auth.orgs import ensure_org

    _, rd = servers
    org = ensure_org("chaos-redis")
    gate = _gate(tmp_path, "gate-before")
    before = _submit(org.id, gate)
    gate_across = _gate(tmp_path, "gate-across")
    across = _submit(org.id, gate_across)
    _wait_status(before, "the first run to start", S.RUNNING)
    _wait_status(across, "the second run to start", S.RUNNING)

    t0 = time.monotonic()
    rd.stop()
    down_at = time.monotonic()
    _release(gate)
    time.sleep(3)  # the run works through its steps while Redis is away
    status_while_down = _status(before)
    rd.start()
    up_at = time.monotonic()
    outcome, ended_after_up = _wait_terminal(before, "the run released during the Redis outage to end", chaos_worker)
    assert outcome in (S.COMPLETED, S.FAILED), _explain(before, chaos_worker)
    print(f"\nredis restart mid-run: down {up_at - down_at:.1f} s (stop took {down_at - t0:.2f} s); the run "
          f"released meanwhile was {status_while_down.value} while Redis was down, {outcome.value} "
          f"{ended_after_up:.2f} s after Redis came back")

    time.sleep(3)  # the worker's consumer retries every 2 s
    _worker_alive(chaos_worker)
    assert _status(across) is S.RUNNING, _explain(across, chaos_worker)
    _release(gate_across)
    across_outcome, across_seconds = _wait_terminal(across, "the run released after the reconnect to end",
                                                    chaos_worker)
    assert across_outcome is S.COMPLETED, _explain(across, chaos_worker)
    _worker_alive(chaos_worker)
    print(f"the run that ran across the whole outage, released after the reconnect, completed in "
          f"{across_seconds:.2f} s")
    t_submit = time.monotonic()
    after = _submit(org.id, None)
    after_outcome, after_seconds = _wait_terminal(after, "a run submitted after the Redis restart to end", chaos_worker)
    assert after_outcome is S.COMPLETED, _explain(after, chaos_worker)
    again = _submit(org.id, None)
    again_outcome, again_seconds = _wait_terminal(again, "a second run after the restart to end", chaos_worker)
    assert again_outcome is S.COMPLETED, _explain(again, chaos_worker)
    _worker_alive(chaos_worker)
    print(f"a run submitted {t_submit - up_at:.2f} s after the restart completed in {after_seconds:.2f} s, "
          f"the next in {again_seconds:.2f} s")


@pytest.mark.timeout(240)
def test_postgres_restart_mid_run(throwaway: Backend, chaos_worker: WorkerProcess, servers, tmp_path: Path) -> None:
    from backend.auth.orgs import ensure_org

    pg, _ = servers
    org = ensure_org("chaos-pg")
    gate = _gate(tmp_path, "gate-before")
    before = _submit(org.id, gate)
    _wait_status(before, "the first run to start", S.RUNNING)

    t0 = time.monotonic()
    pg.restart()
    restarted_in = time.monotonic() - t0
    _release(gate)
    outcome, ended_after = _wait_terminal(before, "the run released after the PostgreSQL restart to end", chaos_worker)
    assert outcome is S.COMPLETED, _explain(before, chaos_worker)

    after = _submit(org.id, None)
    after_outcome, after_seconds = _wait_terminal(after, "a run submitted after the PostgreSQL restart to end", chaos_worker)
    assert after_outcome is S.COMPLETED, _explain(after, chaos_worker)
    assert chaos_worker.proc.poll() is None

    _worker_alive(chaos_worker)
    print(f"\npostgres restart: pg_ctl restart -m fast took {restarted_in:.2f} s; the run released afterwards "
          f"{outcome.value} {ended_after:.2f} s after its gate opened; a run submitted next completed in "
          f"{after_seconds:.2f} s")


@pytest.mark.timeout(240)
def test_postgres_down_longer_than_the_lease(throwaway: Backend, chaos_worker: WorkerProcess, servers,
                                             tmp_path: Path) -> None:
    """PostgreSQL away for longer than a lease: every lease expires meanwhile, and when it is back the sweep
    may mark the run stale before its heartbeat renews the lease. The heartbeat brings it back (a run is
    re-queued or timed out only after two heartbeats stale), so the run completes; the worker survives."""
    from backend.auth.orgs import ensure_org

    pg, _ = servers
    org = ensure_org("chaos-pg-long")
    gate = _gate(tmp_path, "gate-before")
    before = _submit(org.id, gate)
    _wait_status(before, "the first run to start", S.RUNNING)

    t0 = time.monotonic()
    pg.stop_fast()
    time.sleep(4)  # lease 2 s + two heartbeats + more
    pg.start()
    down = time.monotonic() - t0
    _release(gate)
    outcome, ended_after = _wait_terminal(before, "the run to end after the long PostgreSQL outage", chaos_worker)
    assert outcome is S.COMPLETED, _explain(before, chaos_worker)
    after = _submit(org.id, None)
    after_outcome, after_seconds = _wait_terminal(after, "a run submitted after the outage to end", chaos_worker)
    assert after_outcome is S.COMPLETED, _explain(after, chaos_worker)
    _worker_alive(chaos_worker)
    print(f"\npostgres down {down:.1f} s (lease 2 s): the run in flight ended {outcome.value} "
          f"{ended_after:.2f} s after its gate opened; a run submitted next completed in {after_seconds:.2f} s")
    print("  its log: " + " | ".join(_log(before)))
