"""Make docs/screenshots/*.png: the app on a fresh embedded database with sample jobs, in headless Chromium;
the main pages also at 1024 and 768 px wide (``*-1024.png``, ``*-768.png``).

    .venv/bin/python scripts/screenshots.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.processes import ROOT, UIProcess, free_port, stop_group  # noqa: E402

OUT = ROOT / "docs" / "screenshots"


def cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=ROOT, env={**os.environ, **env},
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="screens-"))
    gate = data_dir / "gate"
    gate.mkdir()
    overrides = data_dir / "overrides.json"  # the queue page shows what an overrides file changes
    overrides.write_text(json.dumps({"queues": {"extraction": {"max_concurrency": 3}},
                                     "job_types": {"scrape": {"timeout_seconds": 900}}}))
    env = {"CURATORE_DATA_DIR": str(data_dir), "CURATORE_JOB_MODULES": '["tests.jobs_for_tests"]',
           "CURATORE_REGISTRY_OVERRIDES": str(overrides), "PYTHONPATH": str(ROOT)}
    os.environ.pop("CURATORE_REDIS_URL", None)
    cli(env, "migrate")
    cli(env, "orgs", "create", "demo", "--name", "Demo")
    cli(env, "users", "create", "admin@curatore.local", "--password", "screenshots", "--system-admin",
        "--org", "demo", "--role", "admin")
    subprocess.run([sys.executable, "-c", "from backend import schedules; schedules.ensure_defaults()"], cwd=ROOT,
                   env={**os.environ, **env}, check=True)  # the scheduler would make them; the queue page lists them
    worker = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker", "-c", "2", "-l", "warning"], cwd=ROOT,
                              env={**os.environ, **env}, start_new_session=True)
    ui = UIProcess(env, free_port(), data_dir / "ui.log")
    try:
        ui.start()
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(f"{ui.url}/login")
            page.screenshot(path=str(OUT / "login.png"))
            page.fill("[data-testid=login-email]", "admin@curatore.local")
            page.fill("[data-testid=login-password]", "screenshots")
            page.click("[data-testid=login-submit]")
            page.wait_for_selector("[data-testid=signed-in-as]")
            page.goto(f"{ui.url}/system/jobs")
            page.click("[data-testid=start-samples]")
            cli(env, "submit", "test_steps", "--config", json.dumps({"steps": 1, "fail_at": 1}), "--name",
                "Nightly reconciliation")
            running = cli(env, "submit", "test_steps", "--config", json.dumps({"steps": 10, "gate_dir": str(gate)}),
                          "--name", "Re-index collection")
            for n in range(1, 7):
                (gate / str(n)).touch()
            page.wait_for_selector("[data-testid=run-row][data-status=completed]", timeout=120_000)
            time.sleep(3)
            page.screenshot(path=str(OUT / "jobs.png"), full_page=True)
            upload = json.loads(cli(env, "runs", "list", "--type", "upload", "--json"))[0]["id"]
            page.goto(f"{ui.url}/system/jobs/{upload}")
            page.wait_for_selector("[data-testid=status-badge][data-status=completed]", timeout=120_000)
            page.screenshot(path=str(OUT / "detail.png"), full_page=True)
            pipeline = json.loads(cli(env, "runs", "list", "--type", "pipeline", "--json"))[0]["id"]
            page.goto(f"{ui.url}/system/jobs/{pipeline}")
            page.wait_for_selector("[data-testid=status-badge][data-status=completed]", timeout=120_000)
            time.sleep(1)
            page.screenshot(path=str(OUT / "detail-pipeline.png"), full_page=True)
            page.goto(f"{ui.url}/system/jobs/{running}")
            page.wait_for_selector("[data-testid=progress-counter]")
            time.sleep(1)
            page.screenshot(path=str(OUT / "detail-running.png"), full_page=True)
            page.goto(f"{ui.url}/system/queues")
            page.wait_for_selector("[data-testid=worker-row]")
            hourly = page.locator('[data-testid=schedule-row][data-name="maintenance-hourly"]')
            hourly.locator("[data-testid=schedule-trigger]").click()  # a run in its history
            hourly.locator("[data-testid=schedule-history-open]").click()
            page.wait_for_selector("[data-testid=schedule-history] [data-testid=run-row][data-status=completed]",
                                   timeout=120_000)
            page.evaluate("window.scrollTo(0, 0)")  # the sidebar is sticky: drawn where the page is scrolled to
            page.mouse.move(0, 0)  # no chart tooltip under the pointer
            time.sleep(1)
            page.screenshot(path=str(OUT / "queues.png"), full_page=True)
            page.goto(f"{ui.url}/orgs/demo/syncs/contracts-drive")
            page.wait_for_selector("[data-testid=start-sync]")
            time.sleep(1)
            page.screenshot(path=str(OUT / "sync.png"), full_page=True)
            for width in (1024, 768):  # the same pages on narrower screens
                page.set_viewport_size({"width": width, "height": 900})
                for name, path, ready in (("jobs", "/system/jobs", "[data-testid=run-row]"),
                                          ("detail", f"/system/jobs/{upload}", "[data-testid=run-id]"),
                                          ("detail-running", f"/system/jobs/{running}", "[data-testid=run-id]"),
                                          ("queues", "/system/queues", "[data-testid=worker-row]")):
                    page.goto(f"{ui.url}{path}")
                    page.wait_for_selector(ready)
                    time.sleep(1)
                    page.screenshot(path=str(OUT / f"{name}-{width}.png"), full_page=True)
            browser.close()
        for n in range(7, 11):
            (gate / str(n)).touch()
    finally:
        ui.stop()
        stop_group(worker, signal.SIGQUIT, 10)  # cold: the sample runs left do not matter here
        shutil.rmtree(data_dir, ignore_errors=True)
    print("\n".join(str(p.relative_to(ROOT)) for p in sorted(OUT.glob("*.png"))))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    main()
