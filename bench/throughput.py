"""Engine throughput against bare Celery on the same broker, pool and concurrency.

    .venv/bin/python -m bench.throughput [--runs 600] [--concurrency 2] [--modes pg,embedded]

For each mode (PostgreSQL + Redis; the embedded default: SQLite + the SQLite broker) it measures, in one run:

- **engine**: ``--runs`` no-op runs submitted with ``submit_run`` from this process, executed by a real
  ``curatore worker -c N``; runs/s from the first submit until the last run is ``completed``, the submit
  cost per run, and the CPU time per run of each process involved (this one, the worker's main and pool
  processes, the database's backends, redis-server: from /proc);
- **bare Celery**: the same number of no-op tasks sent with ``send_task`` to a plain Celery app on the same
  broker URL and kombu transport as the engine, with the same settings (prefork, ``-c N``, ``acks_late``,
  prefetch 1); tasks/s until the last one ran (each appends a line to a file); also on kombu's own
  transport, as a plain Celery install has it (on Redis the engine's gives every publish and acknowledgement one
  client less to build, bare Celery's too; on SQLite kombu's polls every second, the engine's as soon as a task
  ends);
- **statements per run**: SQL statements and transactions of one run's life, counted in this process by
  submitting a run and executing it here (``backend.worker.base.execute``, no Celery in between);
- **submit alone**: ``submit_run`` with no worker beside it, and ``submit_many`` per run (a batch of 500).

It prints one table per mode with the ratio engine / bare, and writes nothing outside temporary folders and
a throw-away PostgreSQL database. The worker queue's limit is raised for the benchmark so that the limit
does not bound the comparison (bare Celery has none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.conftest import reset_process_state
from tests.processes import ROOT, stop_group

PG_ADMIN_URL = os.environ.get("CURATORE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CURATORE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
QUEUE = "default"


# --------------------------------------------------------------------------- environments


@contextlib.contextmanager
def environment(mode: str, data_dir: Path) -> Iterator[dict[str, str]]:
    """The CURATORE_* variables of one mode, with its database created and migrated (dropped afterwards)."""
    overrides = data_dir / "overrides.json"
    overrides.write_text(json.dumps({"queues": {QUEUE: {"max_concurrency": 10_000}}}))
    env = {
        "CURATORE_ENV": "test",
        "CURATORE_DATA_DIR": str(data_dir),
        "CURATORE_JOB_MODULES": '["bench.jobs"]',
        "CURATORE_REGISTRY_OVERRIDES": str(overrides),
        "PYTHONPATH": str(ROOT),
    }
    dbname = None
    if mode == "pg":
        import psycopg

        dbname = f"curatore_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        env |= {"CURATORE_DATABASE_URL": f"{base}/{dbname}", "CURATORE_BROKER_URL": REDIS_URL,
                "CURATORE_REDIS_URL": REDIS_URL, "CURATORE_BROKER_KEY_PREFIX": f"bench-{uuid.uuid4().hex[:6]}:"}
    else:
        env |= {"CURATORE_DATABASE_URL": f"sqlite:///{data_dir / 'curatore.db'}",
                "CURATORE_BROKER_URL": f"curatore-sqla+sqlite:///{data_dir / 'broker.db'}"}
    saved = {k: os.environ.get(k) for k in [*env, "CURATORE_REDIS_URL", "CURATORE_BROKER_KEY_PREFIX"]}
    if mode != "pg":
        os.environ.pop("CURATORE_REDIS_URL", None)
        os.environ.pop("CURATORE_BROKER_KEY_PREFIX", None)
    os.environ.update(env)
    reset_process_state()
    try:
        from backend.db.migrate import upgrade

        upgrade()
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_process_state()
        if mode == "pg":  # the messages left in the broker (bulk_submit's) go with the database
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(f"{env['CURATORE_BROKER_KEY_PREFIX']}*"):
                client.delete(key)
        if dbname:
            import psycopg

            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CURATORE_")} | env | {"PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait(what: str, done: Any, target: int, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    """Poll ``done()`` until it reaches ``target``; returns the time it did (perf_counter)."""
    deadline = time.monotonic() + timeout
    while (count := done()) < target:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {count} of {target} done:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.01)
    return time.perf_counter()


# --------------------------------------------------------------------------- where the CPU goes

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone, or where there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _HZ
    except (OSError, IndexError, ValueError):
        return 0.0


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process (empty where there is no /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            found.append((int(entry.name), parent, (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, IndexError, ValueError):
            continue
    return found


def cpu_snapshot(worker_pid: int, database: str | None) -> dict[str, float]:
    """CPU seconds used so far by this process (the submitter), the worker's main process, its pool processes,
    the PostgreSQL backends of ``database`` and redis-server (which other users of it share)."""
    snapshot = {"submitter": _cpu_seconds(os.getpid()), "worker main": _cpu_seconds(worker_pid),
                "worker pool": 0.0, "postgres": 0.0, "redis": 0.0}
    for pid, parent, cmdline in _processes():
        if parent == worker_pid:
            snapshot["worker pool"] += _cpu_seconds(pid)
        elif database and cmdline.startswith("postgres:") and f" {database} " in cmdline:
            snapshot["postgres"] += _cpu_seconds(pid)
        elif "redis-server" in cmdline:
            snapshot["redis"] += _cpu_seconds(pid)
    return snapshot


# --------------------------------------------------------------------------- the engine


def engine_rate(env: dict[str, str], runs: int, concurrency: int, data_dir: Path) -> dict[str, float]:
    from sqlalchemy import func, select

    from backend.auth.orgs import ensure_org
    from backend.db.engine import in_transaction
    from backend.db.models import Run
    from backend.db.states import RunStatus
    from backend.queues.dispatch import submit_run

    org = ensure_org("bench", "Bench")
    log = data_dir / "worker.log"
    worker = _spawn([sys.executable, "-m", "backend.cli", "worker", "-c", str(concurrency), "-Q", QUEUE,
                     "-n", f"bench-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "warning"], env, log)
    count = select(func.count()).select_from(Run).where(Run.status == RunStatus.COMPLETED)

    def completed() -> int:
        return in_transaction(lambda s: s.execute(count).scalar_one(), read_only=True)

    try:
        base = completed()
        for _ in range(concurrency):  # warm-up: the worker is up and its pool processes have run once
            submit_run("bench_noop", {}, organization_id=org.id)
        _wait("engine warm-up", lambda: completed() - base, concurrency, worker, log, 120)
        base = completed()
        submit_times = []
        database = env.get("CURATORE_DATABASE_URL", "").rsplit("/", 1)[-1] if "postgresql" in \
            env.get("CURATORE_DATABASE_URL", "") else None
        cpu_before = cpu_snapshot(worker.pid, database)
        started = time.perf_counter()
        for _ in range(runs):
            t0 = time.perf_counter()
            submit_run("bench_noop", {}, organization_id=org.id)
            submit_times.append(time.perf_counter() - t0)
        submitted = time.perf_counter()
        ended = _wait("engine", lambda: completed() - base, runs, worker, log, 600)
        cpu_after = cpu_snapshot(worker.pid, database)
    finally:
        stop_group(worker, signal.SIGQUIT, 15)
    return {"rate": runs / (ended - started), "submit_ms": statistics.mean(submit_times) * 1000,
            "submit_p95_ms": sorted(submit_times)[int(len(submit_times) * 0.95)] * 1000,
            "submit_phase_s": submitted - started,
            "cpu_ms_per_run": {k: (cpu_after[k] - cpu_before[k]) * 1000 / runs for k in cpu_after}}


# --------------------------------------------------------------------------- bare Celery


def bare_rate(env: dict[str, str], runs: int, concurrency: int, data_dir: Path, stock: bool = False) -> dict[str, float]:
    """Bare Celery's no-op tasks/s, on the engine's kombu transport (``stock``: on kombu's own)."""
    from bench.bare_celery import STOCK

    out = data_dir / f"bare-done{'-stock' if stock else ''}.txt"
    out.touch()
    bare_env = env | {"CURATORE_BENCH_BARE_OUT": str(out)} | ({STOCK: "1"} if stock else {})
    log = data_dir / f"bare{'-stock' if stock else ''}.log"
    worker = _spawn([sys.executable, "-m", "celery", "-A", "bench.bare_celery", "worker", "-c", str(concurrency),
                     "-Q", "bare", "-n", f"bare-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "warning"], bare_env, log)
    os.environ["CURATORE_BENCH_BARE_OUT"] = str(out)

    def done() -> int:
        return out.read_bytes().count(b"\n")

    from bench.bare_celery import make_app

    app = make_app(stock)
    try:
        for n in range(concurrency):  # warm-up, as for the engine
            app.send_task("bench.noop", args=[-n - 1], queue="bare")
        _wait("bare warm-up", done, concurrency, worker, log, 120)
        cpu_before = cpu_snapshot(worker.pid, None)
        started = time.perf_counter()
        for n in range(runs):
            app.send_task("bench.noop", args=[n], queue="bare")
        ended = _wait("bare Celery", lambda: done() - concurrency, runs, worker, log, 600)
        cpu_after = cpu_snapshot(worker.pid, None)
    finally:
        stop_group(worker, signal.SIGQUIT, 15)
        app.close()
    return {"rate": runs / (ended - started),
            "cpu_ms_per_run": {k: (cpu_after[k] - cpu_before[k]) * 1000 / runs for k in cpu_after}}


# --------------------------------------------------------------------------- statements per run


def statements_per_run(samples: int = 20) -> dict[str, float]:
    """SQL statements and transactions to submit one run and to execute it (start, complete, the slot freed),
    counted on this process's engine, the executor a no-op and the broker publish included."""
    from sqlalchemy import event

    from backend.auth.orgs import ensure_org
    from backend.db.engine import get_engine, in_transaction
    from backend.db.models import Run
    from backend.queues.dispatch import submit_run
    from backend.worker.base import execute

    org = ensure_org("bench", "Bench")
    engine = get_engine()
    counts = {"statements": 0, "commits": 0}

    def on_execute(conn: Any, *_: Any) -> None:
        counts["statements"] += 1
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":  # a statement alone: committed
            counts["commits"] += 1

    def on_commit(*_: Any) -> None:
        counts["commits"] += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)
    submit = {"statements": [], "commits": []}
    run = {"statements": [], "commits": []}
    try:
        for _ in range(samples):
            before = dict(counts)
            created = submit_run("bench_noop", {}, organization_id=org.id)
            for key in counts:
                submit[key].append(counts[key] - before[key])
            attempt = in_transaction(lambda s: s.get(Run, created.id).dispatch_attempt)
            before = dict(counts)
            execute(str(created.id), attempt, "bench_noop", "bench-in-process")
            for key in counts:
                run[key].append(counts[key] - before[key])
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)
    return {"submit_statements": statistics.mean(submit["statements"]),
            "submit_transactions": statistics.mean(submit["commits"]),
            "execute_statements": statistics.mean(run["statements"]),
            "execute_transactions": statistics.mean(run["commits"])}


def submit_alone(runs: int = 200) -> dict[str, float]:
    """``submit_run`` with no worker running beside it (its runs stay submitted: measured last, like
    :func:`bulk_submit`): what a submit costs on its own, where the engine rate's submits share the CPU."""
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_run

    org = ensure_org("bench", "Bench")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        submit_run("bench_noop", {}, organization_id=org.id)
        times.append(time.perf_counter() - t0)
    return {"submit_alone_ms": statistics.mean(times) * 1000,
            "submit_alone_p95_ms": sorted(times)[int(len(times) * 0.95)] * 1000}


def bulk_submit(runs: int = 500) -> dict[str, float]:
    """``submit_many`` of ``runs`` no-op runs in one batch (created, claimed and published; no worker)."""
    from backend.auth.orgs import ensure_org
    from backend.queues.dispatch import submit_many

    org = ensure_org("bench", "Bench")
    started = time.perf_counter()
    submit_many([("bench_noop", {}, {"organization_id": org.id})] * runs, batch=runs)
    return {"bulk_submit_ms": (time.perf_counter() - started) * 1000 / runs}


# --------------------------------------------------------------------------- report


def measure(mode: str, runs: int, concurrency: int) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-throughput-{mode}-"))
    with environment(mode, data_dir) as env:
        statements = statements_per_run()
        engine = engine_rate(env, runs, concurrency, data_dir)
        bare = bare_rate(env, runs, concurrency, data_dir)
        stock = bare_rate(env, runs, concurrency, data_dir, stock=True)
        statements |= submit_alone() | bulk_submit()  # last: their messages are never consumed
    return {"mode": mode, "runs": runs, "concurrency": concurrency, "engine": engine, "bare": bare,
            "bare_stock": stock, "statements": statements, "ratio": engine["rate"] / bare["rate"],
            "ratio_stock": engine["rate"] / stock["rate"] if stock else None}


def print_report(result: dict[str, Any]) -> None:
    e, b, s = result["engine"], result["bare"], result["statements"]
    label = {"pg": "PostgreSQL + Redis", "embedded": "embedded (SQLite + SQLite broker)"}[result["mode"]]
    print(f"\n{label}: {result['runs']} no-op runs, worker -c {result['concurrency']}")
    print(f"  {'engine runs/s':<34}{e['rate']:>10.1f}")
    print(f"  {'bare Celery tasks/s':<34}{b['rate']:>10.1f}")
    print(f"  {'ratio engine / bare':<34}{result['ratio']:>10.2f}x")
    if result.get("bare_stock"):
        print(f"  {'bare Celery, kombu transport':<34}{result['bare_stock']['rate']:>10.1f}")
        print(f"  {'ratio engine / bare (kombu)':<34}{result['ratio_stock']:>10.2f}x")
    print(f"  {'submit_run mean / p95 (ms)':<34}{e['submit_ms']:>10.2f} / {e['submit_p95_ms']:.2f}")
    print(f"  {'submit_run alone mean / p95 (ms)':<34}{s['submit_alone_ms']:>10.2f} / {s['submit_alone_p95_ms']:.2f}")
    print(f"  {'submit_many per run (ms)':<34}{s['bulk_submit_ms']:>10.2f}")
    print(f"  {'statements / transactions: submit':<34}{s['submit_statements']:>10.1f} / "
          f"{s['submit_transactions']:.1f}")
    print(f"  {'statements / transactions: execute':<34}{s['execute_statements']:>10.1f} / "
          f"{s['execute_transactions']:.1f}")
    for label, side in (("CPU ms per run", e), ("CPU ms per bare task", b)):
        cpu = side.get("cpu_ms_per_run") or {}
        if any(cpu.values()):
            parts = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v or k != "postgres")
            print(f"  {label:<34}{sum(cpu.values()):>10.2f}  ({parts})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--embedded-runs", type=int, default=None, help="runs in embedded mode (default: --runs / 3)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--modes", default="pg,embedded")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    results = []
    for mode in args.modes.split(","):
        runs = args.runs if mode == "pg" else (args.embedded_runs or max(args.runs // 3, 1))
        result = measure(mode, runs, args.concurrency)
        print_report(result)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
