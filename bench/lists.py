"""Every query the jobs page makes, timed over a large database: p50 / p95, for all organizations and for one.

    .venv/bin/python -m bench.lists [--runs 1000000] [--orgs 50] [--repeat 30] [--keep] [--json FILE]

It fills a PostgreSQL database of its own (``curatore_bench_lists`` by default; never the tests' ones) with
``--runs`` runs over ``--orgs`` organizations in one ``INSERT … SELECT FROM generate_series`` per chunk (the
counters' triggers off during the load, then :func:`backend.runs.counters.rebuild` and ``ANALYZE``), or reuses
it with ``--keep`` when it already holds that many. Runs are spread over 90 days: mostly ended, a few thousand
queued or running, every type, origin and priority, names and configs with words to search for.

Then, for each query the page makes (a page of each filter, sort and status card, the next page, search, type
tab counts, status cards), it runs it ``--repeat`` times and prints p50 / p95 in milliseconds with a summary of
its PostgreSQL plan (each plan node on ``runs`` and the index it uses; ``SEQ SCAN`` and a ``Sort`` over a
scan without an index condition are flagged). The table ends with the worst p95 against the 25 ms target.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

PG_ADMIN_URL = os.environ.get("CURATORE_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TARGET_MS = 25.0
CHUNK = 100_000

# Status mix of the load: (status, share); ended runs end within 10 minutes of their creation.
STATUS_MIX = [("completed", 0.86), ("failed", 0.06), ("timed_out", 0.01), ("cancelled", 0.062), ("pending", 0.003),
              ("submitted", 0.001), ("running", 0.002), ("cancelling", 0.0005), ("stale", 0.0005)]
ORIGIN_MIX = [("user", 0.5), ("scheduled", 0.25), ("system", 0.1), ("group", 0.1), ("event", 0.03), ("webhook", 0.02)]


def _case(mix: list[tuple[str, float]], draw: str) -> str:
    """SQL picking a value of ``mix`` by the random number ``draw`` (0..1)."""
    parts, edge = [], 0.0
    for value, share in mix[:-1]:
        edge += share
        parts.append(f"WHEN {draw} < {edge:.6f} THEN '{value}'")
    return f"CASE {' '.join(parts)} ELSE '{mix[-1][0]}' END"


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def _url(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def prepare(dbname: str, keep: bool) -> str:
    """Point the process at ``dbname`` (created and migrated unless ``keep`` and it exists); returns its URL."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is not None
    if exists and not keep:
        _admin(f'DROP DATABASE "{dbname}" WITH (FORCE)')
    if not exists or not keep:
        _admin(f'CREATE DATABASE "{dbname}"')
    url = _url(dbname)
    os.environ.update({"CURATORE_DATABASE_URL": url, "CURATORE_ENV": "test"})
    os.environ.pop("CURATORE_REDIS_URL", None)
    _reset()
    from backend.db.migrate import upgrade

    upgrade(url)
    return url


def _reset() -> None:
    from backend.config import reset_settings
    from backend.db.engine import dispose_engines
    from backend.jobtypes.registry import reset_registry

    reset_settings()
    reset_registry()
    dispose_engines()


def fill(runs: int, orgs: int, seed: float = 0.42) -> list[uuid.UUID]:
    """``runs`` runs over ``orgs`` organizations (``org-00``…), added to what is there; returns the org ids."""
    from sqlalchemy import text

    from backend.auth.orgs import ensure_org
    from backend.db.engine import in_transaction
    from backend.jobtypes.registry import get_registry
    from backend.runs import counters

    org_ids = [ensure_org(f"org-{i:02d}", f"Organization {i}").id for i in range(orgs)]
    registry = get_registry()
    names = []  # every key, and the aliases too (stored as given)
    for job_type in registry.types.values():
        names.append((job_type.key, job_type.queue, job_type.label))
        names += [(alias, job_type.queue, job_type.label) for alias in job_type.aliases[:1]]
    types_sql = "ARRAY[" + ", ".join(f"'{n}'" for n, _, _ in names) + "]"
    queues_sql = "ARRAY[" + ", ".join(f"'{q}'" for _, q, _ in names) + "]"
    labels_sql = "ARRAY[" + ", ".join("'" + lbl.replace("'", "''") + "'" for _, _, lbl in names) + "]"
    orgs_sql = "ARRAY[" + ", ".join(f"'{o}'::uuid" for o in org_ids) + "]"
    words = "ARRAY['annual report', 'contract', 'invoice', 'proposal', 'minutes', 'budget', 'roadmap', 'survey']"
    status = _case(STATUS_MIX, "r.s")
    origin = _case(ORIGIN_MIX, "r.o")
    ended = "('completed', 'failed', 'timed_out', 'cancelled')"
    sql = f"""
    INSERT INTO runs (id, organization_id, run_type, origin, status, priority, queue, display_name, config, progress,
                      input_asset_ids, created_at, submitted_at, started_at, completed_at, last_activity_at,
                      dispatch_attempt, is_group_parent, attempt, trace_id, error_message)
    SELECT gen_random_uuid(), ({orgs_sql})[1 + (g % {len(org_ids)})], ({types_sql})[r.t], {origin}, x.status,
           CASE WHEN r.p < 0.7 THEN 2 ELSE floor(r.p * 100)::int % 5 END, ({queues_sql})[r.t],
           ({labels_sql})[r.t] || ' of ' || ({words})[1 + (g % 8)] || ' ' || g,
           jsonb_build_object('asset_id', md5(g::text), 'folder', ({words})[1 + (g / 7 % 8)], 'n', g),
           '{{"current": 0, "total": null, "unit": null, "percent": null, "phase": null, "current_item": null,
             "extra": {{}}}}'::jsonb,
           '[]'::jsonb, x.created, x.created + interval '1 second',
           CASE WHEN x.status IN ('pending', 'submitted') THEN NULL ELSE x.created + interval '2 seconds' END,
           CASE WHEN x.status IN {ended} THEN x.created + (2 + r.d * 600) * interval '1 second' END,
           x.created, 1, false, 1, md5((g + 1)::text), CASE WHEN x.status = 'failed' THEN 'boom' END
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS g,
         LATERAL (SELECT random() AS s, random() AS o, random() AS p, random() AS d,
                         1 + floor(random() * {len(names)})::int AS t, random() AS c, g AS gg) AS r,
         LATERAL (SELECT {status} AS status,
                         now() - (CASE WHEN {status} IN {ended} THEN r.c * 90 * 86400 + 900 ELSE r.c * 3600 END)
                               * interval '1 second' AS created) AS x
    """
    def load(s: Any) -> None:
        s.execute(text("SELECT setseed(:seed)"), {"seed": seed})
        s.execute(text("ALTER TABLE runs DISABLE TRIGGER USER"))
        done = 0
        while done < runs:
            n = min(CHUNK, runs - done)
            s.execute(text(sql), {"lo": done + 1, "hi": done + n})
            done += n
        s.execute(text("ALTER TABLE runs ENABLE TRIGGER USER"))
        s.execute(text(f"INSERT INTO run_search (run_id, body) SELECT id, {_search_text()} FROM runs "
                       "ON CONFLICT (run_id) DO NOTHING"))

    in_transaction(load)
    counters.rebuild()
    from backend.db.engine import get_engine

    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE runs")
    return org_ids


def _search_text() -> str:
    """The searchable-text expression of migration 0012 (the search trigger's), over ``runs``' own columns."""
    import importlib.util

    from backend.db.migrate import MIGRATIONS

    path = next((MIGRATIONS / "versions").glob("0012_*.py"))
    spec = importlib.util.spec_from_file_location("migration_0012", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return str(module.SEARCH_TEXT).replace("NEW.", "")


def count_runs() -> int:
    from sqlalchemy import func, select

    from backend.db.engine import in_transaction
    from backend.db.models import Run

    return int(in_transaction(lambda s: s.execute(select(func.count()).select_from(Run)).scalar_one()))


# --------------------------------------------------------------------------- the page's queries


@dataclass
class Query:
    name: str
    call: Callable[[], Any]


def page_queries(org_id: uuid.UUID | None, id_prefix: str = "5e1f0c") -> list[Query]:
    """What ``curatore_ui/pages/jobs_list_state.py`` asks for one scope, filter by filter."""
    from backend import list_sort
    from backend.db.states import RunOrigin, RunStatus
    from backend.db.types import utcnow
    from backend.runs import listing

    S = RunStatus
    base = listing.ListQuery(organization_id=org_id)

    def q(**kw: Any) -> listing.ListQuery:
        return listing.ListQuery(organization_id=org_id, **kw)

    def second_page() -> Any:
        first = listing.page(base, None, 25)
        return listing.page(base, first.next_cursor, 25)

    week_end = utcnow() - timedelta(days=30)
    queries = [
        Query("page: newest first", lambda: listing.page(base, None, 25)),
        Query("page: next page", second_page),
        Query("page: type extraction (+ aliases)", lambda: listing.page(q(run_types=("extraction",)), None, 25)),
        Query("page: type forecast_sync", lambda: listing.page(q(run_types=("forecast_sync",)), None, 25)),
        Query("page: status pending", lambda: listing.page(q(statuses=(S.PENDING, S.SUBMITTED)), None, 25)),
        Query("page: status running", lambda: listing.page(q(statuses=(S.RUNNING, S.CANCELLING)), None, 25)),
        Query("page: status failed", lambda: listing.page(q(statuses=(S.FAILED, S.TIMED_OUT)), None, 25)),
        Query("page: status stale", lambda: listing.page(q(statuses=(S.STALE,)), None, 25)),
        Query("page: origin webhook", lambda: listing.page(q(origins=(RunOrigin.WEBHOOK,)), None, 25)),
        Query("page: created in one week", lambda: listing.page(
            q(created_from=week_end - timedelta(days=7), created_to=week_end), None, 25)),
        Query("page: type + status failed", lambda: listing.page(
            q(run_types=("extraction",), statuses=(S.FAILED, S.TIMED_OUT)), None, 25)),
        Query("page: priority sort", lambda: listing.page(q(sort="priority"), None, 25)),
        Query("page: search a word", lambda: listing.page(q(search="roadmap"), None, 25)),
        Query("page: search a rare name", lambda: listing.page(q(search="contract 77777"), None, 25)),
        Query("page: search an id prefix", lambda: listing.page(q(search=id_prefix), None, 25)),
        Query("sort: oldest first", lambda: list_sort.page(base, "created", False, None, 25)),
        Query("sort: type", lambda: list_sort.page(base, "type", False, None, 25)),
        Query("sort: status", lambda: list_sort.page(base, "status", False, None, 25)),
        Query("sort: duration", lambda: list_sort.page(base, "duration", True, None, 25)),
        Query("card: done 24 h", lambda: list_sort.page(q(statuses=(S.COMPLETED,)), "created", True, None, 25,
                                                        completed_since=utcnow() - timedelta(hours=24))),
        Query("card: failed 24 h", lambda: list_sort.page(q(statuses=(S.FAILED, S.TIMED_OUT)), "created", True,
                                                          None, 25, completed_since=utcnow() - timedelta(hours=24))),
        Query("type tab counts", lambda: listing.type_counts(base)),
        Query("type tab counts, status failed", lambda: listing.type_counts(q(statuses=(S.FAILED, S.TIMED_OUT)))),
        Query("status cards", lambda: listing.status_cards(org_id)),
    ]
    return queries


@contextmanager
def captured() -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements (with parameters) executed meanwhile."""
    from sqlalchemy import event

    from backend.db.engine import get_engine

    engine = get_engine()
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def plans(call: Callable[[], Any]) -> list[dict[str, Any]]:
    """The PostgreSQL plans (EXPLAIN, JSON) of the statements ``call`` runs that read ``runs``."""
    from backend.db.engine import get_engine

    with captured() as seen:
        call()
    out = []
    with get_engine().connect() as conn:
        for statement, parameters in seen:
            if " runs" not in statement:
                continue
            plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar_one()
            out.append(plan[0]["Plan"] if isinstance(plan, list) else json.loads(plan)[0]["Plan"])
    return out


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _unbounded(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The nodes below ``node`` that are not below a ``Limit`` (a scan under a Limit stops early)."""
    for child in node.get("Plans", []):
        if child["Node Type"] != "Limit":
            yield child
            yield from _unbounded(child)


def problems(plan: dict[str, Any]) -> list[str]:
    """What would make the plan's cost grow with the table: a sequential scan of ``runs``, or a sort whose input
    reads ``runs`` without an index condition and without a limit in between (a sort over every row)."""
    found = []
    for node in _nodes(plan):
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "runs":
            found.append("seq scan on runs")
        if node["Node Type"] == "Sort":
            scans = [n for n in _unbounded(node) if n.get("Relation Name") == "runs"]
            if any("Index Cond" not in n and "Recheck Cond" not in n and n["Node Type"] != "Bitmap Heap Scan"
                   for n in scans):
                found.append("sort over runs without an index condition")
    return found


def summary(plan: dict[str, Any]) -> str:
    """Plan nodes that touch ``runs``, with their index: ``Index Scan ix_runs_created``…"""
    parts = []
    for node in _nodes(plan):
        if node.get("Relation Name") == "runs" or node["Node Type"].startswith("Bitmap Index"):
            index = node.get("Index Name", "")
            parts.append(f"{node['Node Type']}{' ' + index if index else ''}")
        elif node["Node Type"] in ("Sort", "Merge Append", "Incremental Sort"):
            parts.append(node["Node Type"])
    return " > ".join(dict.fromkeys(parts)) or "(no runs)"


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, float]:
    call()  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]


def measure(org_ids: list[uuid.UUID], repeat: int) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from backend.db.engine import in_transaction
    from backend.db.models import Run

    results = []
    one = org_ids[len(org_ids) // 2]
    some_id = in_transaction(lambda s: s.execute(select(Run.id).where(Run.organization_id == one).limit(1))
                             .scalar_one_or_none())
    prefix = some_id.hex[:8] if some_id else "5e1f0c"  # the first 8 hex digits of a run's id, as one pastes it
    for scope, org_id in (("all", None), ("one org", one)):
        for query in page_queries(org_id, prefix):
            p50, p95 = timed(query.call, repeat)
            found = plans(query.call)
            results.append({"scope": scope, "query": query.name, "p50_ms": round(p50, 2), "p95_ms": round(p95, 2),
                            "plan": " | ".join(summary(p) for p in found),
                            "problems": sorted({x for p in found for x in problems(p)})})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--orgs", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--db", default="curatore_bench_lists")
    parser.add_argument("--keep", action="store_true", help="reuse the database if it already holds --runs runs")
    parser.add_argument("--drop", action="store_true", help="drop the database at the end")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    prepare(args.db, args.keep)
    from backend.auth.orgs import ensure_org

    have = count_runs()
    started = time.perf_counter()
    if have < args.runs:
        org_ids = fill(args.runs - have, args.orgs)
        print(f"filled {args.runs - have:,} runs over {args.orgs} organizations in "
              f"{time.perf_counter() - started:.1f} s")
    else:
        org_ids = [ensure_org(f"org-{i:02d}", f"Organization {i}").id for i in range(args.orgs)]
        print(f"reusing {have:,} runs in {args.db}")
    results = measure(org_ids, args.repeat)
    width = max(len(r["query"]) for r in results)
    print(f"\n{'scope':8} {'query':{width}} {'p50 ms':>8} {'p95 ms':>8}  plan")
    for r in results:
        flag = f"  !! {', '.join(r['problems'])}" if r["problems"] else ""
        print(f"{r['scope']:8} {r['query']:{width}} {r['p50_ms']:8.2f} {r['p95_ms']:8.2f}  {r['plan']}{flag}")
    worst = max(results, key=lambda r: r["p95_ms"])
    print(f"\nruns: {count_runs():,}; worst p95: {worst['p95_ms']:.2f} ms ({worst['scope']}, {worst['query']}); "
          f"target {TARGET_MS:.0f} ms; ratio worst / target {worst['p95_ms'] / TARGET_MS:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.drop:
        from backend.db.engine import dispose_engines

        dispose_engines()
        _admin(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
