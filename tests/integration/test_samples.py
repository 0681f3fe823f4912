"""The sample jobs a newcomer starts from the jobs page: one of every job type, and all of them succeed."""

from __future__ import annotations

import os
import socket

import pytest

from backend.db.states import RunStatus
from backend.demo import servers as devservers
from backend.demo.samples import start_samples
from backend.jobtypes.registry import get_registry
from backend.runs.queries import RunFilter, list_runs
from tests.conftest import reset_process_state
from tests.support import wait_for

pytestmark = pytest.mark.integration


def _free_ports(n: int) -> int:
    for base in range(21000, 60000, 17):
        try:
            sockets = [socket.create_server(("127.0.0.1", base + i)) for i in range(n)]
        except OSError:
            continue
        for s in sockets:
            s.close()
        return base
    raise RuntimeError("no free ports")


@pytest.fixture
def demo_servers(backend):  # type: ignore[no-untyped-def]
    if backend.kind != "sqlite":
        pytest.skip("the samples run on the embedded default, as ./scripts/dev runs them")
    base = _free_ports(4)
    servers = [devservers.sample_graph(), devservers.sample_sam(), devservers.sample_forecasts(),
               devservers.SiteServer()]
    for i, server in enumerate(servers):
        server.start(port=base + i)
    env = {**devservers.demo_environment(base, os.environ), "CURATORE_ALLOW_PRIVATE_FETCH": "true"}  # as `curatore dev`
    backend.env.update(env)
    os.environ.update(env)
    reset_process_state()
    yield backend
    for key in env:
        os.environ.pop(key, None)
    for server in servers:
        server.stop()


def test_samples_cover_every_job_type_and_succeed(demo_servers, start_worker):  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org, system_org

    start_worker(concurrency=4)
    started = start_samples(ensure_org("demo").id, system_admin=True)  # the health check is a system admin's
    builtin = {t.key for t in get_registry().types.values() if t.key in {
        "extraction", "upload", "sharepoint_sync", "sam_pull", "sam_refresh", "scrape", "salesforce_import",
        "forecast_sync", "procedure", "pipeline", "deletion", "system_maintenance"}}
    assert {r.run_type for r in started} == builtin and len(builtin) == 12
    [health] = [r for r in started if r.run_type == "system_maintenance"]
    assert health.organization_id == system_org().id  # a system run, not the demo organization's

    def all_ended():  # type: ignore[no-untyped-def]
        runs = list_runs(RunFilter(), limit=500)
        return runs if all(RunStatus(r.status).is_terminal for r in runs) else None

    runs = wait_for(all_ended, timeout=180, what="every sample run to end")
    failed = {r.display_name: r.error_message for r in runs if RunStatus(r.status) is not RunStatus.COMPLETED}
    assert failed == {}
    assert len(runs) > len(started)  # children: extractions of uploads, syncs, pulls; pipeline stages
