"""Worker lifecycle faults that must lose nothing (issue 18): a stopping worker hands its runs back, a killed
worker's runs come back under their own delivery budget, and a frozen process that lost its lease stops.

- SIGTERM to worker A's whole process group (what systemd does by default) while a scrape (against a
  local site) and a SharePoint sync (against the Graph stand-in) run on it: the pool process does not die of
  it (a warm shutdown), the job hands its run back at its next check and worker B, already up, continues it
  long before any lease could have expired; the run completes once and each page or file is kept once.
  On the embedded default (SQLite) and on PostgreSQL + Redis.
- SIGKILL of a worker, again and again (``CURATORE_CHAOS_KILLS``, default 6; the issue's trial is 20), on a
  type with ``max_attempts=1``: every run completes, none times out, none is left active, and no log line
  says "Refused to move from running to running".
- SIGSTOP of the pool process running a scrape, past its lease, then SIGCONT after the run was re-queued and
  started elsewhere: the old process sends no other request to the site.
- SIGTERM to a worker deleting a collection (held in a chunk by a row lock, PostgreSQL): the chunk ends, the
  job hands back before the next one, and worker B deletes the rest; no asset is deleted twice.
- ``curatore dev`` stopped with Ctrl-C mid-scrape and started again: the run was handed back and completes.
- A job that never checks: after the grace the main process hands its run back and ends its pool process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import Asset, Run, RunLogEvent
from backend.db.states import RunStatus
from tests.conftest import Backend, WorkerProcess
from tests.support import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

S = RunStatus
ROOT = Path(__file__).resolve().parents[2]
ALLOW_PRIVATE = {"CURATORE_ALLOW_PRIVATE_FETCH": "true"}
PAGES = 16  # the site: / links to /p1 ... /p16


# --------------------------------------------------------------------------- a site that holds pages on cue


class Site:
    """``/`` links to ``/p1`` … ``/p<PAGES>``; a request to a held path waits until it is released."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.log: list[str] = []
        self.held: dict[str, threading.Event] = {}
        self.waiting: Counter[str] = Counter()
        self.lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path
                with site.lock:
                    site.counts[path] += 1
                    site.log.append(path)
                    gate = site.held.get(path)
                    if gate is not None:
                        site.waiting[path] += 1
                if gate is not None:
                    gate.wait(120)
                if path == "/robots.txt":
                    body, kind = b"User-agent: *\nAllow: /\n", "text/plain"
                elif path == "/":
                    links = "".join(f"<a href='/p{n}'>page {n}</a> " for n in range(1, PAGES + 1))
                    body, kind = f"<html><title>Home</title><body>{links}</body></html>".encode(), "text/html"
                elif re.fullmatch(r"/p\d+", path):
                    body, kind = f"<html><title>{path}</title><body>Page {path}</body></html>".encode(), "text/html"
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self, path: str) -> threading.Event:
        with self.lock:
            self.held[path] = gate = threading.Event()
        return gate

    def count(self, path: str) -> int:
        with self.lock:
            return self.counts[path]

    def blocked(self, path: str) -> int:
        with self.lock:
            return self.waiting[path]

    def stop(self) -> None:
        for gate in self.held.values():
            gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.stop()


# --------------------------------------------------------------------------- helpers


def _row(run_id: uuid.UUID) -> Run:
    return in_transaction(lambda s: s.get(Run, run_id))


def _events(run_id: uuid.UUID, *types: str) -> list[RunLogEvent]:
    stmt = select(RunLogEvent).where(RunLogEvent.run_id == run_id).order_by(RunLogEvent.id)
    rows = in_transaction(lambda s: s.execute(stmt).scalars().all())
    return [e for e in rows if not types or e.event_type in types]


def _node(worker: WorkerProcess) -> str:
    return worker.proc.args[worker.proc.args.index("-n") + 1].replace("%h", socket.gethostname())


def _pool(worker: WorkerProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(worker.proc.pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def _ended(run_id: uuid.UUID, timeout: float = 90) -> Run:
    def done() -> Run | None:
        row = _row(run_id)
        return row if RunStatus(row.status).is_terminal else None

    try:
        return wait_for(done, timeout, what=f"run {run_id} to end")  # type: ignore[return-value]
    except TimeoutError:
        lines = [f"{e.event_type}: {e.message}" for e in _events(run_id)][-12:]
        raise AssertionError(f"run {run_id} did not end: {_row(run_id).status}; {lines}") from None


def _running_on(run_id: uuid.UUID, node: str, attempt: int | None = None, timeout: float = 60) -> Run:
    def check() -> Run | None:
        row = _row(run_id)
        ok = RunStatus(row.status) is S.RUNNING and row.worker_hostname == node
        return row if ok and (attempt is None or row.dispatch_attempt == attempt) else None

    return wait_for(check, timeout, what=f"run {run_id} to run on {node}")  # type: ignore[return-value]


def _assert_warm(worker: WorkerProcess) -> None:
    """The worker stopped by itself (exit 0) and no pool process died under a job (a crash would say so)."""
    assert worker.proc.wait(timeout=60) == 0, worker.output()[-3000:]
    out = worker.output()
    assert "WorkerLostError" not in out and "exited with 'signal" not in out, out[-3000:]
    assert "Warm shutdown" in out


def _live_assets(collection: str) -> list[Asset]:
    stmt = select(Asset).where(Asset.collection_id == collection, Asset.deleted_at.is_(None))
    return list(in_transaction(lambda s: s.execute(stmt).scalars().all()))


# --------------------------------------------------------------------------- hand-back on SIGTERM


@pytest.mark.timeout(240)
def test_sigterm_hands_a_scrape_back_and_another_worker_completes_it(backend: Backend, site: Site,
                                                                    tmp_path: Path) -> None:
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_run

    org = ensure_org("handback", "Hand-back")
    gate = site.hold("/p5")
    a = WorkerProcess(backend, tmp_path / "a.log", concurrency=1, extra_env=ALLOW_PRIVATE)
    b: WorkerProcess | None = None
    try:
        a.wait_ready()
        run = submit_run("scrape", {"start_url": site.url + "/", "max_depth": 1}, organization_id=org.id)
        _running_on(run.id, _node(a))
        wait_for(lambda: site.blocked("/p5"), 60, what="the crawl to reach /p5 on worker A")
        b = WorkerProcess(backend, tmp_path / "b.log", concurrency=1, extra_env=ALLOW_PRIVATE)
        b.wait_ready()  # B is up before A is told to stop

        os.killpg(a.proc.pid, signal.SIGTERM)  # the whole group, as systemd's default KillMode does
        wait_for(lambda: "Warm shutdown" in a.output(), 30, what="worker A to begin its warm shutdown")
        t_stop = time.monotonic()
        gate.set()  # A's request in flight returns; its next check hands the run back
        continued = _running_on(run.id, _node(b), timeout=60)
        handed_after = time.monotonic() - t_stop
        _assert_warm(a)
        done = _ended(run.id)
    finally:
        gate.set()
        a.stop()
        if b is not None:
            b.stop()

    print(f"\nscrape on {backend.kind}: continued on worker B {handed_after:.2f} s after the hand-back began")
    assert RunStatus(done.status) is S.COMPLETED, done.error_message
    print("\n".join(f"  {e.event_type}: {e.message}" for e in _events(run.id)))
    # A handed the run back mid-crawl; a message it still received while stopping went back unstarted
    handed = _events(run.id, "handed_back")
    assert handed and all(_node(a) in e.message for e in handed), [e.message for e in handed]
    assert "handed back to the queue at a check" in handed[0].message
    assert done.dispatch_attempt == continued.dispatch_attempt == 1 + len(handed)
    assert not _events(run.id, "stale", "redelivered", "transition_refused", "timed_out")  # no lease waited out
    assert len(_events(run.id, "complete")) == 1
    # every page kept once: one live asset per URL
    urls = [a.external_id for a in _live_assets(f"scrape-{run.id}")]
    assert sorted(urls) == sorted({site.url + "/", *(f"{site.url}/p{n}" for n in range(1, PAGES + 1))}), urls
    assert done.results_summary["pages_stored"] == PAGES + 1
    # B continued A's crawl from its checkpoint: every page was fetched once, none again after the hand-back
    assert _events(run.id, "crawl_resumed"), [e.event_type for e in _events(run.id)]
    pages = {path: n for path, n in site.counts.items() if path != "/robots.txt"}
    assert pages == {"/": 1, **{f"/p{n}": 1 for n in range(1, PAGES + 1)}}, pages


@pytest.mark.timeout(240)
def test_sigterm_hands_a_sharepoint_sync_back_and_each_file_is_downloaded_once(backend: Backend,
                                                                               tmp_path: Path) -> None:
    from backend.auth.orgs import ensure_org
    from backend.demo.servers import GraphServer
    from backend.queues.dispatch import submit_run

    org = ensure_org("handback-sp", "Hand-back SharePoint")
    graph = GraphServer("drive-1", page_size=2)
    graph.start()
    backend.extend({"CURATORE_SHAREPOINT_BASE_URL": graph.base_url})
    files = 6
    for n in range(1, files + 1):
        graph.put_file(f"/f{n}.txt", f"file {n}".encode())
    hold = graph.hold(r"/content", after=2)
    a = WorkerProcess(backend, tmp_path / "a.log", concurrency=1, extra_env=ALLOW_PRIVATE)
    b: WorkerProcess | None = None
    try:
        a.wait_ready()
        run = submit_run("sharepoint_sync", {"sync_config_id": "sync-hb", "drive_id": "drive-1"},
                         organization_id=org.id)
        hold.wait_blocked(1, timeout=60)  # the third download is in flight on A
        b = WorkerProcess(backend, tmp_path / "b.log", concurrency=2, extra_env=ALLOW_PRIVATE)
        b.wait_ready()
        os.killpg(a.proc.pid, signal.SIGTERM)
        wait_for(lambda: "Warm shutdown" in a.output(), 30, what="worker A to begin its warm shutdown")
        hold.release()
        _running_on(run.id, _node(b), timeout=60)
        _assert_warm(a)
        done = _ended(run.id)
        children = in_transaction(lambda s: s.execute(select(Run).where(Run.parent_run_id == run.id)).scalars().all())
        wait_for(lambda: all(RunStatus(_row(c.id).status).is_terminal for c in children), 90,
                 what="the extractions to end")
    finally:
        hold.release()
        a.stop()
        if b is not None:
            b.stop()
        graph.stop()

    assert RunStatus(done.status) is S.COMPLETED, done.error_message
    handed = _events(run.id, "handed_back")  # mid-run; then unstarted, if A still received it while stopping
    assert handed and "handed back to the queue at a check" in handed[0].message
    assert all(_node(a) in e.message for e in handed) and len(_events(run.id, "complete")) == 1
    assert not _events(run.id, "stale", "redelivered", "transition_refused")
    assert len(graph.seen("/content")) == files, "each file downloaded once: the second execution skipped the rest"
    stmt = select(Asset).where(Asset.organization_id == org.id, Asset.collection_id == "sync-hb")
    stored = in_transaction(lambda s: s.execute(stmt).scalars().all())
    assert sorted(a.filename for a in stored) == sorted(f"f{n}.txt" for n in range(1, files + 1))
    assert len(children) == files and all(_row(c.id).status == S.COMPLETED for c in children)


@pytest.mark.timeout(240)
def test_sigterm_hands_a_deletion_back_and_each_asset_is_deleted_once(pg_backend: Backend, tmp_path: Path) -> None:
    """A collection deletion on worker A, held inside its first chunk's DELETE by a row lock this test takes
    (PostgreSQL), gets SIGTERM: the chunk finishes, the job hands back at its check before the next one and
    worker B deletes the rest; every asset is deleted once, by one of them."""
    import psycopg

    from backend.auth.orgs import ensure_org
    from backend.config import get_settings
    from backend.queues.dispatch import submit_run
    from backend.storage.assets import _path_for, store_bytes

    org = ensure_org("handback-del", "Hand-back deletion")
    total = 300  # three chunks of 100
    made = [store_bytes(org.id, f"doc-{n}.txt", f"document {n}".encode()) for n in range(total)]
    ids = [a.id for a in made]
    in_transaction(lambda s: s.execute(Asset.__table__.update().where(Asset.id.in_(ids)).values(collection_id="bulk")))
    url = get_settings().database_url.replace("postgresql+psycopg://", "postgresql://")
    locker = psycopg.connect(url)
    locker.execute("SELECT id FROM assets WHERE collection_id = 'bulk' FOR UPDATE").fetchall()  # held until commit

    def blocked_deletes() -> int:
        with psycopg.connect(url, autocommit=True) as c:
            return c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                             "wait_event_type = 'Lock' AND query ILIKE 'DELETE FROM assets%'").fetchone()[0]

    a = WorkerProcess(pg_backend, tmp_path / "a.log", concurrency=1)
    b: WorkerProcess | None = None
    try:
        a.wait_ready()
        run = submit_run("deletion", {"resource_type": "collection", "resource_id": "bulk"}, organization_id=org.id)
        _running_on(run.id, _node(a))
        wait_for(lambda: blocked_deletes() > 0, 60, what="the first chunk's DELETE to wait for the lock")
        b = WorkerProcess(pg_backend, tmp_path / "b.log", concurrency=1)
        b.wait_ready()
        os.killpg(a.proc.pid, signal.SIGTERM)
        wait_for(lambda: "Warm shutdown" in a.output(), 30, what="worker A to begin its warm shutdown")
        locker.rollback()  # the first chunk goes through; the job hands back before the second
        _running_on(run.id, _node(b), timeout=60)
        _assert_warm(a)
        done = _ended(run.id)
    finally:
        locker.close()
        a.stop()
        if b is not None:
            b.stop()

    assert RunStatus(done.status) is S.COMPLETED, done.error_message
    handed = _events(run.id, "handed_back")
    assert handed and all(_node(a) in e.message for e in handed) and len(_events(run.id, "complete")) == 1
    assert not _events(run.id, "stale", "redelivered", "transition_refused")
    assert done.results_summary["assets_deleted"] == total - 100  # B deleted what A had not: nothing twice
    assert done.results_summary["files_missing"] == 0
    left = in_transaction(lambda s: s.execute(select(Asset.id).where(Asset.id.in_(ids))).all())
    assert left == [] and not any(_path_for(a.storage_key).exists() for a in made)


# --------------------------------------------------------------------------- SIGKILL, again and again

FAST = {
    "CURATORE_HEARTBEAT_SECONDS": "0.5",
    "CURATORE_LEASE_SECONDS": "2",
    "CURATORE_SWEEP_SECONDS": "0.5",
    "CURATORE_JOB_MODULES": '["tests.jobs_for_tests"]',
}


@pytest.fixture
def fast_pg(pg_backend: Backend) -> Backend:
    pg_backend.extend({**FAST, "PYTHONPATH": str(ROOT)})
    return pg_backend


@pytest.mark.timeout(400)
def test_a_killed_worker_loses_no_run_of_a_type_with_one_attempt(fast_pg: Backend, tmp_path: Path) -> None:
    """``test_steps`` has ``max_attempts=1``; each round kills the worker holding its run, the pool process
    alone (Celery replaces it) or the whole worker (a fresh one is started), alternately."""
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_run

    kills = int(os.environ.get("CURATORE_CHAOS_KILLS", "6"))
    org = ensure_org("kills", "Kills")
    workers: dict[str, WorkerProcess] = {}
    started: list[WorkerProcess] = []

    def start() -> None:
        w = WorkerProcess(fast_pg, tmp_path / f"w{len(started)}.log", concurrency=1, queues="default")
        started.append(w)
        workers[_node(w)] = w
        w.wait_ready()

    runs: list[uuid.UUID] = []
    try:
        start()
        start()
        for k in range(kills):
            gate = tmp_path / f"gate-{k}"
            gate.mkdir()
            run = submit_run("test_steps", {"steps": 2, "gate_dir": str(gate)}, organization_id=org.id)
            runs.append(run.id)
            first = wait_for(lambda: RunStatus(_row(run.id).status) is S.RUNNING and _row(run.id), 60,
                             what=f"round {k}: the run to start")
            victim = workers[first.worker_hostname]  # type: ignore[union-attr]
            if k % 2:
                (gate / "1").touch()  # sometimes killed in its second step
            if k % 2 == 0:
                for pid in _pool(victim):
                    os.kill(pid, signal.SIGKILL)
            else:
                os.killpg(victim.proc.pid, signal.SIGKILL)
                victim.proc.wait(timeout=10)
                del workers[first.worker_hostname]  # type: ignore[arg-type]
                start()
            wait_for(lambda: RunStatus(_row(run.id).status) is S.RUNNING and _row(run.id).dispatch_attempt == 2,
                     60, what=f"round {k}: the run to be redelivered and run again")
            (gate / "1").touch()
            (gate / "2").touch()
            ended = _ended(run.id)
            assert RunStatus(ended.status) is S.COMPLETED, (k, ended.status, ended.error_message)
            print(f"kill {k + 1}: {'pool process' if k % 2 == 0 else 'whole worker'} -> "
                  f"{[e.message for e in _events(run.id, 'redelivered')]}")
    finally:
        for w in started:
            w.stop()

    rows = [_row(r) for r in runs]
    assert [RunStatus(r.status) for r in rows] == [S.COMPLETED] * kills
    for r in rows:
        (line,) = _events(r.id, "redelivered")
        assert "redelivery 1 of 3 after worker loss" in line.message, line.message
        assert r.attempt == 1  # the same run, not an automatic retry: the type's retry policy is untouched
        assert not _events(r.id, "transition_refused"), [e.message for e in _events(r.id, "transition_refused")]


# --------------------------------------------------------------------------- SIGSTOP past the lease


@pytest.mark.timeout(240)
def test_a_frozen_process_that_lost_its_lease_sends_no_more_requests(fast_pg: Backend, site: Site,
                                                                     tmp_path: Path) -> None:
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_run

    org = ensure_org("frozen", "Frozen")
    first_gate = site.hold("/p3")
    a = WorkerProcess(fast_pg, tmp_path / "a.log", concurrency=1, queues="scrape", extra_env=ALLOW_PRIVATE)
    b: WorkerProcess | None = None
    frozen: list[int] = []
    try:
        a.wait_ready()
        run = submit_run("scrape", {"start_url": site.url + "/", "max_depth": 1}, organization_id=org.id)
        _running_on(run.id, _node(a))
        wait_for(lambda: site.blocked("/p3"), 60, what="the crawl to reach /p3 on worker A")
        frozen = _pool(a)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        first_gate.set()  # the answer to /p3 waits in the frozen process's socket
        # the new execution continues from A's checkpoint (/, /p1, /p2 kept) and will wait at /p3 in its turn
        second_gate = site.hold("/p3")
        b = WorkerProcess(fast_pg, tmp_path / "b.log", concurrency=1, queues="scrape", extra_env=ALLOW_PRIVATE)
        b.wait_ready()
        _running_on(run.id, _node(b), attempt=2, timeout=60)  # stale, re-queued, started on B
        wait_for(lambda: site.blocked("/p3") >= 2 and site.count("/p3") == 2, 60, what="B to reach /p3")
        before = site.count("/p4")
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        # A's process stops: its heartbeat finds the dispatch is not its own (it kills the process), or the
        # job's own check before its next request does (the task returns "lost")
        wait_for(lambda: not all(_alive(pid) for pid in frozen) or "'lost'" in a.output(), 30,
                 what="the old process to stop")
        assert site.count("/p4") == before == 0, "the old process sent another request after it lost the run"
        second_gate.set()
        done = _ended(run.id)
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        first_gate.set()
        a.stop()
        if b is not None:
            b.stop()

    assert RunStatus(done.status) is S.COMPLETED and done.dispatch_attempt == 2, done.error_message
    assert site.count("/p4") == 1  # fetched by B only
    assert site.count("/") == site.count("/p1") == site.count("/p2") == 1  # B did not fetch A's pages again
    assert len(_events(run.id, "complete")) == 1
    line = _events(run.id, "redelivered")[0].message
    assert "died or froze while the node is up" in line and _node(a) in line, line
    urls = [x.external_id for x in _live_assets(f"scrape-{run.id}")]
    assert len(urls) == len(set(urls)) == PAGES + 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (FileNotFoundError, IndexError):
        return False


# --------------------------------------------------------------------------- curatore dev, stopped and started


def _start_dev(backend: Backend, port: int, log: Path) -> subprocess.Popen[bytes]:
    import sys

    env = {**os.environ, **backend.env, **ALLOW_PRIVATE, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "backend.cli", "dev", "--no-ui", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.timeout(240)
def test_curatore_dev_stopped_with_ctrl_c_hands_back_and_completes_after_the_restart(
        sqlite_backend: Backend, site: Site, tmp_path: Path) -> None:
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_run
    from tests.processes import free_port, stop_group

    org = ensure_org("dev-restart", "Dev restart")
    gate = site.hold("/p5")
    port, log = free_port(), tmp_path / "dev.log"
    dev = _start_dev(sqlite_backend, port, log)
    try:
        wait_for(lambda: " ready." in log.read_text(errors="replace"), 120, what="curatore dev's worker to be ready")
        run = submit_run("scrape", {"start_url": site.url + "/", "max_depth": 1}, organization_id=org.id)
        wait_for(lambda: site.blocked("/p5"), 60, what="the crawl to reach /p5")
        os.kill(dev.pid, signal.SIGINT)  # Ctrl-C
        wait_for(lambda: "Warm shutdown" in log.read_text(errors="replace"), 30, what="the worker to stop warm")
        gate.set()
        assert dev.wait(timeout=60) == 0, log.read_text(errors="replace")[-3000:]
        stopped = _row(run.id)
        # handed back: pending, or already queued again (its message waits in the broker for the next worker)
        assert RunStatus(stopped.status) in (S.PENDING, S.SUBMITTED), (stopped.status,
                                                                       [e.message for e in _events(run.id)])
        assert _events(run.id, "handed_back")

        dev = _start_dev(sqlite_backend, port, log)
        done = _ended(run.id)
    finally:
        gate.set()
        stop_group(dev, signal.SIGTERM, 15)

    assert RunStatus(done.status) is S.COMPLETED, done.error_message
    assert len(_events(run.id, "complete")) == 1
    assert not _events(run.id, "stale", "redelivered", "transition_refused", "timed_out")
    assert "WorkerLostError" not in log.read_text(errors="replace")
    urls = [x.external_id for x in _live_assets(f"scrape-{run.id}")]
    assert len(urls) == len(set(urls)) == PAGES + 1


@pytest.mark.timeout(120)
def test_a_job_that_does_not_stop_within_the_grace_is_handed_back_by_the_main_process(sqlite_backend: Backend,
                                                                                      tmp_path: Path) -> None:
    """``q_busy`` never calls ``check_cancelled()``: after ``CURATORE_SHUTDOWN_GRACE_SECONDS`` the worker's main
    process hands its run back and ends its pool process; nothing writes after that."""
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_run

    sqlite_backend.extend({"CURATORE_JOB_MODULES": '["tests.jobs_for_queues"]', "PYTHONPATH": str(ROOT),
                           "CURATORE_SHUTDOWN_GRACE_SECONDS": "1"})
    org = ensure_org("grace", "Grace")
    out = tmp_path / "side-effects.txt"
    lines = lambda: len(out.read_text().splitlines()) if out.exists() else 0  # noqa: E731
    w = WorkerProcess(sqlite_backend, tmp_path / "w.log", concurrency=1, queues="default")
    try:
        w.wait_ready()
        run = submit_run("q_busy", {"out": str(out), "seconds": 60}, organization_id=org.id)
        wait_for(lambda: lines() > 5, 60, what="the job to write")
        pool = _pool(w)
        os.killpg(w.proc.pid, signal.SIGTERM)
        assert w.proc.wait(timeout=60) == 0, w.output()[-3000:]
        stopped = _row(run.id)
        settled = lines()
    finally:
        w.stop()
    assert RunStatus(stopped.status) in (S.PENDING, S.SUBMITTED), stopped.status  # back in the queue
    (line,) = _events(run.id, "handed_back")
    assert "had not stopped within the 1 s grace" in line.message and _node(w) in line.message
    assert not _events(run.id, "stale", "redelivered")
    # the process that wrote was ended before the worker exited (it ignores SIGTERM: it is not left behind)
    assert pool and not any(_alive(pid) for pid in pool)
    assert lines() == settled
