"""Sign-in in a real browser: a member sees only their organization's jobs; signed out, pages go to login."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import _applied, log_in, log_out

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_orgs(app_backend):  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org
    from backend.auth.users import create_user, set_role
    from backend.runs.service import create_run

    with _applied(app_backend):  # module fixtures come before the per-test environment
        acme, demo = ensure_org("acme", "Acme"), ensure_org("demo")
        member = create_user("member@acme.test", "member-password")
        set_role(member.id, acme.id, "member")
        mine = create_run("test_steps", {"steps": 1}, organization_id=acme.id, display_name="acme-visible-run")
        theirs = create_run("test_steps", {"steps": 1}, organization_id=demo.id, display_name="demo-hidden-run")
    return {"mine": mine, "theirs": theirs}


def test_member_sees_only_their_organization_then_signs_out(app, anonymous_page, two_orgs):  # type: ignore[no-untyped-def]
    page = anonymous_page
    page.goto(f"{app.url}/orgs/acme/jobs")
    page.wait_for_url("**/login?next=/orgs/acme/jobs")  # no session: the login page, coming back here after
    page.fill("[data-testid=login-email]", "member@acme.test")
    page.fill("[data-testid=login-password]", "wrong password")
    page.click("[data-testid=login-submit]")
    expect(page.locator("[data-testid=login-error]")).to_have_text("That email and password do not match.")
    page.wait_for_url("**/login/?error=invalid&next=%2Forgs%2Facme%2Fjobs")  # back from the server, a fresh form
    page.fill("[data-testid=login-email]", "member@acme.test")
    page.fill("[data-testid=login-password]", "member-password")
    page.click("[data-testid=login-submit]")  # a form post: the server's 303 is a full page load (trailing /)
    page.wait_for_url(re.compile(r".*/orgs/acme/jobs/?$"))
    expect(page.locator(f'[data-run-id="{two_orgs["mine"].id}"]')).to_be_visible()
    expect(page.locator(f'[data-run-id="{two_orgs["theirs"].id}"]')).to_have_count(0)
    expect(page.get_by_role("link", name="Queues")).to_have_count(0)  # system admins only

    page.goto(f"{app.url}/system/jobs")  # the all-organizations list is not theirs: back to their own
    page.wait_for_url("**/orgs/acme/jobs")
    page.goto(f"{app.url}/orgs/demo/jobs")
    expect(page.locator("body")).to_contain_text("That organization does not exist.")
    expect(page.locator(f'[data-run-id="{two_orgs["theirs"].id}"]')).to_have_count(0)
    page.goto(f"{app.url}/system/jobs/{two_orgs['theirs'].id}")
    expect(page.locator("body")).to_contain_text(f"No run with id {two_orgs['theirs'].id}.")  # as if absent
    expect(page.locator("body")).not_to_contain_text("demo-hidden-run")

    log_out(page)
    assert not [c for c in page.context.cookies() if c["name"] == "curatore_session"]  # cleared by the server
    for path in ("/orgs/acme/jobs", f"/system/jobs/{two_orgs['mine'].id}", "/system/queues"):
        page.goto(f"{app.url}{path}")
        page.wait_for_url("**/login?next=**")


def test_an_admin_sees_every_organization(app, anonymous_page, two_orgs):  # type: ignore[no-untyped-def]
    from tests.browser.conftest import ADMIN

    log_in(anonymous_page, app.url, *ADMIN)
    anonymous_page.goto(f"{app.url}/system/jobs")
    for run in two_orgs.values():
        expect(anonymous_page.locator(f'[data-run-id="{run.id}"]')).to_be_visible()
