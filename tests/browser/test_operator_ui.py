"""The admin UI an operator reaches for first (issue 16), in a real Chromium against the running app: times
that tick without a push, an indeterminate bar, search on Enter, a shared URL that restores the list, every
Related link landing inside the layout, role-aware buttons, Retry going to the new run, toasts for the signed-in
person's CLI runs, and pages that reset on load."""

from __future__ import annotations

import re
import time
import uuid
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ADMIN, _applied, log_in, log_out
from tests.browser.test_live_ui import release, row, submit
from tests.browser.test_panels import cli

pytestmark = [pytest.mark.browser, pytest.mark.slow]
VIEWER = ("viewer@demo.test", "viewer-password")
MEMBER = ("member@demo.test", "member-password")


@pytest.fixture(scope="module")
def people(app_backend):  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org
    from backend.auth.users import create_user, set_role

    with _applied(app_backend):
        demo = ensure_org("demo")
        for (email, password), role in ((VIEWER, "viewer"), (MEMBER, "member")):
            set_role(create_user(email, password).id, demo.id, role)
    return demo


def _seconds(text: str) -> int:
    """"1m 5s" / "42s" -> seconds."""
    m = re.fullmatch(r"(?:(\d+)h )?(?:(\d+)m )?(\d+(?:\.\d)?)s|(\d+)h (\d+)m", text.strip())
    assert m, text
    if m.group(4):
        return int(m.group(4)) * 3600 + int(m.group(5)) * 60
    return int(m.group(1) or 0) * 3600 + int(m.group(2) or 0) * 60 + int(float(m.group(3)))


def test_running_times_tick_without_a_push_and_the_bar_is_indeterminate(app, app_backend, page, tmp_path):  # type: ignore[no-untyped-def]
    gate = tmp_path / "gate"
    gate.mkdir()
    run_id = submit(app_backend, "test_steps", {"steps": 2, "gate_dir": str(gate)}, "ticking")
    page.goto(f"{app.url}/system/jobs/{run_id}")
    page.wait_for_selector("[data-testid=status-badge][data-status=running]")
    expect(page.locator("[data-testid=progress-indeterminate]")).to_be_visible()  # no total yet: no full bar
    expect(page.locator("[data-testid=progress-percent]")).to_have_count(0)
    # nothing happens to the run (its gate is shut), so nothing is pushed: the browser counts on its own
    first = _seconds(page.inner_text("[data-testid=detail-duration]"))
    page.wait_for_timeout(2000)
    assert _seconds(page.inner_text("[data-testid=detail-duration]")) >= first + 1
    page.goto(f"{app.url}/system/jobs")
    cell = row(page, run_id).locator("[data-testid=row-duration]")
    expect(cell.locator("[data-testid=live-duration]")).to_be_visible()
    first = _seconds(cell.inner_text())
    page.wait_for_timeout(2000)
    assert _seconds(cell.inner_text()) >= first + 1
    release(gate, 1)
    release(gate, 2)
    page.wait_for_selector(f'[data-testid=run-row][data-run-id="{run_id}"][data-status=completed]')
    ended = cell.inner_text()
    expect(cell.locator("[data-testid=live-duration]")).to_have_count(0)  # ended: a fixed duration
    page.wait_for_timeout(1500)
    assert cell.inner_text() == ended


def test_search_on_enter_and_a_shared_url_restores_filters_sort_and_page(app, app_backend, page, browser):  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org
    from backend.runs.service import create_run

    prefix = f"share-{uuid.uuid4().hex[:6]}"
    org = ensure_org("demo")
    ids = [str(create_run("test_steps", {"steps": 1}, organization_id=org.id, display_name=f"{prefix}-{n:02}").id)
           for n in range(30)]
    page.goto(f"{app.url}/orgs/demo/jobs")
    page.wait_for_selector("[data-testid=type-tab]")
    page.fill("[data-testid=search]", prefix)
    page.press("[data-testid=search]", "Enter")
    page.wait_for_url(re.compile(rf".*[?&]q={prefix}.*"))
    expect(page.locator("[data-testid=run-row]")).to_have_count(25)  # a full first page, all of them ours
    assert all(n.startswith(prefix) for n in page.locator("[data-testid=run-link]").all_inner_texts())
    page.click("[data-testid=sort-type]")  # a column header: sort by type (ascending), keyset paging kept
    page.wait_for_url(re.compile(r".*sort=type.*"))
    page.click("[data-testid=type-tab][data-key=test_steps]")
    page.wait_for_url(re.compile(r".*type=test_steps.*"))
    page.click("[data-testid=page-next]")
    page.wait_for_url(re.compile(r".*cursor=.*"))
    expect(page.locator("[data-testid=page-number]")).to_have_text("Page 2")
    expect(page.locator("[data-testid=run-row]")).to_have_count(5)
    shown = [r.get_attribute("data-run-id") for r in page.locator("[data-testid=run-row]").all()]
    assert set(shown) <= set(ids)
    shared = page.url

    other = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()  # someone the link is sent to
    try:
        log_in(other, app.url, *ADMIN)
        other.goto(shared)
        expect(other.locator("[data-testid=page-number]")).to_have_text("Page 2")
        expect(other.locator("[data-testid=search]")).to_have_value(prefix)
        expect(other.locator("[data-testid=type-tab][data-key=test_steps]")).to_have_attribute("data-active", "true")
        expect(other.locator("[data-testid=sort-type]")).to_be_visible()
        expect(other.locator("[data-testid=run-row]")).to_have_count(5)
        assert [r.get_attribute("data-run-id") for r in other.locator("[data-testid=run-row]").all()] == shown
        other.click("[data-testid=page-prev]")  # the earlier cursors came with the link too
        expect(other.locator("[data-testid=page-number]")).to_have_text("Page 1")
        expect(other.locator("[data-testid=run-row]")).to_have_count(25)
        other.goto(f"{app.url}/orgs/demo/jobs?status=nonsense&sort=%3Cx%3E&cursor=not-a-cursor&from=2024-13-99")
        expect(other.locator("[data-testid=list-notice]")).to_contain_text("no longer valid")  # bad input: page 1
        expect(other.locator("[data-testid=page-number]")).to_have_text("Page 1")
    finally:
        other.context.close()


def test_every_related_link_lands_inside_the_layout(app, page):  # type: ignore[no-untyped-def]
    from backend.jobtypes.registry import get_registry
    from curatore_ui.pages.job_detail_state import resource_href

    odd = "q3 plan/v2?x=1#top"  # an id that must be URL-encoded
    checked = []
    for job_type in get_registry().types.values():
        if job_type.resource_link is None or not job_type.resource_id_field:
            continue
        link = job_type.resource_link({job_type.resource_id_field: odd}, "demo")
        page.goto(app.url + resource_href(link.href, link.name))
        page.wait_for_selector("[data-testid=signed-in-as]")  # the layout
        expect(page.locator("[data-testid=page-not-found]")).to_have_count(0)
        expect(page.get_by_role("heading", name="Page not found")).to_have_count(0)
        checked.append(job_type.key)
    assert {"extraction", "sharepoint_sync", "sam_pull", "sam_refresh", "scrape", "forecast_sync"} <= set(checked)
    expect(page.locator("body")).to_contain_text(odd)  # the id arrived whole
    page.goto(f"{app.url}/orgs/demo/no-such-section/1")
    expect(page.locator("[data-testid=page-not-found]")).to_be_visible()
    expect(page.locator("[data-testid=signed-in-as]")).to_be_visible()


def test_buttons_follow_the_role(app, app_backend, anonymous_page, people, tmp_path):  # type: ignore[no-untyped-def]
    page = anonymous_page
    gate = tmp_path / "gate"
    gate.mkdir()
    running = submit(app_backend, "test_steps", {"steps": 1, "gate_dir": str(gate)}, "role-running")
    failed = submit(app_backend, "test_steps", {"steps": 1, "fail_at": 1}, "role-failed")
    log_in(page, app.url, *VIEWER)
    page.goto(f"{app.url}/orgs/demo/jobs")
    row(page, failed).wait_for()
    page.wait_for_selector(f'[data-testid=run-row][data-run-id="{failed}"][data-status=failed]')
    for selector in ("start-samples", "row-select", "select-page", "row-cancel", "row-retry", "bulk-cancel"):
        expect(page.locator(f"[data-testid={selector}]")).to_have_count(0)
    page.goto(f"{app.url}/orgs/demo/jobs/{running}")
    page.wait_for_selector("[data-testid=status-badge][data-status=running]")
    expect(page.locator("button")).not_to_contain_text(["Cancel", "Retry", "Force kill", "Boost"])
    for selector in ("cancel-button", "retry-button", "kill-button", "boost-button"):
        expect(page.locator(f"[data-testid={selector}]")).to_have_count(0)
    page.goto(f"{app.url}/orgs/demo/jobs/{failed}")
    page.wait_for_selector("[data-testid=status-badge][data-status=failed]")
    expect(page.locator("[data-testid=retry-button]")).to_have_count(0)
    log_out(page)

    log_in(page, app.url, *MEMBER)  # a member cancels and retries, but does not force-kill
    page.goto(f"{app.url}/orgs/demo/jobs/{running}")
    page.wait_for_selector("[data-testid=status-badge][data-status=running]")
    expect(page.locator("[data-testid=cancel-button]")).to_be_visible()
    expect(page.locator("[data-testid=kill-button]")).to_have_count(0)
    page.goto(f"{app.url}/orgs/demo/jobs")
    expect(row(page, failed).locator("[data-testid=row-retry]")).to_be_visible()
    expect(page.locator("[data-testid=start-samples]")).to_be_visible()
    release(gate, 1)


def test_retry_goes_to_the_new_run_and_pages_reset_on_load(app, app_backend, page):  # type: ignore[no-untyped-def]
    from tests.browser.test_panels import new_asset

    failed = submit(app_backend, "test_steps", {"steps": 1, "fail_at": 1}, "retry-me")
    page.goto(f"{app.url}/system/jobs/{failed}")
    page.wait_for_selector("[data-testid=status-badge][data-status=failed]")
    page.click("[data-testid=retry-button]")
    page.wait_for_url(re.compile(r".*/system/jobs/(?!" + failed + r")[0-9a-f-]{36}$"))
    new_id = page.url.rsplit("/", 1)[-1]
    expect(page.locator("[data-testid=run-id]")).to_have_text(new_id)
    expect(page.get_by_role("link", name=re.compile(f"Retry of.*{failed[:8]}"))).to_be_visible()

    asset = new_asset()
    page.goto(f"{app.url}/orgs/demo/assets/{asset.id}")
    expect(page.locator("body")).to_contain_text("spec.md")
    missing = uuid.uuid4()
    page.goto(f"{app.url}/orgs/demo/assets/{missing}")
    expect(page.locator("[data-testid=asset-error]")).to_contain_text(f"No asset {missing}")
    expect(page.locator("body")).not_to_contain_text("spec.md")  # nothing of the asset shown before
    expect(page.locator("[data-testid=extract-button]")).to_have_count(0)


def test_a_cli_run_of_the_signed_in_person_toasts_on_an_open_jobs_page(app, app_backend, page):  # type: ignore[no-untyped-def]
    page.goto(f"{app.url}/system/jobs")
    page.wait_for_selector("[data-testid=type-tab]")
    tag = uuid.uuid4().hex[:6]
    cli(app_backend, "submit", "extraction", "--config", '{"path": "backend/demo/files/samples/meeting-notes.txt"}',
        "--name", f"not-mine-{tag}", "--wait")  # the CLI's own run: not this person's
    theirs = cli(app_backend, "submit", "extraction", "--config", '{"path": "backend/demo/files/samples/contracts.csv"}',
                 "--name", f"mine-{tag}", "--as", ADMIN[0])
    toast = page.locator("[data-sonner-toast]", has_text=f"Extracted mine-{tag}")
    expect(toast).to_have_count(1, timeout=30_000)
    page.wait_for_timeout(1000)
    expect(page.locator("[data-sonner-toast]", has_text=f"not-mine-{tag}")).to_have_count(0)
    expect(toast).to_have_count(1)  # once
    row(page, theirs).wait_for()
    # the CLI names an extraction by the file, not its local path
    expect(row(page, theirs).locator("[data-testid=run-link]")).to_have_text(f"mine-{tag}")
    plain = cli(app_backend, "submit", "extraction", "--config", '{"path": "backend/demo/files/samples/contracts.csv"}')
    expect(row(page, plain).locator("[data-testid=run-link]")).to_have_text("contracts.csv")
