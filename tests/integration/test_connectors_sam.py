"""sam_pull and sam_refresh against a local SAM.gov opportunities API, with a real worker, on SQLite and
PostgreSQL: paging, records, attachments and their extractions, refresh, retries, permanent errors,
cancellation and the private-address guard. The stand-in is the default SAM.gov connection
(``CURATORE_SAM_BASE_URL``, in this process and the workers)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import Asset, ExternalRecord
from backend.db.states import RunStatus
from backend.demo.servers import SamServer
from backend.queues.dispatch import submit_run
from backend.runs.queries import RunFilter, get_logs, get_run, list_runs
from backend.runs.service import request_cancel
from tests.support import wait_terminal

pytestmark = pytest.mark.integration

ALLOW_PRIVATE = {"CURATORE_ALLOW_PRIVATE_FETCH": "true"}
SEARCH = "search-cloud"


@pytest.fixture
def sam(backend):
    server = SamServer(max_limit=2)  # the server caps pages at 2 opportunities, whatever the client asks
    server.start()
    backend.extend({"CURATORE_SAM_BASE_URL": server.base_url})
    yield server
    server.stop()


def start(org, sam, run_type="sam_pull", **config):
    return submit_run(run_type, {"search_id": SEARCH, **config}, organization_id=org.id)


def ended(run_id, server, timeout=90):
    try:
        return wait_terminal(run_id, timeout)
    except TimeoutError as exc:
        run = get_run(run_id)
        lines = [f"{e.event_type}: {e.message}" for e in get_logs(run_id)][-15:]
        raise AssertionError(f"{exc}; status {run.status}, progress {run.progress}, log {lines}, "
                             f"requests {[r.target for r in server.requests][-10:]}") from None


def pull(org, sam, run_type="sam_pull", **config):
    return ended(start(org, sam, run_type, **config).id, sam)


def records(org):
    rows = in_transaction(lambda s: s.execute(select(ExternalRecord).where(
        ExternalRecord.organization_id == org.id, ExternalRecord.source == "sam")).scalars().all())
    return {r.external_id: r for r in rows}


def assets(org):
    rows = in_transaction(lambda s: s.execute(select(Asset).where(
        Asset.organization_id == org.id, Asset.collection_id == SEARCH, Asset.deleted_at.is_(None))).scalars().all())
    return {a.filename: a for a in rows}


def events(run_id, event_type):
    return [e for e in get_logs(run_id) if e.event_type == event_type]


def test_pull_pages_records_attachments_and_refresh(backend, org, sam, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    sam.add_opportunity("n1", "Cloud hosting",
                        attachments={"sow.txt": b"statement of work", "prices.csv": b"a,b\n1,2\n"})
    sam.add_opportunity("n2", "Help desk", naics="541513", attachments={"requirements.md": b"# Requirements\n24x7"})
    for n in (3, 4, 5):
        sam.add_opportunity(f"n{n}", f"Opportunity {n}")
    sam.add_opportunity("old", "Posted long ago", posted=date.today() - timedelta(days=90))

    run = pull(org, sam)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    r = run.results_summary
    assert (r["opportunities"], r["new"], r["updated"], r["pages"], r["total_records"]) == (5, 5, 0, 3, 5)
    assert (r["attachments"], r["downloaded"], r["failed"], r["extractions"]) == (3, 3, 0, 3)
    assert r["children"]["completed"] == 3
    searches = sam.seen("/opportunities/v2/search")
    assert [q.query["offset"] for q in searches] == ["0", "2", "4"]
    today = date.today()
    assert searches[0].query["postedTo"] == today.strftime("%m/%d/%Y")
    assert searches[0].query["postedFrom"] == (today - timedelta(days=30)).strftime("%m/%d/%Y")
    saved = records(org)
    assert set(saved) == {"n1", "n2", "n3", "n4", "n5"} and {x.resource_id for x in saved.values()} == {SEARCH}
    assert saved["n1"].title == "Cloud hosting" and saved["n1"].data["solicitationNumber"] == "SOL-N1"
    files = assets(org)
    assert set(files) == {"sow.txt", "prices.csv", "requirements.md"}
    assert sorted(saved["n1"].asset_ids) == sorted(str(files[f].id) for f in ("sow.txt", "prices.csv"))
    assert files["sow.txt"].extracted_text.strip() == "statement of work"
    children = list_runs(RunFilter(parent_run_id=run.id))
    assert sorted(c.display_name for c in children) == ["prices.csv", "requirements.md", "sow.txt"]
    assert [e.context["phase"] for e in events(run.id, "phase")] == ["fetching", "downloading", "extracting"]

    # a second pull, cut short by max_pages: records updated, attachments not downloaded again
    downloads = len(sam.seen("/download"))
    run = pull(org, sam, max_pages=2)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    r = run.results_summary
    assert (r["opportunities"], r["new"], r["updated"], r["already_stored"], r["downloaded"]) == (4, 0, 4, 3, 0)
    assert events(run.id, "truncated")[0].context["remaining"] == 1
    assert len(sam.seen("/download")) == downloads

    # a refresh re-reads known notices by id, in the window of their own posted date
    sam.opportunities["n1"]["title"] = "Cloud hosting (amended)"
    run = pull(org, sam, "sam_refresh", notice_ids=["n1", "never-posted"])
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    r = run.results_summary
    assert (r["opportunities"], r["updated"], r["missing"], r["downloaded"]) == (1, 1, 1, 0)
    assert records(org)["n1"].title == "Cloud hosting (amended)"
    by_id = sam.seen("noticeid=n1")[-1].query
    assert by_id["postedFrom"] == by_id["postedTo"] == today.strftime("%m/%d/%Y")
    assert "never-posted" in events(run.id, "missing")[0].message


def test_retries_and_a_missing_attachment_do_not_fail_the_pull(backend, org, sam, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    sam.add_opportunity("n1", "Cloud hosting", attachments={"sow.txt": b"statement of work", "gone.txt": b"x"})
    del sam.files["n1-002"]  # its link answers 404
    sam.fail(r"/opportunities/v2/search", 500, times=2)
    sam.fail(r"/download", 429, retry_after=1)

    run = pull(org, sam)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    r = run.results_summary
    assert (r["opportunities"], r["downloaded"], r["failed"]) == (1, 1, 1)
    assert [e.context["reason"] for e in events(run.id, "retry")] == ["HTTP 500", "HTTP 500", "HTTP 429"]
    assert events(run.id, "retry")[-1].context["delay_seconds"] == 1.0
    failed = events(run.id, "attachment_failed")
    assert len(failed) == 1 and failed[0].context["status"] == 404 and "HTTP 404" in failed[0].message
    sow = sam.seen("n1-001")
    assert len(sow) == 2 and sow[1].at - sow[0].at >= 0.9, "waited as Retry-After asked"


def test_permanent_errors_fail_with_a_clear_message(backend, org, sam, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    sam.add_opportunity("n1", "Cloud hosting")
    sam.api_key = "the-right-key"  # the worker has none
    run = pull(org, sam)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "SAM.gov refused searching (HTTP 403 API_KEY_MISSING" in run.error_message
    assert "CURATORE_SAM_API_KEY" in run.error_message
    assert len(sam.requests) == 1, "a 403 is not retried"

    sam.api_key = None
    run = pull(org, sam, posted_from="2020-01-01", posted_to="2024-01-01")
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "at most 365 days" in run.error_message and len(sam.requests) == 1
    assert all(r.retry_of is None for r in list_runs()), "permanent errors get no automatic retry"


def test_cancel_while_downloading_stops_fetching(backend, org, sam, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    for n in range(1, 5):
        sam.add_opportunity(f"n{n}", f"Opportunity {n}", attachments={f"file{n}.txt": f"attachment {n}".encode()})
    hold = sam.hold(r"/download", after=1)
    run = start(org, sam)
    hold.wait_blocked(1)  # the second download is in flight
    assert request_cancel(run.id, by="tester") is RunStatus.CANCELLING
    hold.release()
    stopped = ended(run.id, sam)
    assert RunStatus(stopped.status) is RunStatus.CANCELLED
    assert len(sam.seen("/download")) == 2, "no download after the cancel"
    assert len(records(org)) == 4 and len(assets(org)) == 2
    assert not list_runs(RunFilter(parent_run_id=run.id))
    assert events(run.id, "cancelled")


def test_refresh_retries_a_5xx_and_stops_at_a_cancel(backend, org, sam, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    for n in range(1, 5):
        sam.add_opportunity(f"n{n}", f"Opportunity {n}")
    sam.fail(r"noticeid=n1", 503, times=1)
    run = pull(org, sam, "sam_refresh", notice_ids=["n1", "n2"])
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert run.results_summary["opportunities"] == 2
    assert [e.context["reason"] for e in events(run.id, "retry")] == ["HTTP 503"]
    assert len(sam.seen("noticeid=n1")) == 2

    hold = sam.hold(r"noticeid=", after=1)  # n3 is read, n4 waits
    run = start(org, sam, "sam_refresh", notice_ids=["n3", "n4", "n1", "n2"])
    hold.wait_blocked(1)
    assert request_cancel(run.id, by="tester") is RunStatus.CANCELLING
    hold.release()
    stopped = ended(run.id, sam)
    assert RunStatus(stopped.status) is RunStatus.CANCELLED
    assert [r.query["noticeid"] for r in sam.seen("noticeid=")[-2:]] == ["n3", "n4"], "nothing read after the cancel"
    assert set(records(org)) == {"n1", "n2", "n3", "n4"}  # n4's answer, already on its way, is kept
    assert events(stopped.id, "cancelled") and stopped.progress["phase"] == "fetching"


def test_private_addresses_are_refused_without_the_setting(backend, org, sam, start_worker, monkeypatch):
    monkeypatch.delenv("CURATORE_ALLOW_PRIVATE_FETCH", raising=False)
    start_worker()
    run = pull(org, sam)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "Refusing to fetch" in run.error_message and "internal address (127.0.0.1)" in run.error_message
    assert sam.requests == []


class Context:
    """Just what the client uses of a JobContext: retry lines and cancel checks."""

    def __init__(self):
        self.lines = []

    def warn(self, message, event_type="warning", **context):
        self.lines.append(message)

    def check_cancelled(self):
        pass


def test_the_api_key_is_sent_put_into_attachment_links_and_never_shown(sam, monkeypatch):
    from backend.config import reset_settings
    from backend.connectors.common import RunHttpClient
    from backend.connectors.connections import Connection
    from backend.connectors.sam import SamClient, SamError

    monkeypatch.setenv("CURATORE_ALLOW_PRIVATE_FETCH", "true")  # this test process fetches from the local server
    reset_settings()
    monkeypatch.setattr("backend.connectors.http.time.sleep", lambda s: None)
    sam.api_key = "k3y-123"
    sam.add_opportunity("n1", "Cloud hosting", attachments={"sow.txt": b"statement of work"})
    ctx = Context()
    try:
        connection = Connection("sam", "test", sam.base_url, "k3y-123")
        with SamClient(RunHttpClient.for_connection(ctx, connection, "SAM.gov")) as client:
            today = date.today()
            [page] = list(client.search(today, today, max_pages=3))
            link = page.opportunities[0]["resourceLinks"][0]
            assert link.endswith("api_key=null")
            attachment = client.attachment(link, "fallback")
            assert (attachment.filename, attachment.data) == ("sow.txt", b"statement of work")
            assert sam.seen("/download")[0].query["api_key"] == "k3y-123"
            sam.fail(r"/download", 404)
            with pytest.raises(SamError) as gone:
                client.attachment(link, "fallback")
            assert "api_key=***" in gone.value.message and "k3y-123" not in gone.value.message

            sam.fail(r"/opportunities/v2/search", 500, times=1)
            sam.fail(r"/opportunities/v2/search", 400, body={"errorCode": "400", "errorMessage": "Invalid ncode"})
            with pytest.raises(SamError) as failed:
                list(client.search(today, today, max_pages=1, ncode="x"))
    finally:
        reset_settings()
    assert "Invalid ncode" in failed.value.message and "HTTP 400" in failed.value.message
    assert "k3y-123" not in failed.value.message and "k3y-123" not in str(failed.value.details)
    assert len(ctx.lines) == 1 and "k3y-123" not in ctx.lines[0] and "HTTP 500" in ctx.lines[0]
