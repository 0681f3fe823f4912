"""Door 2 of issue 11, tried as an attacker would: the server's connector credentials never reach a URL a
member or a remote service chooses. A local ``Listener`` stands in for the attacker and records every request
(headers and query); the stand-ins of Microsoft Graph and SAM.gov are configured connections with a token and
an API key. Real worker, on SQLite and on PostgreSQL + Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from backend.api.app import PREFIX, create_api
from backend.auth import users
from backend.auth.orgs import ensure_org
from backend.db.engine import in_transaction
from backend.db.models import Asset, ConnectorState
from backend.db.states import RunStatus
from backend.demo.servers import ForecastServer, GraphServer, Listener, SamServer
from backend.queues.dispatch import submit_run
from backend.runs.queries import get_logs, list_runs
from tests.api_client import ApiClient
from tests.support import wait_terminal

pytestmark = pytest.mark.integration

TOKEN = "graph-T0KEN-of-the-server"
KEY = "sam-K3Y-of-the-server"
ACME_KEY = "sam-K3Y-of-acme-only"
SECRETS = (TOKEN, KEY, ACME_KEY)
PASSWORD = "correct horse battery"


@dataclass
class World:
    graph: GraphServer
    sam: SamServer
    acme_sam: SamServer  # the endpoint of acme's own SAM.gov connection
    forecasts: ForecastServer
    attacker: Listener
    api: ApiClient
    tokens: dict[str, str]

    def submit(self, who: str, run_type: str, config: dict[str, Any], org: str) -> Any:
        return self.api.post(f"{PREFIX}/runs", json={"run_type": run_type, "config": config, "organization": org},
                             headers={"Authorization": f"Bearer {self.tokens[who]}"})


@pytest.fixture
def world(backend, org) -> Iterator[World]:  # type: ignore[no-untyped-def]
    """Connections as an operator configures them: the defaults (with the server's token and key) open to every
    organization, and acme's own SAM.gov connection; members of acme and of beta with API tokens."""
    servers = [GraphServer("drive-1", token=TOKEN, page_size=2), SamServer(api_key=KEY), SamServer(api_key=ACME_KEY),
               ForecastServer([{"id": "F1", "title": "Forecast 1"}]), Listener()]
    for server in servers:
        server.start()
    graph, sam, acme_sam, forecasts, attacker = servers
    acme_only = {"acme-sam": {"kind": "sam", "base_url": acme_sam.base_url, "api_key": ACME_KEY,
                              "organizations": ["acme"]}}
    backend.extend({
        "CURATORE_SHAREPOINT_BASE_URL": graph.base_url, "CURATORE_SHAREPOINT_TOKEN": TOKEN,
        "CURATORE_SAM_BASE_URL": sam.base_url, "CURATORE_SAM_API_KEY": KEY,
        "CURATORE_FORECAST_BASE_URL": forecasts.base_url, "CURATORE_CONNECTIONS": json.dumps(acme_only),
        "CURATORE_ALLOW_PRIVATE_FETCH": "true",  # every stand-in, the attacker too, is on 127.0.0.1
    })
    ensure_org("beta", "Beta")
    tokens = {}
    for who, slug in (("a_member", "acme"), ("b_member", "beta")):
        user = users.create_user(f"{who}@example.com", PASSWORD)
        users.set_role(user.id, ensure_org(slug).id, "member")
        tokens[who] = users.create_token(user.id, f"{who} token")[1]
    try:
        with ApiClient(create_api()) as api:
            yield World(graph, sam, acme_sam, forecasts, attacker, api, tokens)
    finally:
        for server in servers:
            server.stop()


def no_credential_reached(listener: Listener) -> None:
    """The listener got no Authorization header and none of the secrets, anywhere in a request."""
    for request in listener.requests:
        assert "authorization" not in request.headers, request
        seen = json.dumps([request.path, request.query, request.headers])
        assert not any(secret in seen for secret in SECRETS), request


def no_secret_shown(run: Any, worker: Any = None) -> None:
    """No secret in the run's error, results or log lines (nor in the worker's output)."""
    texts = [run.error_message or "", json.dumps(run.results_summary or {}, default=str)]
    texts += [f"{e.message} {json.dumps(e.context, default=str)}" for e in get_logs(run.id)]
    if worker is not None:
        texts.append(worker.output())
    for secret in SECRETS:
        assert not any(secret in text for text in texts), secret


def error_message(response: Any, status: int = 422) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == "invalid_config", body
    return body["message"]


def sync(org: Any, timeout: float = 90, **config: Any) -> Any:
    run = submit_run("sharepoint_sync", {"sync_config_id": "sync-1", "drive_id": "drive-1", **config},
                     organization_id=org.id)
    return wait_terminal(run.id, timeout)


def test_a_member_cannot_point_a_connector_at_a_url_of_their_own(world, start_worker):  # type: ignore
    worker = start_worker()
    here = world.attacker.base_url
    attempts = [
        ("sharepoint_sync", {"sync_config_id": "s", "drive_id": "d", "base_url": here}),
        ("sharepoint_sync", {"sync_config_id": "s", "drive_id": "d", "base_url": None}),
        ("sam_pull", {"search_id": "s", "base_url": here}),
        ("sam_refresh", {"search_id": "s", "notice_ids": ["n1"], "base_url": here}),
        ("forecast_sync", {"forecast_sync_id": "f", "base_url": here}),
        ("forecast_sync", {"forecast_sync_id": "f", "BASE_URL": here}),
    ]
    for run_type, config in attempts:
        message = error_message(world.submit("b_member", run_type, config, "beta"))
        assert "configure a connection" in message.lower() or "base_url" in message.lower(), message
    message = error_message(world.submit("b_member", "sam_pull", {"search_id": "s", "base_url": here}, "beta"))
    assert "cannot carry a base_url" in message and "connection" in message
    for smuggled in (here, "default@127.0.0.1", "../default", "Default", "default\n"):  # a URL where a name goes
        message = error_message(world.submit("b_member", "sam_pull", {"search_id": "s", "connection": smuggled},
                                             "beta"))
        assert "config.connection" in message, message
    assert list_runs() == [], "nothing was written"

    # a run that is allowed goes through the same worker: when it has ended, the refused ones would have too
    done = world.submit("b_member", "forecast_sync", {"forecast_sync_id": "f"}, "beta")
    assert done.status_code == 201, done.text
    run = wait_terminal(done.json()["id"], 90)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert [r.id for r in list_runs()] == [run.id]
    assert world.attacker.requests == []
    no_secret_shown(run, worker)


def test_a_connection_of_another_organization_is_refused(world, start_worker):  # type: ignore[no-untyped-def]
    start_worker()
    world.acme_sam.add_opportunity("n1", "Acme's opportunity")
    foreign = error_message(world.submit("b_member", "sam_pull", {"search_id": "s", "connection": "acme-sam"},
                                         "beta"))
    unknown = error_message(world.submit("b_member", "sam_pull", {"search_id": "s", "connection": "nope"}, "beta"))
    assert "it may use: default." in foreign and "acme-sam" not in foreign.replace("'acme-sam'", "")
    assert foreign.replace("acme-sam", "X") == unknown.replace("nope", "X"), "a foreign name looks like no name"
    assert not any(secret in foreign for secret in SECRETS)
    # the same through a pipeline stage, which runs in beta's name
    stage = {"run_type": "sam_pull", "config": {"search_id": "s", "connection": "acme-sam"}}
    assert world.submit("b_member", "pipeline", {"stages": [stage]}, "beta").status_code == 422
    assert list_runs() == [] and world.acme_sam.requests == []

    # acme's member may use it, and its key goes to its endpoint (and only there)
    mine = world.submit("a_member", "sam_pull", {"search_id": "s", "connection": "acme-sam"}, "acme")
    assert mine.status_code == 201, mine.text
    run = wait_terminal(mine.json()["id"], 90)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert run.results_summary["opportunities"] == 1
    assert {r.query["api_key"] for r in world.acme_sam.requests} == {ACME_KEY}
    assert world.sam.requests == [] and world.attacker.requests == []
    no_secret_shown(run)


def test_graph_links_to_another_origin_are_refused_before_the_token_goes(backend, org, world, start_worker):  # type: ignore
    worker = start_worker()
    graph, attacker = world.graph, world.attacker
    for n in range(1, 4):
        graph.put_file(f"/f{n}.txt", f"file {n}".encode())  # 4 items, 2 a page: a nextLink, then a deltaLink

    graph.next_link_root = attacker.root_url
    run = sync(org)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "@odata.nextLink" in run.error_message and "another origin" in run.error_message
    assert attacker.root_url.removeprefix("http://") in run.error_message  # it says where the link went
    assert attacker.requests == [] and len(graph.seen("/root/delta")) == 1
    no_secret_shown(run, worker)

    graph.next_link_root, graph.delta_link_root = None, attacker.root_url
    run = sync(org)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "@odata.deltaLink" in run.error_message and "refusing to follow it" in run.error_message
    assert attacker.requests == []
    saved = in_transaction(lambda s: s.execute(select(ConnectorState.state).where(
        ConnectorState.organization_id == org.id, ConnectorState.resource_id == "sync-1")).scalar_one())
    assert saved["delta_link"] is None, "the off-origin delta link was not kept for the next run"
    no_secret_shown(run, worker)

    # a link on the right host that carries credentials of its own is refused too (httpx would send them)
    graph.delta_link_root, graph.next_link_root = None, f"http://intruder:pw-in-url@{graph.root_url[7:]}"
    before = len(graph.requests)
    run = sync(org)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "embedded credentials" in run.error_message and "pw-in-url" not in run.error_message
    assert len(graph.requests) == before + 1, "only the first page was asked for"
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in graph.requests)  # it had the token
    assert not any("pw-in-url" in e.message for e in get_logs(run.id))
    no_secret_shown(run, worker)

    # a clean listing then works: the token was sent to Graph, and nothing ever reached the attacker
    graph.next_link_root = None
    run = sync(org)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert run.results_summary["downloaded"] == 3
    assert attacker.requests == []


def test_a_download_redirected_to_another_origin_works_without_the_token(backend, org, world,  # type: ignore
                                                                         start_worker):
    worker = start_worker()
    graph, attacker = world.graph, world.attacker
    graph.put_file("/report.txt", b"the real report")
    graph.download_root = attacker.root_url  # Graph's 302 goes to a pre-authenticated URL on another host
    run = sync(org)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert run.results_summary["downloaded"] == 1
    [download] = attacker.requests
    assert download.path.startswith("/v1.0/download/") and download.query["sig"]
    no_credential_reached(attacker)
    [asset] = in_transaction(lambda s: s.execute(select(Asset).where(
        Asset.organization_id == org.id, Asset.collection_id == "sync-1")).scalars().all())
    assert asset.size_bytes == len(attacker.response.body)  # the file came from the pre-authenticated URL
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in graph.requests)
    no_secret_shown(run, worker)


def test_sam_attachments_on_another_origin_are_fetched_without_the_key(backend, org, world,  # type: ignore
                                                                       start_worker):
    worker = start_worker()
    sam, attacker = world.sam, world.attacker
    sam.add_opportunity("n1", "Cloud hosting", attachments={"sow.txt": b"statement of work"})
    sam.add_opportunity("n2", "Help desk", attachments={"reqs.txt": b"requirements"})

    sam.attachment_root = attacker.root_url
    run = wait_terminal(submit_run("sam_pull", {"search_id": "s-1"}, organization_id=org.id).id, 90)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert (run.results_summary["attachments"], run.results_summary["downloaded"]) == (2, 2)
    assert len(attacker.requests) == 2
    assert {r.query["api_key"] for r in attacker.requests} == {"null"}, "the placeholder stayed a placeholder"
    no_credential_reached(attacker)
    assert {r.query["api_key"] for r in sam.requests} == {KEY}  # the key went to SAM.gov's origin
    no_secret_shown(run, worker)

    # links with credentials of their own are not fetched at all: counted as failed, the run goes on
    sam.attachment_root = f"http://intruder:pw-in-url@{attacker.root_url[7:]}"
    run = wait_terminal(submit_run("sam_pull", {"search_id": "s-2"}, organization_id=org.id).id, 90)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert (run.results_summary["downloaded"], run.results_summary["failed"]) == (0, 2)
    failed = [e for e in get_logs(run.id) if e.event_type == "attachment_failed"]
    assert len(failed) == 2 and all("embedded credentials" in e.message for e in failed)
    assert not any("pw-in-url" in e.message for e in get_logs(run.id))
    assert len(attacker.requests) == 2, "nothing more reached the listener"
    no_secret_shown(run, worker)


def test_a_forecast_next_link_to_another_origin_is_not_followed(backend, org, world, start_worker):  # type: ignore
    start_worker()
    world.forecasts.records = [{"id": f"F{n}", "title": f"Forecast {n}"} for n in range(1, 6)]
    world.forecasts.next_link_root = world.attacker.root_url
    run = wait_terminal(submit_run("forecast_sync", {"forecast_sync_id": "f"}, organization_id=org.id).id, 90)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "another origin" in run.error_message and world.attacker.requests == []

