"""sharepoint_sync against a local Microsoft Graph stand-in, with a real worker, on SQLite and PostgreSQL:
delta listings across runs, downloads, child extractions, deletions, retries, permanent errors,
cancellation and the private-address guard. The stand-in is the default SharePoint connection
(``CURATORE_SHAREPOINT_BASE_URL``, in this process and the workers)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import Asset, ConnectorState
from backend.db.states import RunStatus
from backend.demo.servers import GraphServer
from backend.queues.dispatch import submit_run
from backend.runs.queries import RunFilter, get_logs, get_run, list_runs
from backend.runs.service import request_cancel
from tests.support import wait_for, wait_terminal

pytestmark = pytest.mark.integration

ALLOW_PRIVATE = {"CURATORE_ALLOW_PRIVATE_FETCH": "true"}
SYNC_ID = "sync-hr"


@pytest.fixture
def graph(backend):
    server = GraphServer("drive-1", page_size=2)
    server.start()
    backend.extend({"CURATORE_SHAREPOINT_BASE_URL": server.base_url})
    yield server
    server.stop()


def sync(org, graph, timeout=90, **config):
    run = submit_run("sharepoint_sync", {"sync_config_id": SYNC_ID, "drive_id": "drive-1", **config},
                     organization_id=org.id)
    return ended(run.id, graph, timeout)


def ended(run_id, server, timeout=90):
    try:
        return wait_terminal(run_id, timeout)
    except TimeoutError as exc:  # say where it stood
        run = get_run(run_id)
        lines = [f"{e.event_type}: {e.message}" for e in get_logs(run_id)][-15:]
        raise AssertionError(f"{exc}; status {run.status}, progress {run.progress}, log {lines}, "
                             f"requests {[r.target for r in server.requests][-10:]}") from None


def assets(org, live=True):
    query = select(Asset).where(Asset.organization_id == org.id, Asset.collection_id == SYNC_ID)
    query = query.where(Asset.deleted_at.is_(None) if live else Asset.deleted_at.is_not(None))
    return {a.filename: a for a in in_transaction(lambda s: s.execute(query).scalars().all())}


def state(org):
    return in_transaction(lambda s: s.execute(select(ConnectorState.state).where(
        ConnectorState.organization_id == org.id, ConnectorState.resource_id == SYNC_ID)).scalar_one())


def events(run_id, event_type):
    return [e for e in get_logs(run_id) if e.event_type == event_type]


def test_delta_sync_downloads_extracts_and_detects_deletions(backend, org, graph, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    files = [("a", "/a.txt", b"alpha report"), ("b", "/Docs/b.md", b"# Beta\n\nnotes"),
             ("c", "/Docs/Deep/c.csv", b"x,y\n1,2\n")]
    ids = {name: graph.put_file(path, body) for name, path, body in files}

    first = sync(org, graph)
    assert RunStatus(first.status) is RunStatus.COMPLETED, first.error_message
    r = first.results_summary
    assert (r["listed"], r["pages"], r["downloaded"], r["unchanged"]) == (6, 3, 3, 0)
    assert (r["deleted"], r["extractions"]) == (0, 3)
    assert r["full_resync"] is True and r["children"]["completed"] == 3
    children = list_runs(RunFilter(parent_run_id=first.id))
    assert sorted(c.run_type for c in children) == ["extraction"] * 3
    stored = assets(org)
    assert {a.external_id for a in stored.values()} == set(ids.values())
    assert all(a.extraction_status == "completed" for a in assets(org).values())  # the children ran on them
    assert assets(org)["a.txt"].extracted_text.strip() == "alpha report"
    phases = [e.context["phase"] for e in events(first.id, "phase")]
    assert phases == ["scanning", "syncing", "extracting", "detecting_deletions"]
    assert state(org)["delta_link"].startswith(graph.base_url)

    # changes: one file edited, one deleted, one added
    graph.put_file("/a.txt", b"alpha report, second edition")
    graph.delete("/Docs/b.md")
    ids["d"] = graph.put_file("/Docs/d.txt", b"delta")
    before = len(graph.seen("/content"))
    second = sync(org, graph)
    assert RunStatus(second.status) is RunStatus.COMPLETED, second.error_message
    r = second.results_summary
    assert (r["listed"], r["downloaded"], r["unchanged"], r["deleted"], r["extractions"]) == (3, 2, 0, 1, 2)
    assert r["full_resync"] is False
    deltas = graph.seen("/root/delta")
    assert deltas[-1].query["token"], "the second run followed the saved delta link"
    downloads = [req.path for req in graph.seen("/content")[before:]]
    assert sorted(downloads) == sorted(f"/v1.0/drives/drive-1/items/{ids[k]}/content" for k in ("a", "d"))
    live, gone = assets(org), assets(org, live=False)
    assert set(live) == {"a.txt", "c.csv", "d.txt"} and set(gone) == {"a.txt", "b.md"}
    assert live["a.txt"].size_bytes == len(b"alpha report, second edition")
    assert [e.context["item_id"] for e in events(second.id, "deleted")] == [ids["b"]]

    # a full resync notices a file that vanished without a deletion in the feed, and downloads nothing
    graph.forget("/Docs/Deep/c.csv")
    before = len(graph.seen("/content"))
    third = sync(org, graph, full_resync=True)
    assert RunStatus(third.status) is RunStatus.COMPLETED, third.error_message
    r = third.results_summary
    assert (r["downloaded"], r["unchanged"], r["deleted"], r["extractions"], r["full_resync"]) == (0, 2, 1, 0, True)
    assert len(graph.seen("/content")) == before
    assert set(assets(org)) == {"a.txt", "d.txt"}


def test_folder_scope_and_an_expired_delta_link(backend, org, graph, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    graph.put_file("/Docs/in.txt", b"inside")
    graph.put_file("/Docs/Sub/deeper.txt", b"deeper")
    graph.put_file("/Other/out.txt", b"outside")
    run = sync(org, graph, folder_path="/docs/")  # SharePoint paths are case-insensitive
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert run.results_summary["downloaded"] == 2 and set(assets(org)) == {"in.txt", "deeper.txt"}

    graph.expire_delta_links()  # the saved link now answers 410 Gone (resyncRequired)
    graph.put_file("/Docs/in.txt", b"inside, edited")
    run = sync(org, graph, folder_path="/docs/")
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    r = run.results_summary
    assert (r["full_resync"], r["downloaded"], r["unchanged"], r["deleted"]) == (True, 1, 1, 0)
    assert "resyncRequired" in events(run.id, "resync")[0].message
    assert assets(org)["in.txt"].size_bytes == len(b"inside, edited")


def test_5xx_and_429_are_retried_and_logged(backend, org, graph, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    graph.put_file("/one.txt", b"one")
    graph.put_file("/two.txt", b"two")
    graph.fail(r"/root/delta", 503, times=2)
    graph.fail(r"/content", 429, retry_after=1)

    run = sync(org, graph)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert run.results_summary["downloaded"] == 2
    retries = events(run.id, "retry")
    assert [e.context["reason"] for e in retries] == ["HTTP 503", "HTTP 503", "HTTP 429"]
    assert retries[-1].context["delay_seconds"] == 1.0 and "retrying in 1.0 s" in retries[-1].message
    content = graph.seen("/content")
    assert content[1].at - content[0].at >= 0.9, "waited as Retry-After asked"


def test_permanent_errors_fail_with_a_clear_message(backend, org, graph, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    graph.put_file("/one.txt", b"one")
    graph.token = "s3cret"  # the worker has no token configured
    run = sync(org, graph)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "HTTP 401 InvalidAuthenticationToken" in run.error_message
    assert "CURATORE_SHAREPOINT_TOKEN" in run.error_message
    assert len(graph.requests) == 1, "a 401 is not retried"

    graph.token = None
    run = sync(org, graph, drive_id="no-such-drive")
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "drive no-such-drive: not found (HTTP 404 itemNotFound" in run.error_message
    assert all(r.retry_of is None for r in list_runs()), "permanent errors get no automatic retry"


def test_cancel_mid_sync_stops_downloading_and_the_next_run_resumes(backend, org, graph, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    for n in range(1, 6):
        graph.put_file(f"/f{n}.txt", f"file {n}".encode())
    hold = graph.hold(r"/content", after=2)
    run = submit_run("sharepoint_sync", {"sync_config_id": SYNC_ID, "drive_id": "drive-1"}, organization_id=org.id)
    hold.wait_blocked(1)  # the third download is in flight
    assert request_cancel(run.id, by="tester") is RunStatus.CANCELLING
    hold.release()
    stopped = ended(run.id, graph)
    assert RunStatus(stopped.status) is RunStatus.CANCELLED
    assert len(graph.seen("/content")) == 3, "no download after the cancel"
    assert events(run.id, "cancelled")
    saved = state(org)
    assert saved["delta_link"] is None and len(saved["items"]) == 3
    assert not list_runs(RunFilter(parent_run_id=run.id))

    again = sync(org, graph)
    assert RunStatus(again.status) is RunStatus.COMPLETED, again.error_message
    r = again.results_summary
    assert (r["downloaded"], r["unchanged"], r["extractions"]) == (2, 3, 5), "stored files are extracted too"
    assert len(graph.seen("/content")) == 5
    wait_for(lambda: all(a.extraction_status == "completed" for a in assets(org).values()), what="extractions")


def test_private_addresses_are_refused_without_the_setting(backend, org, graph, start_worker, monkeypatch):
    monkeypatch.delenv("CURATORE_ALLOW_PRIVATE_FETCH", raising=False)
    start_worker()
    run = sync(org, graph, timeout=60)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "Refusing to fetch" in run.error_message and "internal address (127.0.0.1)" in run.error_message
    assert "CURATORE_ALLOW_PRIVATE_FETCH" in run.error_message
    assert graph.requests == []
