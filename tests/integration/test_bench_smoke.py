"""The benchmarks still run: a small, untimed run of ``bench.throughput`` on both backends (speed is judged by
the benchmark's own ratios, in docs/benchmarks.md, never by a test)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import PG_ADMIN_URL, REDIS_URL, _pg_reachable, _redis_reachable, require
from tests.processes import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_throughput_bench_runs_on_both_backends(tmp_path: Path) -> None:
    require(_pg_reachable())
    require(_redis_reachable())
    out = tmp_path / "results.json"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CURATORE_BENCH_PG_ADMIN_URL": PG_ADMIN_URL,
           "CURATORE_BENCH_REDIS_URL": REDIS_URL.rsplit("/", 1)[0] + "/10"}
    result = subprocess.run([sys.executable, "-m", "bench.throughput", "--runs", "12", "--embedded-runs", "6",
                             "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ratio engine / bare" in result.stdout
    results = {r["mode"]: r for r in json.loads(out.read_text())}
    assert set(results) == {"pg", "embedded"}
    for r in results.values():
        assert r["engine"]["rate"] > 0 and r["bare"]["rate"] > 0
        assert r["statements"]["submit_transactions"] == 1  # create and dispatch in one transaction
        assert r["bare_stock"]["rate"] > 0  # bare Celery on kombu's own transport too (Redis, SQLAlchemy)


def test_the_fanout_bench_runs_and_no_watcher_misses_an_update(tmp_path: Path) -> None:
    """Three protocol clients on the live jobs list while runs finish: each sees every run complete."""
    require(_pg_reachable())
    require(_redis_reachable())
    out = tmp_path / "fanout.json"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CURATORE_BENCH_PG_ADMIN_URL": PG_ADMIN_URL,
           "CURATORE_BENCH_REDIS_URL": REDIS_URL.rsplit("/", 1)[0] + "/10", "HOME": str(Path.home())}
    result = subprocess.run([sys.executable, "-m", "bench.fanout", "--runs", "500", "--clients", "1,3",
                             "--seconds", "3", "--warmup", "1", "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "live jobs list" in result.stdout
    for r in json.loads(out.read_text()):
        assert r["completed"] > 0
        assert r["missed"] == 0, r
        assert r["seen"] == r["completed"] * r["k"]


def test_the_lists_bench_runs(tmp_path: Path) -> None:
    """``bench.lists`` on 2,000 runs in a database of its own (dropped at the end): every jobs-page query, for all
    organizations and one, with its plan."""
    require(_pg_reachable())
    out = tmp_path / "lists.json"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "CURATORE_BENCH_PG_ADMIN_URL": PG_ADMIN_URL}
    db = f"curatore_bench_lists_smoke_{uuid.uuid4().hex[:8]}"
    result = subprocess.run([sys.executable, "-m", "bench.lists", "--runs", "2000", "--orgs", "5", "--repeat", "2",
                             "--db", db, "--drop", "--json", str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "filled 2,000 runs over 5 organizations" in result.stdout and "worst p95" in result.stdout
    rows = json.loads(out.read_text())
    assert {r["scope"] for r in rows} == {"all", "one org"}
    assert all(r["p95_ms"] > 0 and r["plan"] for r in rows if not r["query"].startswith(("type tab", "status c")))
