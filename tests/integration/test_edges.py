"""The web edges of the whole app (the Reflex backend with the API mounted, as ``reflex run`` composes it), and
the CLI's edges, tried as an attacker and a careless operator would: foreign websocket origins, cross-site
requests with credentials, framing, JSON errors for every ``/api`` path, ``/metrics`` from outside, control
characters in stored names, a short secret in prod."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from reflex.app import App
from starlette.applications import Starlette

from backend.api.app import PREFIX, create_api
from backend.api.edges import SECURITY_HEADERS
from backend.auth import users
from backend.auth.orgs import ensure_org
from backend.runs import service
from tests.api_client import ApiClient
from tests.conftest import reset_process_state, restore_environ
from tests.integration.test_api import error_of
from tests.integration.test_cli import assert_one_line_error, run_cli

pytestmark = pytest.mark.integration
EVIL = "https://evil.example"


def run_async(fn: Any, *args: Any) -> Any:
    """``anyio.run(fn, *args)`` in a thread of its own: an earlier test in this process (Playwright's sync API)
    may leave an event loop marked running in the main thread, where anyio.run would refuse to start."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(anyio.run, fn, *args).result()


def whole_app() -> Starlette:
    """The ASGI app as Reflex's ``App.__call__`` builds it around our ``api_transformer`` (minus compiling the
    pages): Reflex's CORS on the API app and on the top app, Reflex's own routes (the websocket) mounted last."""
    from curatore_ui.curatore_ui import app as rx_app

    api = create_api()
    App._add_cors(api)
    api.mount("", rx_app._api)
    top = Starlette()
    top.mount("", api)
    App._add_cors(top)
    return top


@pytest.fixture
def app_client(sqlite_backend) -> Iterator[ApiClient]:  # type: ignore[no-untyped-def]
    with ApiClient(whole_app()) as client:
        yield client


async def handshake(app: Any, origin: str | None) -> list[dict[str, Any]]:
    """A browser's websocket handshake to Reflex's event endpoint; what the server sent back."""
    sent: list[dict[str, Any]] = []
    answered = anyio.Event()
    inbox = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await answered.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        answered.set()

    headers = [(b"host", b"127.0.0.1:8000"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-version", b"13"), (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")]
    if origin:
        headers.append((b"origin", origin.encode()))
    scope = {"type": "websocket", "path": "/_event/", "raw_path": b"/_event/", "root_path": "", "scheme": "ws",
             "query_string": b"EIO=4&transport=websocket", "headers": headers, "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 50000), "subprotocols": [], "asgi": {"version": "3.0"}}
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(app, scope, receive, send)
            await answered.wait()
            inbox.append({"type": "websocket.disconnect", "code": 1000})
            tg.cancel_scope.cancel()
    return sent


@pytest.mark.parametrize(("origin", "accepted"), [
    (EVIL, False), ("http://127.0.0.1:8000.evil.example", False), ("null", False),
    ("http://localhost:3000", True), ("http://127.0.0.1:8000", True),
])
def test_the_websocket_refuses_a_foreign_origin(sqlite_backend, origin: str, accepted: bool) -> None:  # type: ignore
    first = run_async(handshake, whole_app(), origin)[0]
    assert first["type"] == ("websocket.accept" if accepted else "websocket.close"), first


def test_cors_from_a_foreign_origin_gets_no_allow_headers(app_client: ApiClient) -> None:
    preflight = app_client.request("OPTIONS", PREFIX + "/runs", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"})
    assert "access-control-allow-origin" not in preflight.headers
    simple = app_client.get("/api/v1/health", headers={"Origin": EVIL, "Cookie": "curatore_session=x"})
    assert simple.status_code == 200 and "access-control-allow-origin" not in simple.headers
    own = app_client.get("/api/v1/health", headers={"Origin": "http://localhost:3000"})
    assert own.headers["access-control-allow-origin"] == "http://localhost:3000"


@pytest.mark.parametrize("path", ["/api/v1/health", "/metrics", PREFIX + "/runs", PREFIX + "/nope", "/ping",
                                  "/_event/?EIO=4&transport=polling", "/no-such-page"])
def test_every_response_carries_the_security_headers(app_client: ApiClient, path: str) -> None:
    r = app_client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert r.headers.get(name) == value, (path, r.status_code, name)


@pytest.fixture
def token(sqlite_backend) -> str:  # type: ignore[no-untyped-def]
    org = ensure_org("acme", "Acme")
    user = users.create_user("edge@example.com", "correct horse battery")
    users.set_role(user.id, org.id, "admin")
    return users.create_token(user.id, "edge")[1]


@pytest.mark.parametrize(("method", "path", "status", "code", "allow"), [
    ("GET", "/nope", 404, "not_found", None),
    ("GET", "/runs/x/y/z", 404, "not_found", None),
    ("DELETE", "/runs", 405, "method_not_allowed", "GET, POST"),
    ("PUT", "/registry", 405, "method_not_allowed", "GET"),
    ("GET", "/runs/bulk-cancel", 405, "method_not_allowed", "POST"),
    ("GET", "/schedules/x/enable", 405, "method_not_allowed", "POST"),
])
def test_every_api_path_answers_json(app_client: ApiClient, token: str, method: str, path: str, status: int,
                                     code: str, allow: str | None) -> None:
    r = app_client.request(method, PREFIX + path, headers={"Authorization": f"Bearer {token}"})
    error_of(r, status, code)
    assert r.headers.get("allow") == allow
    error_of(app_client.get("/api/v2/whatever"), 404, "not_found")
    error_of(app_client.request("PATCH", "/api/v1/health"), 405, "method_not_allowed")


@pytest.fixture
def env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Set CURATORE_ variables for one test (reset_process_state re-reads them)."""
    changed: dict[str, str] = {}
    saved: dict[str, str | None] = {}

    def set_env(**values: str) -> None:
        for k, v in values.items():
            saved.setdefault(k, os.environ.get(k))
            os.environ[k] = changed[k] = v
        reset_process_state()

    request.node.set_env = set_env
    yield changed
    restore_environ(saved)
    reset_process_state()


def metrics_from(client_addr: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_api(), client=(client_addr, 40000))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.get("/metrics", headers=headers or {})

    return run_async(get)


def test_metrics_take_only_the_token_or_an_allowed_address(sqlite_backend, env, request) -> None:  # type: ignore
    assert metrics_from("127.0.0.1").status_code == 200
    error_of(metrics_from("203.0.113.9"), 403, "forbidden")
    request.node.set_env(CURATORE_METRICS_TOKEN="scrape-" + "s" * 32, CURATORE_METRICS_ALLOW='["10.0.0.0/8"]')
    error_of(metrics_from("203.0.113.9", {"Authorization": "Bearer scrape-guess"}), 403, "forbidden")
    error_of(metrics_from("127.0.0.1"), 403, "forbidden")  # loopback is no longer in the list
    ok = metrics_from("203.0.113.9", {"Authorization": "Bearer scrape-" + "s" * 32})
    assert ok.status_code == 200 and "curatore_database_up" in ok.text
    assert metrics_from("10.2.3.4").status_code == 200


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


@pytest.mark.parametrize("secret", ["", "short", "dev-insecure-secret-change-me"])
def test_prod_with_a_weak_secret_refuses_in_one_line(sqlite_backend, workdir, secret: str) -> None:  # type: ignore
    sqlite_backend.env.update(CURATORE_ENV="prod", CURATORE_SECRET_KEY=secret)
    for args in (("runs", "list"), ("worker",), ("migrate",)):
        assert_one_line_error(run_cli(sqlite_backend, workdir, *args), "CURATORE_SECRET_KEY must be")


def test_other_invalid_settings_refuse_in_one_line(sqlite_backend, workdir) -> None:  # type: ignore[no-untyped-def]
    sqlite_backend.env.update(CURATORE_HEARTBEAT_SECONDS="soon", CURATORE_METRICS_ALLOW='["not-a-net"]')
    line = assert_one_line_error(run_cli(sqlite_backend, workdir, "runs", "list"), "")
    assert "CURATORE_" in line
    sqlite_backend.env.pop("CURATORE_METRICS_ALLOW")
    line = assert_one_line_error(run_cli(sqlite_backend, workdir, "runs", "list"), "invalid settings:")
    assert "CURATORE_HEARTBEAT_SECONDS" in line and "soon" not in line


def test_the_cli_prints_stored_text_escaped(sqlite_backend, workdir) -> None:  # type: ignore[no-untyped-def]
    org = ensure_org("acme", "Acme")
    sqlite_backend.env["CURATORE_JOB_MODULES"] = '["tests.jobs_for_queues"]'
    os.environ["CURATORE_JOB_MODULES"] = '["tests.jobs_for_queues"]'
    reset_process_state()
    try:
        run = service.create_run("q_work", {"ms": 1}, organization_id=org.id,
                                 display_name="invoice\x1b[31m\x07\u202etxt.exe")
        service.add_log(run.id, "INFO", "note", "line\x1b]0;pwned\x07\rfake")
    finally:
        os.environ.pop("CURATORE_JOB_MODULES")
        reset_process_state()
    for args in (("runs", "list"), ("runs", "show", str(run.id))):
        out = run_cli(sqlite_backend, workdir, *args)
        assert out.returncode == 0, out.stderr
        assert not any(c in out.stdout for c in "\x1b\x07\r\u202e"), repr(out.stdout)
        assert "invoice\\x1b[31m\\x07\\u202etxt.exe" in out.stdout
    assert "line\\x1b]0;pwned\\x07\\x0dfake" in out.stdout


def test_runs_list_of_an_unknown_type_is_an_error(sqlite_backend, workdir) -> None:  # type: ignore[no-untyped-def]
    line = assert_one_line_error(run_cli(sqlite_backend, workdir, "runs", "list", "--type", "nope"),
                                 "Unknown run type 'nope'. Known types:")
    assert "extract" in line or "," in line


def test_a_config_nested_10000_levels_is_one_line(sqlite_backend, workdir) -> None:  # type: ignore[no-untyped-def]
    deep = "[" * 10_000 + "]" * 10_000
    assert_one_line_error(run_cli(sqlite_backend, workdir, "submit", "q_work", "--config", deep), "--config is")
