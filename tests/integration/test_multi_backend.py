"""Several web processes and workers sharing PostgreSQL and Redis (issue 17).

Two Reflex backend processes (``curatore serve --backend-only``) on two ports share client state and socket
ownership through Redis; two Celery workers serve two queues. Clients speaking Reflex's protocol
(``tests/reflex_client.py``) watch the same runs and the jobs list on each backend while the runs' steps are
released one by one: every client sees every step's progress and log line exactly once and the final status;
a client that reconnects to the other backend mid-run resumes without loss or duplicates; killing one backend
leaves the other's clients unaffected.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_URL, Backend, WorkerProcess
from tests.processes import ROOT, free_port, stop_group, wait_answering
from tests.reflex_client import ReflexClient, sign_in
from tests.support import run_async

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DETAIL = "curatore_ui.pages.job_detail_state.JobDetailState"
LIST = "curatore_ui.pages.jobs_list_state.JobsListState"
ADMIN = ("ops@multi.local", "a-multi-password")
STEPS = 6


class WebProcess:
    """``curatore serve --backend-only`` on a port of its own."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        argv = [sys.executable, "-m", "backend.cli", "serve", "--backend-only", "--port", str(self.port),
                "--host", "127.0.0.1", "--workers", "1"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        wait_answering(self.proc, self.url, self.log_path, timeout)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_group(self.proc, signal.SIGTERM, 10)


@pytest.fixture
def deployment(pg_backend: Backend, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """PostgreSQL, Redis, two workers on two queues, two web processes."""
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"job_types": {"test_steps_retry": {"queue": "extraction"}}}))
    pg_backend.extend({"CURATORE_JOB_MODULES": '["tests.jobs_for_tests"]',
                       "CURATORE_REGISTRY_OVERRIDES": str(overrides),
                       "CURATORE_PROGRESS_MIN_INTERVAL": "0",
                       "CURATORE_LIVE_POLL_SECONDS": "0.5"})
    from backend.auth.orgs import ensure_org
    from backend.auth.users import create_user

    create_user(*ADMIN, system_admin=True)
    org = ensure_org("demo", "Demo")
    reflex_redis = REDIS_URL.rsplit("/", 1)[0] + "/12"
    from backend.devserver import reflex_env

    env = {**reflex_env(), **pg_backend.env, "REFLEX_REDIS_URL": reflex_redis, "PYTHONUNBUFFERED": "1"}
    workers = [WorkerProcess(pg_backend, tmp_path / "worker-default.log", queues="default"),
               WorkerProcess(pg_backend, tmp_path / "worker-extraction.log", queues="extraction")]
    webs = [WebProcess(env, tmp_path / "web-1.log"), WebProcess(env, tmp_path / "web-2.log")]
    try:
        for w in workers:
            w.wait_ready()
        for web in webs:
            web.wait_ready()
        yield {"org": org, "workers": workers, "webs": webs, "gates": tmp_path / "gates"}
    finally:
        for web in webs:
            web.stop()
        for w in workers:
            w.stop()


def _log_ids(client: ReflexClient) -> list[list[int]]:
    """Every ``logs`` value the client received, as lists of log line ids."""
    from tests.reflex_client import substate

    key = substate(DETAIL)
    return [[line["id"] for line in u.delta[key]["logs_rx_state_"]]
            for u in client.updates if "logs_rx_state_" in (u.delta.get(key) or {})]


def _messages(client: ReflexClient) -> list[str]:
    return [line["message"] for line in client.var(DETAIL, "logs", [])]


def _step_shown(n: int):  # type: ignore[no-untyped-def]
    def shown(c: ReflexClient) -> bool:
        run = c.var(DETAIL, "run") or {}
        return run.get("counter", "").startswith(f"{n} / {STEPS}") and f"Step {n} of {STEPS} done" in _messages(c)
    return shown


def _completed(c: ReflexClient) -> bool:
    return (c.var(DETAIL, "run") or {}).get("status") == "completed"


def _list_shows(run_ids: set[str], status: str):  # type: ignore[no-untyped-def]
    def shows(c: ReflexClient) -> bool:
        rows = {r["id"]: r["status"] for r in c.var(LIST, "rows", [])}
        return all(rows.get(r) == status for r in run_ids)
    return shows


def test_two_web_processes_two_workers_every_event_once_through_reconnects_and_a_killed_backend(
        deployment: dict[str, Any]) -> None:
    from backend.queues.dispatch import submit_run

    web1, web2 = deployment["webs"]
    gates = {"default": deployment["gates"] / "default", "extraction": deployment["gates"] / "extraction"}
    for gate in gates.values():
        gate.mkdir(parents=True)
    runs = {
        "default": submit_run("test_steps", {"steps": STEPS, "gate_dir": str(gates["default"])},
                              organization_id=deployment["org"].id),
        "extraction": submit_run("test_steps_retry", {"steps": STEPS, "gate_dir": str(gates["extraction"])},
                                 organization_id=deployment["org"].id),
    }
    run_ids = {str(r.id) for r in runs.values()}
    cookie = sign_in(web1.url, *ADMIN)  # one session, valid on every web process (it lives in the database)

    async def scenario() -> dict[str, Any]:
        detail = {(queue, n): ReflexClient(web.url, f"/system/jobs/{run.id}", cookie)
                  for queue, run in runs.items() for n, web in ((1, web1), (2, web2))}
        lists = {n: ReflexClient(web.url, "/system/jobs", cookie) for n, web in ((1, web1), (2, web2))}
        everyone = [*detail.values(), *lists.values()]
        await asyncio.gather(*[c.connect() for c in everyone])
        await asyncio.gather(*[c.wait_for(lambda c: c.var(DETAIL, "run") and c.var(DETAIL, "run")["id"], 30)
                               for c in detail.values()])
        await asyncio.gather(*[c.wait_for(_list_shows(run_ids, "running"), 60) for c in lists.values()])
        moved = None
        for n in range(1, STEPS + 1):
            if n == 3:
                # A browser on web 1 loses its socket and reconnects to web 2 with the same tab token.
                old = detail[("default", 1)]
                await old.disconnect()
                moved = ReflexClient(web2.url, old.path, cookie, token=old.token)
                await moved.connect()
                detail[("default", 1)] = moved
            if n == 4:  # web 1 dies: its clients go with it; web 2's carry on
                web1.kill()
                for key in [k for k in detail if k[1] == 1 and detail[k] is not moved]:
                    del detail[key]
                del lists[1]
            for gate in gates.values():
                (gate / str(n)).touch()
            await asyncio.gather(*[c.wait_for(_step_shown(n), 30) for c in detail.values()])
        await asyncio.gather(*[c.wait_for(_completed, 30) for c in detail.values()])
        await asyncio.gather(*[c.wait_for(_list_shows(run_ids, "completed"), 30) for c in lists.values()])
        out = {"detail": dict(detail), "lists": dict(lists), "moved": moved}
        await asyncio.gather(*[c.disconnect() for c in [*detail.values(), *lists.values()]], return_exceptions=True)
        return out

    seen = run_async(scenario)
    assert seen["moved"] is not None and seen["detail"][("default", 1)] is seen["moved"]
    for (queue, web), client in seen["detail"].items():
        messages = _messages(client)
        assert messages.count(f"Step {STEPS} of {STEPS} done") == 1, (queue, web, messages)
        for n in range(1, STEPS + 1):
            assert messages.count(f"Step {n} of {STEPS} done") == 1, (queue, web, n, messages)
        appeared: list[int] = []  # each line arrives once: it never vanishes and comes back
        previous: set[int] = set()
        for ids in _log_ids(client):
            assert len(ids) == len(set(ids)), (queue, web, ids)  # no line twice in anything shown
            assert ids == sorted(ids), (queue, web, ids)
            appeared += [i for i in ids if i not in previous]
            previous = set(ids)
        assert len(appeared) == len(set(appeared)), (queue, web, appeared)
        assert (client.var(DETAIL, "run") or {}).get("status") == "completed"
    # Progress: each step was shown by every client still connected (the loop above waited for it), and the
    # clients on web 2 saw the steps in order, each once.
    from tests.reflex_client import substate

    key = substate(DETAIL)
    for (queue, web), client in seen["detail"].items():
        shown = [u.delta[key]["run_rx_state_"]["counter"] for u in client.updates
                 if "run_rx_state_" in (u.delta.get(key) or {})]
        steps = [int(c.split(" / ")[0]) for c in shown if c]
        assert steps == sorted(steps), (queue, web, steps)
        assert steps[-1] == STEPS
    for n, client in seen["lists"].items():
        assert _list_shows(run_ids, "completed")(client), n
    assert web2.proc.poll() is None  # the surviving web process is still up
