"""The queue page (issue 16, item 8) in a real Chromium against the running app: one throughput and one duration
chart per queue, filled by runs that complete while the page is open; the job-type registry with the overrides
the app was started with; a schedule's runs, keyset-paged; and, for someone who is not a system admin, a plain
"not allowed" inside the layout with no number of any organization."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import _applied, log_in
from tests.browser.test_live_ui import submit

pytestmark = [pytest.mark.browser, pytest.mark.slow]
OUTSIDER = ("queues-member@other.test", "outsider-password")
PROBE = "queue-page-probe"


@pytest.fixture(scope="module")
def outsider(app_backend):  # type: ignore[no-untyped-def]
    """A member (not a system admin) of an organization of their own."""
    from backend.auth.orgs import ensure_org
    from backend.auth.users import create_user, set_role

    with _applied(app_backend):
        other = ensure_org("other-co", "Other Co")
        set_role(create_user(*OUTSIDER).id, other.id, "member")
    return other


def _finished(page, queue: str) -> int:  # type: ignore[no-untyped-def]
    return int(page.get_attribute(f'[data-testid=queue-card][data-queue="{queue}"]', "data-finished"))


def test_each_queue_has_its_own_charts_filled_live_by_finished_runs(app, app_backend, page):  # type: ignore[no-untyped-def]
    from backend.jobtypes.registry import get_registry

    page.goto(f"{app.url}/system/queues")
    cards = page.locator("[data-testid=queue-card]")
    expect(cards).to_have_count(len(get_registry().queues))
    expect(page.locator("[data-testid=throughput-chart]")).to_have_count(len(get_registry().queues))  # one per queue
    expect(page.locator("[data-testid=duration-chart]")).to_have_count(len(get_registry().queues))
    expect(page.locator("[data-testid=worker-row]").first).to_be_visible()
    before = {q: _finished(page, q) for q in get_registry().queues}
    for n in range(3):  # test_steps runs on the default queue; nothing else is submitted meanwhile
        submit(app_backend, "test_steps", {"steps": 1}, f"chart-{n}")
    page.wait_for_function(  # pushed to the open page as the runs end: no reload
        "n => +document.querySelector('[data-testid=queue-card][data-queue=default]').dataset.finished >= n",
        arg=before["default"] + 3)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    default = page.locator('[data-testid=queue-card][data-queue="default"]')
    expect(default.locator("[data-testid=queue-summary]")).to_contain_text("completed")
    # the default queue's bar chart draws its completed runs (recharts draws no rectangle for a zero) ...
    expect(default.locator("[data-testid=throughput-chart] .recharts-bar-rectangle path").first).to_be_visible()
    expect(default.locator("[data-testid=duration-chart] .recharts-line-dot").first).to_be_visible()
    # ... and another queue's chart is its own: these runs are not in it
    after = {q: _finished(page, q) for q in get_registry().queues}
    assert {q: n for q, n in after.items() if q != "default"} == {q: n for q, n in before.items() if q != "default"}
    quiet = [q for q, n in after.items() if n == 0]
    for q in quiet:
        card = page.locator(f'[data-testid=queue-card][data-queue="{q}"]')
        expect(card.locator("[data-testid=throughput-chart] .recharts-bar-rectangle path")).to_have_count(0)
        expect(card.locator("[data-testid=duration-chart] .recharts-line-dot")).to_have_count(0)  # no zeros drawn
        expect(card.locator("[data-testid=queue-summary]")).to_contain_text("0 completed, 0 failed")


def test_the_registry_lists_every_type_and_the_overrides_applied(app, page):  # type: ignore[no-untyped-def]
    from backend.jobtypes.registry import get_registry

    page.goto(f"{app.url}/system/queues")
    registry = page.locator("[data-testid=registry]")
    expect(registry.locator("[data-testid=registry-row]")).to_have_count(len(get_registry().types))
    overrides = registry.locator("[data-testid=override-row]")
    expect(overrides).to_have_count(2)  # tests/browser/conftest.py's overrides file: a queue and a job type
    expect(overrides.nth(0)).to_contain_text("queue extraction: max concurrency 1 (built-in 4)")
    expect(overrides.nth(1)).to_contain_text("job type deletion: timeout 10 min (built-in 15 min)")
    expect(registry).to_contain_text("overrides.json")  # where they come from
    extraction = page.locator('[data-testid=queue-card][data-queue="extraction"]')
    expect(extraction).to_contain_text("/ 1")
    expect(extraction.locator("[data-testid=queue-limit-override]")).to_have_attribute("title", "built-in limit 4")
    expect(page.locator('[data-testid=queue-card][data-queue="sync"] [data-testid=queue-limit-override]')
           ).to_have_count(0)
    deletion = registry.locator('[data-testid=registry-row][data-key="deletion"]')
    expect(deletion.locator("[data-testid=type-override]")).to_have_text("timeout 10 min (built-in 15 min)")
    expect(deletion).to_contain_text("10 min")
    extraction_type = registry.locator('[data-testid=registry-row][data-key="extraction"]')
    expect(extraction_type).to_contain_text("queue's (1)")  # the type shares its (overridden) queue's limit
    expect(extraction_type).to_contain_text("2 attempts, 10 s then ×2 (max 10 min)")
    expect(extraction_type.locator("[data-testid=type-override]")).to_have_count(0)
    expect(registry.locator('[data-testid=registry-row][data-key="test_steps"]')).to_contain_text(
        "from tests.jobs_for_tests")
    expect(registry.locator('[data-testid=registry-row][data-key="system_maintenance"]')).to_contain_text(
        "system admin")


def test_a_schedules_history_lists_its_runs_and_pages(app, app_backend, page):  # type: ignore[no-untyped-def]
    from backend import schedules
    from backend.auth.orgs import ensure_org
    from backend.db.states import RunOrigin
    from backend.runs.service import create_run
    from curatore_ui.pages.queues import HISTORY_PAGE

    demo = ensure_org("demo")
    schedules.create_schedule(PROBE, "test_steps", {"steps": 1}, organization_id=demo.id, interval_seconds=86400,
                              description="A probe of the queue page", enabled=False)
    page.goto(f"{app.url}/system/queues")
    row = page.locator(f'[data-testid=schedule-row][data-name="{PROBE}"]')
    row.locator("[data-testid=schedule-history-open]").click()
    history = page.locator("[data-testid=schedule-history]")
    expect(history).to_have_attribute("data-name", PROBE)
    expect(history.locator("[data-testid=history-empty]")).to_be_visible()
    row.locator("[data-testid=schedule-trigger]").click()  # disabled, but "Run now" starts it
    runs = history.locator("[data-testid=run-row]")
    expect(runs).to_have_count(1)
    expect(runs.first).to_have_attribute("data-status", "completed", timeout=60_000)  # live in the open history
    [first] = schedules.history(PROBE)
    assert runs.first.get_attribute("data-run-id") == str(first.id)
    expect(history.locator("[data-testid=history-older]")).to_be_disabled()

    more = [str(create_run("test_steps", {"steps": 1}, organization_id=demo.id, origin=RunOrigin.SCHEDULED,
                           created_by=schedules.CREATED_BY_PREFIX + PROBE, display_name=f"{PROBE}-{n}").id)
            for n in range(HISTORY_PAGE + 2)]  # the scheduler's later runs, as it writes them
    create_run("test_steps", {"steps": 1}, organization_id=demo.id, display_name="not-the-probe's")
    expect(runs.first).to_have_attribute("data-run-id", more[-1])  # live: the newest first, once it is written
    expect(runs).to_have_count(HISTORY_PAGE)  # a page at a time
    page_one = [r.get_attribute("data-run-id") for r in runs.all()]
    assert page_one == more[::-1][:HISTORY_PAGE]
    expect(history.locator("[data-testid=history-page]")).to_have_text("Page 1")
    history.locator("[data-testid=history-older]").click()
    expect(history.locator("[data-testid=history-page]")).to_have_text("Page 2")
    expect(runs).to_have_count(3)
    assert [r.get_attribute("data-run-id") for r in runs.all()] == [*more[::-1][HISTORY_PAGE:], str(first.id)]
    expect(history.locator("[data-testid=history-older]")).to_be_disabled()
    history.locator("[data-testid=history-newer]").click()
    expect(history.locator("[data-testid=history-page]")).to_have_text("Page 1")
    expect(runs.first).to_have_attribute("data-run-id", more[-1])
    runs.first.locator("[data-testid=run-link]").click()  # a run of the history opens its page
    page.wait_for_url(f"**/system/jobs/{more[-1]}")


def test_someone_who_is_not_a_system_admin_sees_a_plain_not_allowed(app, anonymous_page, outsider):  # type: ignore[no-untyped-def]
    page = anonymous_page
    log_in(page, app.url, *OUTSIDER)
    expect(page.get_by_role("link", name="Queues")).to_have_count(0)  # not linked for them
    page.goto(f"{app.url}/system/queues")
    denied = page.locator("[data-testid=queues-denied]")
    expect(denied).to_contain_text("Queue administration is for system admins")
    expect(page.locator("[data-testid=signed-in-as]")).to_have_text(OUTSIDER[0])  # inside the layout
    link = denied.locator("[data-testid=own-queue-link]")
    expect(link).to_have_count(1)  # their one organization, and no other
    expect(link).to_have_attribute("href", "/orgs/other-co/jobs?status=pending")
    body = page.locator("body")
    for absent in ("[data-testid=queue-card]", "[data-testid=worker-row]", "[data-testid=registry]",
                   "[data-testid=schedule-row]", "[data-testid=throughput-chart]"):
        expect(page.locator(absent)).to_have_count(0)
    for text in ("No worker has reported", "Workers online", "maintenance-hourly", "demo"):
        expect(body).not_to_contain_text(text)
    link.click()  # their own waiting runs: the organization's jobs list, filtered to pending
    page.wait_for_url("**/orgs/other-co/jobs?status=pending")
    expect(page.locator("[data-testid=signed-in-as]")).to_be_visible()
