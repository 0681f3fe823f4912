"""Live jobs lists under many watchers: K websocket clients on ``/system/jobs`` while runs finish.

    .venv/bin/python -m bench.fanout [--runs 1000000] [--clients 1,20,100] [--rate 5] [--seconds 30]

On PostgreSQL + Redis (a throw-away database), with ``--runs`` finished runs over 50 organizations already in
it, a real worker (``-c 2``) and the app (``curatore dev``'s production UI process), for each K in
``--clients``: K clients speaking Reflex's protocol (``tests/reflex_client.py``: the compiled frontend's
connect + hydrate, then every pushed delta) watch the all-organizations jobs list while ``--rate`` no-op runs
per second are submitted and finish, for ``--seconds``. Then it prints, per K and as a ratio to K = 1:

- **delivery**: p50 / p95 from a run's ``completed_at`` to the moment each client's list showed it completed;
- **missed**: (client, run) pairs where the run completed on the first page and the client never saw it;
- **db xact/s, rows/s**: PostgreSQL's transactions and rows read per second (``pg_stat_database``) during
  the window, for everything (engine, worker and UI);
- **ui cpu**: CPU seconds per second of the UI process group;
- **pending wait**: p50 / p95 of ``started_at - created_at`` of the submitted runs (the engine's own speed,
  which watchers must not slow down).

``bench/live_latency.py`` measures one real browser's progress latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.throughput import _spawn, environment
from tests.processes import UIProcess, free_port, stop_group
from tests.reflex_client import ReflexClient, sign_in

LIST_STATE = "curatore_ui.pages.jobs_list_state.JobsListState"
ADMIN = ("bench@bench.local", "a-bench-password")
ORGS = 50


def fill(total: int, orgs: int = ORGS) -> None:
    """``total`` finished runs over ``orgs`` organizations, written by the database itself."""
    try:
        from bench.lists import fill as fill_lists  # the lists benchmark's fill, when it keeps counters too
    except ImportError:
        fill_lists = None
    if fill_lists is not None:
        fill_lists(total, orgs)
        _end_unfinished()
        return
    from sqlalchemy import text

    from backend.auth.orgs import ensure_org
    from backend.db.engine import in_transaction

    ids = [str(ensure_org(f"org-{n:02d}", f"Organization {n}").id) for n in range(orgs)]

    def write(session: Any) -> None:
        session.execute(text("""
            INSERT INTO runs (id, organization_id, run_type, origin, status, priority, queue, display_name, config,
                              progress, input_asset_ids, created_at, started_at, completed_at, last_activity_at,
                              dispatch_attempt, is_group_parent, attempt, trace_id)
            SELECT gen_random_uuid(), (CAST(:ids AS uuid[]))[1 + i % :orgs], 'bench_noop', 'user',
                   CASE WHEN i % 10 = 0 THEN 'failed' ELSE 'completed' END, 2, 'default', 'run ' || i, '{}'::jsonb,
                   '{}'::jsonb, '[]'::jsonb, now() - make_interval(secs => i + 3600), now() - make_interval(secs => i + 3599),
                   now() - make_interval(secs => i + 3598), now() - make_interval(secs => i + 3598), 1, false, 1, md5(i::text)
            FROM generate_series(1, :total) AS i"""), {"ids": ids, "orgs": orgs, "total": total})
        session.execute(text("ANALYZE runs"))

    in_transaction(write)


def _end_unfinished() -> None:
    """The filled runs that are not finished end ``cancelled``: the worker and the sweep would otherwise work
    through them during the measurement (the counters follow, through their triggers)."""
    from sqlalchemy import text

    from backend.db.engine import in_transaction

    in_transaction(lambda s: s.execute(text(
        "UPDATE runs SET status = 'cancelled', completed_at = created_at + interval '3 seconds', "
        "lease_expires_at = NULL WHERE status IN ('pending', 'submitted', 'running', 'cancelling', 'stale')")))


def _db_counters() -> tuple[int, int]:
    from sqlalchemy import text

    from backend.db.engine import in_transaction

    row = in_transaction(lambda s: s.execute(text(
        "SELECT xact_commit + xact_rollback, tup_returned + tup_fetched FROM pg_stat_database "
        "WHERE datname = current_database()")).one(), read_only=True)
    return int(row[0]), int(row[1])


def _cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every process in the group."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 of stat (pgrp), counted after the ")"
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _seen_completed(client: ReflexClient, run_ids: set[str]) -> dict[str, float]:
    """When each run first showed as completed in the client's list."""
    from tests.reflex_client import substate

    key, seen = substate(LIST_STATE), {}
    for update in client.updates:
        for row in (update.delta.get(key) or {}).get("rows_rx_state_") or []:
            if row["id"] in run_ids and row["status"] == "completed" and row["id"] not in seen:
                seen[row["id"]] = update.at
    return seen


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


async def _window(ui: UIProcess, cookie: str, k: int, rate: float, seconds: float, org_id: uuid.UUID) -> dict[str, Any]:
    from sqlalchemy import select

    from backend.db.engine import in_transaction
    from backend.db.models import Run
    from backend.queues.dispatch import submit_run

    clients = [ReflexClient(ui.url, "/system/jobs", cookie) for _ in range(k)]
    for i in range(0, k, 20):  # connect in waves, as browsers would not all arrive in one millisecond
        await asyncio.gather(*[c.connect() for c in clients[i:i + 20]])
    await asyncio.gather(*[c.wait_for(lambda c: c.var(LIST_STATE, "tabs"), 60) for c in clients])  # loaded
    await asyncio.sleep(1.0)
    xact0, rows0 = await asyncio.to_thread(_db_counters)
    cpu0, t0 = _cpu_seconds(ui.proc.pid), time.monotonic()  # type: ignore[union-attr]
    run_ids: list[str] = []
    deadline = t0 + seconds
    next_at = t0
    while time.monotonic() < deadline:
        run = await asyncio.to_thread(submit_run, "bench_noop", {}, organization_id=org_id)
        run_ids.append(str(run.id))
        next_at += 1.0 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    wall = time.monotonic() - t0
    xact1, rows1 = await asyncio.to_thread(_db_counters)
    cpu1 = _cpu_seconds(ui.proc.pid)  # type: ignore[union-attr]
    await asyncio.sleep(5.0)  # let the last runs finish and reach every client

    def read_runs(session: Any) -> list[Run]:
        return list(session.exec(select(Run).where(Run.id.in_([uuid.UUID(r) for r in run_ids]))).scalars())

    runs = await asyncio.to_thread(in_transaction, read_runs, read_only=True)
    completed = {str(r.id): r for r in runs if r.completed_at is not None and r.status == "completed"}
    latencies, missed = [], 0
    for client in clients:
        seen = _seen_completed(client, set(completed))
        for run_id, run in completed.items():
            if run_id in seen:
                latencies.append(seen[run_id] - _epoch(run.completed_at))
            else:
                missed += 1
    waits = [(r.started_at - r.created_at).total_seconds() for r in runs if r.started_at]
    await asyncio.gather(*[c.disconnect() for c in clients], return_exceptions=True)
    return {"k": k, "runs": len(run_ids), "seen": len(latencies), "completed": len(completed), "p50": _pct(latencies, 0.5),
            "p95": _pct(latencies, 0.95), "missed": missed, "xact_s": (xact1 - xact0) / wall,
            "rows_s": (rows1 - rows0) / wall, "cpu": (cpu1 - cpu0) / wall, "wait_p50": _pct(waits, 0.5),
            "wait_p95": _pct(waits, 0.95), "updates": sum(len(c.updates) for c in clients) / max(1, k)}


def _epoch(value: datetime | None) -> float:
    assert value is not None
    return value.timestamp()


def _create_admin() -> uuid.UUID:
    from backend.auth.orgs import ensure_org
    from backend.auth.users import create_user

    create_user(*ADMIN, system_admin=True)
    return ensure_org("bench", "Bench").id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000, help="finished runs in the database first")
    parser.add_argument("--clients", default="1,20,100", help="watcher counts, comma-separated")
    parser.add_argument("--rate", type=float, default=5.0, help="runs submitted (and finishing) per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of an unmeasured first window")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.clients.split(",") if k.strip()]
    data_dir = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    with environment("pg", data_dir) as env:
        t = time.monotonic()
        fill(args.runs)
        print(f"filled {args.runs:,} runs in {time.monotonic() - t:.1f} s", flush=True)
        org_id = _create_admin()
        env = env | {"CURATORE_LIVE_POLL_SECONDS": "0.5"}
        worker = _spawn([sys.executable, "-m", "backend.cli", "worker", "-c", "2", "-Q", "default", "-n",
                         f"fanout-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "warning"], env, data_dir / "worker.log")
        ui = UIProcess(env, free_port(), data_dir / "ui.log")
        try:
            ui.start()
            cookie = sign_in(ui.url, *ADMIN)
            if args.warmup > 0:  # the worker's and the app's first runs (connections, imports) are not measured
                asyncio.run(_window(ui, cookie, 1, args.rate, args.warmup, org_id))
            results = [asyncio.run(_window(ui, cookie, k, args.rate, args.seconds, org_id)) for k in ks]
        finally:
            ui.stop()
            stop_group(worker, 15, 15)
    print_report(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def print_report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    base = results[0]
    print(f"\nlive jobs list, {args.runs:,} runs in the database, {args.rate:g} runs/s finishing, "
          f"{args.seconds:g} s per window (PostgreSQL + Redis)")
    head = (f"{'clients':>7} {'runs':>5} {'p50 ms':>8} {'p95 ms':>8} {'missed':>6} {'db xact/s':>10} {'x':>5} "
            f"{'rows/s':>10} {'x':>5} {'ui cpu':>6} {'wait p50':>9} {'wait p95':>9} {'pushes':>7}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['k']:>7} {r['completed']:>5} {r['p50'] * 1000:>8.0f} {r['p95'] * 1000:>8.0f} {r['missed']:>6} "
              f"{r['xact_s']:>10.0f} {r['xact_s'] / base['xact_s']:>5.2f} {r['rows_s']:>10.0f} "
              f"{r['rows_s'] / max(1.0, base['rows_s']):>5.2f} {r['cpu']:>6.2f} {r['wait_p50'] * 1000:>7.0f}ms "
              f"{r['wait_p95'] * 1000:>7.0f}ms {r['updates']:>7.0f}")


if __name__ == "__main__":
    sys.exit(main())
