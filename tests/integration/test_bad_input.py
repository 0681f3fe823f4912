"""Services that are down: the broker, the database. Runs end failed with a clear message; the CLI says one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.config import get_settings, reset_settings
from backend.db.states import RunStatus
from backend.errors import BrokerUnavailable
from backend.jobtypes.registry import reset_registry
from backend.queues.dispatch import submit_run
from backend.runs.queries import get_logs, list_runs
from backend.storage.assets import store_bytes
from tests.conftest import _reset_celery_app

pytestmark = pytest.mark.integration


def free_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def point_broker_at(url: str) -> None:
    os.environ["CURATORE_BROKER_URL"] = url
    reset_settings()
    reset_registry()
    _reset_celery_app()


@pytest.fixture
def broker_down(backend) -> Iterator[str]:  # noqa: ANN001
    """The test's database as usual, but the broker URL names a closed local Redis port."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    point_broker_at(url)
    try:
        yield url
    finally:
        point_broker_at(backend.broker_url)


def run_cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=100)


def cli_env(backend, **overrides: str) -> dict[str, str]:  # noqa: ANN001
    env = {**os.environ, **backend.env, **overrides}
    if backend.redis_url is None:
        env.pop("CURATORE_REDIS_URL", None)
    return env


def assert_one_line_error(result: subprocess.CompletedProcess[str], starts: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {starts}"), lines[0]
    return lines[0]


# --------------------------------------------------------------------------- broker down


def test_broker_down_fails_the_run_clearly(backend, broker_down):
    from backend.auth.orgs import ensure_org

    assert get_settings().broker_url == broker_down
    org = ensure_org("acme")
    asset = store_bytes(org.id, "a.txt", b"hello")

    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as caught:
        submit_run("extraction", {"asset_id": str(asset.id)}, organization_id=org.id)
    elapsed = time.monotonic() - started
    print(f"submit_run gave up after {elapsed:.2f} s")  # bounded by the publish retry policy, not a hang

    message = caught.value.message
    [run] = list_runs()
    assert message.startswith("Could not reach the message broker (")
    assert message.endswith(f"The run was not started; retry it when the broker is back. (run {run.id})")
    assert caught.value.code == "broker_unavailable" and caught.value.http_status == 503
    assert caught.value.details == {"run_id": str(run.id)}

    assert RunStatus(run.status) is RunStatus.FAILED
    message = message.removesuffix(f" (run {run.id})")
    assert run.error_message == message
    assert run.completed_at is not None
    events = get_logs(run.id)
    assert events[-1].level.value == "ERROR" and message in events[-1].message


def test_broker_down_cli_says_one_line_and_leaves_no_run_pending(backend, broker_down, tmp_path):
    note = tmp_path / "note.txt"
    note.write_text("hello")
    env = cli_env(backend, CURATORE_BROKER_URL=broker_down)
    result = run_cli(env, tmp_path, "submit", "extraction", "--config", json.dumps({"path": str(note)}), "--wait")
    assert_one_line_error(result, "Could not reach the message broker (")
    [run] = list_runs()
    assert RunStatus(run.status) is RunStatus.FAILED
    assert run.error_message.startswith("Could not reach the message broker (")


def test_embedded_broker_that_cannot_open_its_file_fails_the_run(sqlite_backend, tmp_path):
    """The SQLite broker whose file cannot be created (its folder is a regular file)."""
    from backend.auth.orgs import ensure_org

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    point_broker_at(f"curatore-sqla+sqlite:///{blocker / 'broker.db'}")
    try:
        org = ensure_org("acme")
        asset = store_bytes(org.id, "a.txt", b"hello")
        with pytest.raises(BrokerUnavailable, match=r"^Could not reach the message broker \(OperationalError: "):
            submit_run("extraction", {"asset_id": str(asset.id)}, organization_id=org.id)
        [run] = list_runs()
        assert RunStatus(run.status) is RunStatus.FAILED
        assert run.error_message.startswith("Could not reach the message broker")
    finally:
        point_broker_at(sqlite_backend.broker_url)


# --------------------------------------------------------------------------- database down


@pytest.mark.parametrize(
    "args",
    [
        ("runs", "list"),
        ("runs", "show", "00000000-0000-0000-0000-000000000001"),
        ("orgs", "create", "team"),
        ("migrate",),
        ("submit", "extraction", "--config", "PATH"),
    ],
    ids=["runs-list", "runs-show", "orgs-create", "migrate", "submit"],
)
def test_database_down_cli_says_one_line(sqlite_backend, tmp_path, args):
    note = tmp_path / "note.txt"
    note.write_text("hello")
    args = tuple(json.dumps({"path": str(note)}) if a == "PATH" else a for a in args)
    env = cli_env(sqlite_backend, CURATORE_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x")
    started = time.monotonic()
    result = run_cli(env, tmp_path, *args)
    print(f"{' '.join(args[:2])}: {time.monotonic() - started:.2f} s")
    line = assert_one_line_error(result, "The database could not be reached: ")
    assert "Connection refused" in line
    assert result.stdout == ""
    assert not [p for p in sqlite_backend.data_dir.rglob("*") if "assets" in p.parts and p.is_file()]



def test_unmigrated_database_cli_says_run_migrate(sqlite_backend, tmp_path):
    env = cli_env(sqlite_backend, CURATORE_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.db'}")
    result = run_cli(env, tmp_path, "runs", "list")
    assert_one_line_error(result, "")
    assert "migrate" in result.stderr
