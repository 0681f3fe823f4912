"""The live admin UI in a real browser: runs appear and move without a reload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def submit(app_backend, run_type: str, config: dict, name: str) -> str:  # type: ignore[no-untyped-def]
    """Submit from the command line, as a user would."""
    import os

    out = subprocess.run(
        [sys.executable, "-m", "backend.cli", "submit", run_type, "--config", json.dumps(config), "--name", name],
        cwd=ROOT, env={**os.environ, **app_backend.env}, capture_output=True, text=True, check=True, timeout=60,
    )
    return out.stdout.strip().splitlines()[-1]


def release(gate: Path, step: int) -> None:
    (gate / str(step)).touch()


def row(page, run_id: str):  # type: ignore[no-untyped-def]
    return page.locator(f'[data-testid=run-row][data-run-id="{run_id}"]')


def test_run_appears_on_the_list_and_moves_live(app, app_backend, page, tmp_path):  # type: ignore[no-untyped-def]
    page.goto(f"{app.url}/system/jobs")
    page.wait_for_selector("[data-testid=type-tab]")
    gate = tmp_path / "gate"
    gate.mkdir()
    run_id = submit(app_backend, "test_steps", {"steps": 3, "gate_dir": str(gate)}, "list-live")
    r = row(page, run_id)
    r.wait_for()  # appeared without a reload
    page.wait_for_selector(f'[data-testid=run-row][data-run-id="{run_id}"][data-status=running]')
    release(gate, 1)
    page.wait_for_function(
        "id => document.querySelector(`[data-run-id='${id}']`).innerText.includes('1 / 3')", arg=run_id)
    release(gate, 2)
    release(gate, 3)
    page.wait_for_selector(f'[data-testid=run-row][data-run-id="{run_id}"][data-status=completed]')
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded


def test_detail_page_progress_phase_and_log_live(app, app_backend, page, tmp_path):  # type: ignore[no-untyped-def]
    gate = tmp_path / "gate"
    gate.mkdir()
    run_id = submit(app_backend, "test_steps", {"steps": 4, "gate_dir": str(gate)}, "detail-live")
    page.goto(f"{app.url}/system/jobs/{run_id}")
    page.wait_for_selector("[data-testid=status-badge][data-status=running]")
    seen_percent = []
    for step in range(1, 5):
        release(gate, step)
        page.wait_for_function(
            "n => [...document.querySelectorAll('[data-testid=log-message]')]"
            ".some(e => e.innerText === `Step ${n} of 4 done`)", arg=step)
        page.wait_for_function(
            "n => document.querySelector('[data-testid=progress-counter]').innerText.startsWith(`${n} / 4`)",
            arg=step)
        seen_percent.append(page.inner_text("[data-testid=progress-percent]"))
        phase = page.inner_text("[data-testid=progress-phase]")
        assert phase == ("first half" if step <= 2 else "second half")
    assert seen_percent == ["25%", "50%", "75%", "100%"]
    page.wait_for_selector("[data-testid=status-badge][data-status=completed]")
    messages = page.locator("[data-testid=log-message]").all_inner_texts()
    assert [m for m in messages if m.startswith("Step ")] == [f"Step {n} of 4 done" for n in range(1, 5)]
    assert messages[-1] == "Completed"


def test_html_in_logs_and_config_is_text(app, app_backend, page, tmp_path):  # type: ignore[no-untyped-def]
    evil = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=1</script>"
    run_id = submit(app_backend, "test_steps", {"steps": 1, "fail_at": 1}, evil)
    page.goto(f"{app.url}/system/jobs/{run_id}")
    page.wait_for_selector("[data-testid=status-badge][data-status=failed]")
    assert page.inner_text("[data-testid=run-name]") == evil
    page.goto(f"{app.url}/system/jobs")
    row(page, run_id).wait_for()
    assert page.evaluate("window.__pwned === undefined")
    assert page.locator("img[src=x]").count() == 0


def test_backend_restart_mid_run_misses_nothing(app, app_backend, page, tmp_path):  # type: ignore[no-untyped-def]
    gate = tmp_path / "gate"
    gate.mkdir()
    run_id = submit(app_backend, "test_steps", {"steps": 4, "gate_dir": str(gate)}, "restart")
    page.goto(f"{app.url}/system/jobs/{run_id}")
    page.wait_for_selector("[data-testid=status-badge][data-status=running]")
    release(gate, 1)
    page.wait_for_function("() => document.body.innerText.includes('Step 1 of 4 done')")
    app.stop()
    for step in (2, 3, 4):  # the run goes on and ends while the UI backend is down
        release(gate, step)
    app.start()
    page.wait_for_selector("[data-testid=status-badge][data-status=completed]", timeout=60_000)
    messages = page.locator("[data-testid=log-message]").all_inner_texts()
    assert [m for m in messages if m.startswith("Step ")] == [f"Step {n} of 4 done" for n in range(1, 5)]
    assert messages.count("Completed") == 1


def test_selection_survives_live_updates_and_bulk_cancel(app, app_backend, page, tmp_path):  # type: ignore[no-untyped-def]
    gates = [tmp_path / "a", tmp_path / "b"]
    ids = []
    for gate in gates:
        gate.mkdir()
        ids.append(submit(app_backend, "test_steps", {"steps": 3, "gate_dir": str(gate)}, f"bulk-{gate.name}"))
    page.goto(f"{app.url}/system/jobs")
    for run_id in ids:
        page.wait_for_selector(f'[data-testid=run-row][data-run-id="{run_id}"][data-status=running]')
        row(page, run_id).locator("[data-testid=row-select]").click()
    expect(page.locator("[data-testid=selected-count]")).to_have_text("2 selected")
    release(gates[0], 1)  # a live update rewrites the rows
    page.wait_for_function(
        "id => document.querySelector(`[data-run-id='${id}']`).innerText.includes('1 / 3')", arg=ids[0])
    expect(page.locator("[data-testid=selected-count]")).to_have_text("2 selected")
    page.click("[data-testid=bulk-cancel]")
    for run_id in ids:
        page.wait_for_selector(f'[data-testid=run-row][data-run-id="{run_id}"][data-status=cancelled]')


def test_sample_jobs_start_and_toast_when_done(app, page):  # type: ignore[no-untyped-def]
    page.goto(f"{app.url}/system/jobs")
    page.wait_for_selector("[data-testid=type-tab]")
    page.click("[data-testid=start-samples]")
    page.wait_for_selector("[data-sonner-toast]:has-text('Upload of Sample upload batch finished')",
                           state="attached", timeout=60_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=run-row]')].filter("
        "r => r.innerText.includes('Sample upload batch')).length === 1")
