"""The SharePoint sync page: start a sync against a local Graph stand-in (the app's default SharePoint
connection) and watch its children finish."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from backend.demo.servers import GraphServer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OBSERVE = """() => {
  window.__counts = [];
  const seen = () => { const el = document.querySelector('[data-testid=panel-children-completed]');
                       if (el) window.__counts.push(parseInt(el.innerText)); };
  new MutationObserver(seen).observe(document.body, {childList: true, subtree: true, characterData: true});
}"""


@pytest.fixture
def drive(app_backend):  # type: ignore[no-untyped-def]
    server = GraphServer("drive-browser")
    for n in range(1, 7):
        server.put_file(f"/Handbook/chapter-{n}.md", f"# Chapter {n}\n\nText of chapter {n}.\n".encode())
    server.start(port=urlsplit(app_backend.env["CURATORE_SHAREPOINT_BASE_URL"]).port)
    yield server
    server.stop()


def test_sync_page_child_grid_counts_up(app, page, drive):  # type: ignore[no-untyped-def]
    held = drive.hold(r"/content|/download", after=0)  # the sync waits at its first download
    page.goto(f"{app.url}/orgs/demo/syncs/handbook")
    page.fill("[data-testid=drive-id]", "drive-browser")
    expect(page.get_by_role("combobox")).to_have_text("default")  # the connection: a name, never a URL
    page.click("[data-testid=start-sync]")
    job = page.locator("[data-testid=panel-job]")
    expect(job).to_contain_text("SharePoint Sync")
    expect(page.locator("[data-testid=start-sync]")).to_be_disabled()
    held.wait_blocked()
    page.evaluate(OBSERVE)
    held.release()
    expect(job).to_have_count(0, timeout=60_000)  # the panel hides when the sync and its children are done
    counts = [c for c in page.evaluate("window.__counts") if c == c]  # drop NaN
    assert counts == sorted(counts) and len(set(counts)) >= 2, counts  # it counted up, live
    assert max(counts) <= 6
    expect(page.locator("[data-testid=run-row]").first).to_have_attribute("data-status", "completed")
    expect(page.get_by_role("link", name="chapter-6.md")).to_be_visible()
    from backend.runs.queries import RunFilter, list_runs

    [sync] = list_runs(RunFilter(resource_type="sharepoint_config", resource_id="handbook"))
    assert sync.results_summary["children"]["completed"] == 6
