"""Progress panels on resource pages, with job types added right here.

This module is also a job module: the worker and the UI of the browser tests import it through
``CURATORE_JOB_MODULES``, so the two job types below are all it takes to run and render them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from pydantic import Field

from backend.jobtypes.configs import JobConfig
from backend.jobtypes.registry import JobType

pytestmark = [pytest.mark.browser, pytest.mark.slow]


class GatedResourceConfig(JobConfig):
    gate_dir: str
    steps: int = Field(default=3, ge=1)
    asset_id: str | None = None
    collection_id: str | None = None


def gated_resource_job(ctx: Any, config: GatedResourceConfig) -> dict[str, Any]:
    for n in range(1, config.steps + 1):
        while not (Path(config.gate_dir) / str(n)).exists():
            ctx.check_cancelled()
            time.sleep(0.02)
        ctx.progress(n, config.steps, phase="working", item=f"part {n}", unit="parts")
    return {"parts": config.steps}


JOB_TYPES = [
    JobType("test_asset_job", "Asset Test Job", "file-cog", "cyan", "default", 120, ("working",),
            GatedResourceConfig, gated_resource_job, resource_type="asset", resource_id_field="asset_id"),
    JobType("test_collection_job", "Collection Test Job", "library", "orange", "default", 120, ("working",),
            GatedResourceConfig, gated_resource_job, resource_type="collection", resource_id_field="collection_id"),
]


def cli(app_backend, *args: str) -> str:  # type: ignore[no-untyped-def]
    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=ROOT,
                         env={**os.environ, **app_backend.env}, capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip().splitlines()[-1]


def new_asset(collection_id: str | None = None):  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org
    from backend.db.engine import in_transaction
    from backend.db.models import Asset
    from backend.storage.assets import store_bytes

    org = ensure_org("demo")
    asset = store_bytes(org.id, "spec.md", b"# Spec\n\nThe panel shows this file's jobs.\n")
    if collection_id:
        def tag(s):  # type: ignore[no-untyped-def]
            s.get(Asset, asset.id).collection_id = collection_id
        in_transaction(tag)
    return asset


def test_asset_panel_shows_while_running_hides_after_and_calls_back_once(app, app_backend, page, tmp_path):  # type: ignore[no-untyped-def]
    asset = new_asset()
    page.goto(f"{app.url}/orgs/demo/assets/{asset.id}")
    page.wait_for_selector("[data-testid=extract-button]")
    panel = page.locator("[data-testid=job-progress-panel]").first
    expect(panel.locator("[data-testid=panel-job]")).to_have_count(0)  # hidden: nothing runs
    gate = tmp_path / "gate"
    gate.mkdir()
    run_id = cli(app_backend, "submit", "test_asset_job", "--config",
                 json.dumps({"asset_id": str(asset.id), "gate_dir": str(gate), "steps": 3}))
    job = panel.locator(f'[data-testid=panel-job][data-run-id="{run_id}"]')
    expect(job).to_be_visible()
    expect(job).to_contain_text("Asset Test Job")
    expect(page.locator("[data-testid=extract-button]")).to_be_disabled()  # the resource is busy
    (gate / "1").touch()
    expect(job).to_contain_text("1 / 3 parts")
    expect(job.locator("[data-testid=panel-current-item]")).to_have_text("part 1")
    (gate / "2").touch()
    (gate / "3").touch()
    expect(job).to_have_count(0)  # hidden again when it ends
    expect(page.locator("[data-testid=panel-callbacks]")).to_have_attribute("data-count", "1")
    page.wait_for_timeout(1000)  # later events must not fire it again
    expect(page.locator("[data-testid=panel-callbacks]")).to_have_attribute("data-count", "1")
    expect(page.locator("[data-testid=extract-button]")).to_be_enabled()


def test_two_panels_for_two_resources_update_independently(app, app_backend, page, tmp_path):  # type: ignore[no-untyped-def]
    asset = new_asset(collection_id="handbooks")
    page.goto(f"{app.url}/orgs/demo/assets/{asset.id}")
    panels = page.locator("[data-testid=job-progress-panel]")
    expect(panels).to_have_count(2)
    gates = {name: tmp_path / name for name in ("asset", "collection")}
    for gate in gates.values():
        gate.mkdir()
    asset_run = cli(app_backend, "submit", "test_asset_job", "--config",
                    json.dumps({"asset_id": str(asset.id), "gate_dir": str(gates["asset"]), "steps": 4}))
    coll_run = cli(app_backend, "submit", "test_collection_job", "--config",
                   json.dumps({"collection_id": "handbooks", "gate_dir": str(gates["collection"]), "steps": 2}))
    asset_panel, coll_panel = panels.nth(0), panels.nth(1)
    expect(asset_panel.locator(f'[data-run-id="{asset_run}"]')).to_be_visible()
    expect(coll_panel.locator(f'[data-run-id="{coll_run}"]')).to_be_visible()
    expect(asset_panel.locator(f'[data-run-id="{coll_run}"]')).to_have_count(0)
    (gates["collection"] / "1").touch()
    expect(coll_panel).to_contain_text("1 / 2 parts")
    expect(asset_panel).not_to_contain_text("1 / 4 parts")
    (gates["asset"] / "1").touch()
    (gates["asset"] / "2").touch()
    expect(asset_panel).to_contain_text("2 / 4 parts")
    expect(coll_panel).to_contain_text("1 / 2 parts")
    (gates["collection"] / "2").touch()
    expect(coll_panel.locator("[data-testid=panel-job]")).to_have_count(0)
    expect(asset_panel.locator(f'[data-run-id="{asset_run}"]')).to_be_visible()  # still running
    (gates["asset"] / "3").touch()
    (gates["asset"] / "4").touch()
    expect(asset_panel.locator("[data-testid=panel-job]")).to_have_count(0)


def test_a_job_type_added_here_renders_on_the_list_and_detail(app, app_backend, page, tmp_path):  # type: ignore[no-untyped-def]
    gate = tmp_path / "gate"
    gate.mkdir()
    for n in (1, 2):
        (gate / str(n)).touch()
    run_id = cli(app_backend, "submit", "test_collection_job", "--config",
                 json.dumps({"collection_id": "specs", "gate_dir": str(gate), "steps": 2}))
    page.goto(f"{app.url}/system/jobs/{run_id}")
    page.wait_for_selector("[data-testid=status-badge][data-status=completed]")
    expect(page.locator("body")).to_contain_text("Collection Test Job")
    expect(page.get_by_text("parts", exact=False).first).to_be_visible()
    page.goto(f"{app.url}/system/jobs")
    expect(page.locator("[data-testid=type-tab]", has_text="Collection Test Job")).to_be_visible()
