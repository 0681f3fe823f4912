"""Sessions in real Chromium, tried as an attacker would (issue 15, item 1): the session cookie is out of
page scripts' reach and never in a websocket frame; a browser given only an old client token gets the login
page and none of the old state; a disabled user's open page loses access at its next event (and their API token
gets 401); repeated failures lock sign-in, even with the right password, until the backoff ends."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ADMIN, _applied, log_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

COOKIE = "curatore_session"
SHOTS = Path(os.environ.get("CURATORE_SHOTS_DIR", "/tmp"))  # where the Members and Audit pages are photographed


@pytest.fixture(scope="module")
def people(app_backend):  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org
    from backend.auth.users import create_token, create_user, set_role
    from backend.runs.service import create_run

    with _applied(app_backend):
        demo = ensure_org("demo")
        dora = create_user("dora@demo.test", "dora-password")
        set_role(dora.id, demo.id, "member")
        set_role(create_user("lock@demo.test", "lock-password").id, demo.id, "viewer")
        run = create_run("test_steps", {"steps": 1}, organization_id=demo.id, display_name="session-visible-run")
        _, token = create_token(dora.id, "dora's laptop")
    return {"run": run, "token": token}


def frames_of(page) -> list[str]:  # type: ignore[no-untyped-def]
    """Every websocket frame the page receives from now on, as text."""
    frames: list[str] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(f if isinstance(f, str)
                                                                                     else f.decode("latin-1"))))
    return frames


def test_the_session_is_http_only_and_a_client_token_alone_grants_nothing(app, browser, anonymous_page, people):  # type: ignore[no-untyped-def]
    page = anonymous_page
    frames = frames_of(page)
    log_in(page, app.url, *ADMIN)
    page.goto(f"{app.url}/system/jobs")
    expect(page.locator(f'[data-run-id="{people["run"].id}"]')).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert COOKIE not in page.evaluate("document.cookie") and cookie["value"] not in page.evaluate("document.cookie")
    assert len(frames) > 3 and not any(cookie["value"] in f for f in frames)  # never sent in a state delta
    assert not any(COOKIE in f for f in frames)
    token = page.evaluate("window.sessionStorage.getItem('token')")
    assert token
    page.close()  # the signed-in tab is gone; its Reflex client token is all the attacker has

    context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:
        context.add_init_script(f"window.sessionStorage.setItem('token', {json.dumps(token)})")
        thief = context.new_page()
        thief.set_default_timeout(20_000)
        stolen = frames_of(thief)
        thief.goto(f"{app.url}/system/jobs?token={token}")
        thief.wait_for_url("**/login?next=**")
        expect(thief.locator("[data-testid=login-email]")).to_be_visible()
        assert thief.evaluate("window.sessionStorage.getItem('token')") == token  # the old token was presented
        assert stolen and not any(ADMIN[0] in f or "session-visible-run" in f for f in stolen)  # nothing leaked
        expect(thief.locator("[data-testid=signed-in-as]")).to_have_count(0)
    finally:
        context.close()


def test_a_disabled_user_loses_their_open_page_at_its_next_event_and_their_token(app, browser, anonymous_page, people):  # type: ignore[no-untyped-def]
    from backend import actions
    from backend.auth.access import Principal
    from backend.auth.users import get_user

    page = anonymous_page
    log_in(page, app.url, "dora@demo.test", "dora-password")
    page.goto(f"{app.url}/orgs/demo/jobs")
    expect(page.locator(f'[data-run-id="{people["run"].id}"]')).to_be_visible()
    api = f"{app.url}/api/v1/ops/runs"
    assert httpx.get(api, headers={"Authorization": f"Bearer {people['token']}"}).status_code == 200

    admin_context = browser.new_context(viewport={"width": 1440, "height": 900})
    try:  # an admin disables her on the Members page
        admin = admin_context.new_page()
        admin.set_default_timeout(20_000)
        log_in(admin, app.url, *ADMIN)
        admin.goto(f"{app.url}/orgs/demo/members")
        row = admin.locator('[data-testid=member-row][data-email="dora@demo.test"]')
        row.locator("[data-testid=member-menu]").click()
        admin.locator("[data-testid=member-disable]").click()
        expect(admin.locator("[data-testid=members-notice]")).to_contain_text("dora@demo.test is disabled")
        expect(row).to_contain_text("Disabled")
        admin.screenshot(path=str(SHOTS / "members.png"))
        admin.goto(f"{app.url}/system/audit")  # account actions belong to no one organization
        expect(admin.locator("[data-testid=audit-row][data-action=user_disable]").first).to_be_visible()
        admin.screenshot(path=str(SHOTS / "audit.png"))
    finally:
        admin_context.close()

    assert httpx.get(api, headers={"Authorization": f"Bearer {people['token']}"}).status_code == 401
    page.locator("[data-testid=type-tab]").first.click()  # any event of the open page
    page.wait_for_url(re.compile(r".*/login\?next=/orgs/demo/jobs$"))
    expect(page.locator(f'[data-run-id="{people["run"].id}"]')).to_have_count(0)
    page.fill("[data-testid=login-email]", "dora@demo.test")
    page.fill("[data-testid=login-password]", "dora-password")
    page.click("[data-testid=login-submit]")
    expect(page.locator("[data-testid=login-error]")).to_have_text("That email and password do not match.")
    actions.set_user_disabled(Principal.of(get_user(ADMIN[0])), "dora@demo.test", False)


def test_repeated_failures_lock_sign_in_until_the_backoff_ends(app, anonymous_page, people):  # type: ignore[no-untyped-def]
    page = anonymous_page
    page.goto(f"{app.url}/login")

    def attempt(password: str):  # type: ignore[no-untyped-def]
        page.fill("[data-testid=login-email]", "lock@demo.test")
        page.fill("[data-testid=login-password]", password)
        with page.expect_navigation():
            page.click("[data-testid=login-submit]")
        return page.locator("[data-testid=login-error]")

    for n in range(5):
        expect(attempt(f"guess-{n}")).to_have_text("That email and password do not match.")
    error = attempt("lock-password")  # the right password, refused while locked
    expect(error).to_contain_text("Too many failed sign-ins; try again in")
    wait = int(re.fullmatch(r"Too many failed sign-ins; try again in (\d+) s\.", error.inner_text()).group(1))
    assert 0 < wait <= 4  # CURATORE_LOGIN_BACKOFF_SECONDS in the browser suite
    expect(attempt("lock-password")).to_contain_text("Too many failed sign-ins")
    expect(page.locator("[data-testid=signed-in-as]")).to_have_count(0)
    time.sleep(wait + 0.5)
    attempt("lock-password")
    expect(page.locator("[data-testid=signed-in-as]")).to_have_text("lock@demo.test")
