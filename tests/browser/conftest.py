"""The app as the README runs it (the Reflex production build on one port, a real worker) and a real
headless Chromium driven by Playwright."""

from __future__ import annotations

import re

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import CI, Backend, WorkerProcess, reset_process_state, restore_environ
from tests.processes import ROOT, UIProcess, free_port

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        if CI:
            pytest.fail("CI=true and Debian's chromium is not installed")
        pytest.skip("Debian's chromium is not installed (./scripts/test installs it when run as root)")
    return path


@pytest.fixture(scope="session")
def app_backend(tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path) -> Iterator[Backend]:
    """The embedded default, as `./scripts/dev` uses it, in a folder of its own."""
    data_dir = tmp_path_factory.mktemp("app") / "data"
    data_dir.mkdir()
    shutil.copy(_sqlite_template, data_dir / "curatore.db")
    overrides = data_dir / "overrides.json"  # children one at a time, so a child grid visibly counts up
    overrides.write_text('{"queues": {"extraction": {"max_concurrency": 1}}, '
                         '"job_types": {"deletion": {"timeout_seconds": 600}}}')  # the queue page shows both
    graph_port = free_port()  # the default SharePoint connection: test_sync_page.py serves a drive there
    backend = Backend("sqlite", f"sqlite:///{data_dir / 'curatore.db'}",
                      f"curatore-sqla+sqlite:///{data_dir / 'broker.db'}", None, data_dir)
    backend.env = {
        "CURATORE_ENV": "test",
        "CURATORE_DATA_DIR": str(data_dir),
        "CURATORE_DATABASE_URL": backend.database_url,
        "CURATORE_BROKER_URL": backend.broker_url,
        "CURATORE_JOB_MODULES": '["tests.jobs_for_tests", "tests.browser.test_panels"]',
        "CURATORE_HEARTBEAT_SECONDS": "1",
        "CURATORE_PROGRESS_MIN_INTERVAL": "0.05",
        "CURATORE_LIVE_POLL_SECONDS": "0.1",  # no Redis here: the UI polls; a child grid shows each child end
        "CURATORE_ALLOW_PRIVATE_FETCH": "true",
        "CURATORE_LOGIN_BACKOFF_SECONDS": "4",  # test_sessions.py waits out a lockout
        "CURATORE_REGISTRY_OVERRIDES": str(overrides),
        "CURATORE_SHAREPOINT_BASE_URL": f"http://127.0.0.1:{graph_port}/v1.0",
        "PYTHONPATH": str(ROOT),
    }
    with _applied(backend):
        from backend.auth.orgs import ensure_org
        from backend.auth.users import create_user, set_role

        admin = create_user(ADMIN[0], ADMIN[1], system_admin=True)
        set_role(admin.id, ensure_org("demo").id, "admin")
    yield backend


@contextmanager
def _applied(backend: Backend) -> Iterator[None]:
    """The app's environment in this process, restored afterwards (other suites must not inherit it)."""
    saved = {k: os.environ.get(k) for k in [*backend.env, "CURATORE_REDIS_URL"]}
    backend.apply()
    try:
        yield
    finally:
        restore_environ(saved)
        reset_process_state()


@pytest.fixture(autouse=True)
def _app_environment(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each browser test talks to the app's database and registry from this process too."""
    if "app_backend" not in request.fixturenames and "app" not in request.fixturenames:
        yield
        return
    with _applied(request.getfixturevalue("app_backend")):
        yield


@pytest.fixture(scope="session")
def app(app_backend: Backend, tmp_path_factory: pytest.TempPathFactory, chromium_path: str) -> Iterator[UIProcess]:
    logs = tmp_path_factory.mktemp("logs")
    worker = WorkerProcess(app_backend, logs / "worker.log", concurrency=3)
    ui = UIProcess(app_backend.env, free_port(), logs / "ui.log")
    try:
        worker.wait_ready()
        ui.start()
        yield ui
    finally:
        ui.stop()
        worker.stop()


@pytest.fixture(scope="session")
def browser(chromium_path: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


ADMIN = ("admin@test.local", "a-test-password")


def log_in(page, base_url: str, email: str, password: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base_url}/login")
    page.fill("[data-testid=login-email]", email)
    page.fill("[data-testid=login-password]", password)
    page.click("[data-testid=login-submit]")
    page.wait_for_selector("[data-testid=signed-in-as]")


def log_out(page) -> None:  # type: ignore[no-untyped-def]
    """Sign out and wait for the sign-out's own navigation to `/login`, so a `goto` after it is not aborted."""
    page.click("[data-testid=logout]")
    page.wait_for_url(re.compile(r".*/login/?$"))


@pytest.fixture
def anonymous_page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    yield page
    context.close()


@pytest.fixture
def page(anonymous_page, app):  # type: ignore[no-untyped-def]
    """A browser page signed in as a system admin."""
    log_in(anonymous_page, app.url, *ADMIN)
    return anonymous_page
