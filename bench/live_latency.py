"""Live latency: from a worker's ``progress()`` call to the change in a real browser's DOM.

    .venv/bin/python -m bench.live_latency [--updates 200]

Runs the app (Reflex production build), a real worker and headless Chromium twice in one run: with Redis
wake-ups and with outbox polling only. Prints p50/p95/max per mode, the ratio between the modes and each
mode against its budget (p95 < 100 ms with Redis; < poll interval + 100 ms without).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.processes import ROOT, UIProcess, free_port

POLL_SECONDS = 0.5
OBSERVER = """
() => {
  window.__seen = [];
  const el = document.querySelector('[data-testid=progress-counter]');
  const record = () => { const m = el.innerText.match(/^([0-9,]+) \\//);
                         if (m) window.__seen.push([parseInt(m[1].replace(/,/g, '')), Date.now() / 1000]); };
  new MutationObserver(record).observe(el, {childList: true, subtree: true, characterData: true});
}
"""


def _env(data_dir: Path, redis_url: str | None) -> dict[str, str]:
    env = {
        "CURATORE_ENV": "test",
        "CURATORE_DATA_DIR": str(data_dir),
        "CURATORE_JOB_MODULES": '["bench.jobs"]',
        "CURATORE_PROGRESS_MIN_INTERVAL": "0",
        "CURATORE_LIVE_POLL_SECONDS": str(POLL_SECONDS),
        "PYTHONPATH": str(ROOT),
    }
    if redis_url:
        env["CURATORE_REDIS_URL"] = redis_url
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    full = {k: v for k, v in os.environ.items() if k != "CURATORE_REDIS_URL"} | env
    out = subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=ROOT, env=full, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def measure(mode: str, redis_url: str | None, updates: int, browser: object) -> list[float]:
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
    env = _env(data_dir, redis_url)
    _cli(env, "migrate")
    worker_env = {k: v for k, v in os.environ.items() if k != "CURATORE_REDIS_URL"} | env
    worker = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker", "-c", "1", "-l", "warning"],
                              cwd=ROOT, env=worker_env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ui = UIProcess(env, free_port(), data_dir / "ui.log")
    try:
        ui.start()
        run_id = _cli(env, "submit", "bench_progress", "--config",
                      json.dumps({"updates": updates, "interval_s": 0.05, "start_after_s": 4}))
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(f"{ui.url}/system/jobs/{run_id}")
        page.wait_for_selector("[data-testid=progress-counter]")
        page.evaluate(OBSERVER)
        page.wait_for_selector("[data-testid=status-badge][data-status=completed]", timeout=120_000)
        seen = page.evaluate("window.__seen")
        page.close()
        run = json.loads(_cli(env, "runs", "show", run_id, "--json"))["run"]
        sent = run["results_summary"]["sent"]
    finally:
        ui.stop()
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=20)
        shutil.rmtree(data_dir, ignore_errors=True)
    latencies = []
    for n, sent_at in enumerate(sent, 1):
        shown = next((t for value, t in seen if value >= n), None)
        if shown is not None:
            latencies.append((shown - sent_at) * 1000)
    return latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--redis-url", default=os.environ.get("CURATORE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        results["redis wake-ups"] = measure("redis", args.redis_url, args.updates, browser)
        results["polling only"] = measure("polling", None, args.updates, browser)
        browser.close()
    budgets = {"redis wake-ups": 100.0, "polling only": POLL_SECONDS * 1000 + 100.0}
    print(f"\nlive latency, worker progress() -> browser DOM, {args.updates} updates per mode")
    print(f"{'mode':16} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'budget':>8} {'p95/budget':>10}")
    for mode, values in results.items():
        p95 = pct(values, 0.95)
        print(f"{mode:16} {len(values):5d} {statistics.median(values):8.1f} {p95:8.1f} {max(values):8.1f} "
              f"{budgets[mode]:8.0f} {p95 / budgets[mode]:10.2f}")
    ratio = pct(results["polling only"], 0.95) / pct(results["redis wake-ups"], 0.95)
    print(f"p95 polling / p95 redis = {ratio:.1f}x")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s)")
