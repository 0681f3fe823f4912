"""Health checks a deployment's supervisor and load balancer use: ``GET /healthz`` on every web process and
``curatore health [--worker NODE]`` for a worker's liveness."""

from __future__ import annotations

import re

import pytest

from tests.api_client import ApiClient
from tests.conftest import Backend
from tests.integration.test_cli import run_cli
from tests.processes import free_port

pytestmark = pytest.mark.integration


def test_healthz_answers_ok_while_the_database_answers(backend: Backend) -> None:
    from backend.api.app import create_api

    client = ApiClient(create_api())
    try:
        response = client.get("/healthz")
    finally:
        client.close()
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_healthz_is_503_with_a_reason_when_the_database_is_away(pg_backend: Backend) -> None:
    from backend.api.app import create_api

    pg_backend.extend({"CURATORE_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"})
    client = ApiClient(create_api(), raise_app_exceptions=False)
    try:
        response = client.get("/healthz")
    finally:
        client.close()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and "database" in body["database"].lower()


def test_health_command_names_a_live_worker_and_refuses_an_unknown_one(backend, worker, tmp_path) -> None:
    from backend.queues.workers import online
    from tests.support import wait_for

    node = wait_for(lambda: online(), what="the worker to report")[0]["hostname"]
    ok = run_cli(backend, tmp_path, "health", "--worker", node)
    assert ok.returncode == 0, ok.stderr
    assert re.match(r"healthy: database and worker ", ok.stdout)
    gone = run_cli(backend, tmp_path, "health", "--worker", "nobody@nowhere")
    assert gone.returncode == 1
    assert gone.stderr.startswith("unhealthy: worker nobody@nowhere has not reported")
    plain = run_cli(backend, tmp_path, "health")
    assert plain.returncode == 0 and plain.stdout.strip() == "healthy: database"
