"""forecast_sync against a local paged forecast API, with a real worker, on SQLite and PostgreSQL:
pages followed, invalid records counted and logged, records indexed and retired, retries, permanent
errors, cancellation and the private-address guard. The stand-in is the default forecast connection
(``CURATORE_FORECAST_BASE_URL``, in this process and the workers)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import ExternalRecord
from backend.db.states import RunStatus
from backend.demo.servers import ForecastServer
from backend.queues.dispatch import submit_run
from backend.runs.queries import get_logs, get_run, list_runs
from backend.runs.service import request_cancel
from tests.support import wait_terminal

pytestmark = pytest.mark.integration

ALLOW_PRIVATE = {"CURATORE_ALLOW_PRIVATE_FETCH": "true"}
SYNC_ID = "forecasts-gsa"
VALID = [
    {"id": f"F{n}", "title": f"Forecast {n}", "agency": "GSA", "naics": "541512", "fiscal_year": 2026,
     "estimated_value": n * 100_000, "anticipated_award_date": "2026-09-30", "office": "FAS"}
    for n in range(1, 6)
]
INVALID = [
    {"id": "F6", "title": ""},  # empty title
    {"title": "No id at all"},
    {"id": "F8", "title": "Negative value", "estimated_value": -5},
    "not an object",
]


@pytest.fixture
def api(backend):
    server = ForecastServer([*VALID[:3], *INVALID, *VALID[3:]], page_size=2)
    server.start()
    backend.extend({"CURATORE_FORECAST_BASE_URL": server.base_url})
    yield server
    server.stop()


def start(org, api, **config):
    return submit_run("forecast_sync", {"forecast_sync_id": SYNC_ID, **config}, organization_id=org.id)


def ended(run_id, server, timeout=90):
    try:
        return wait_terminal(run_id, timeout)
    except TimeoutError as exc:
        run = get_run(run_id)
        lines = [f"{e.event_type}: {e.message}" for e in get_logs(run_id)][-15:]
        raise AssertionError(f"{exc}; status {run.status}, progress {run.progress}, log {lines}, "
                             f"requests {[r.target for r in server.requests][-10:]}") from None


def sync(org, api, **config):
    return ended(start(org, api, **config).id, api)


def records(org, live=True):
    rows = in_transaction(lambda s: s.execute(select(ExternalRecord).where(
        ExternalRecord.organization_id == org.id, ExternalRecord.source == "forecast",
        ExternalRecord.deleted_at.is_(None) if live else ExternalRecord.deleted_at.is_not(None))).scalars().all())
    return {r.external_id: r for r in rows}


def events(run_id, event_type):
    return [e for e in get_logs(run_id) if e.event_type == event_type]


def test_sync_pages_validates_and_indexes(backend, org, api, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    run = sync(org, api)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    r = run.results_summary
    assert (r["fetched"], r["valid"], r["invalid"], r["new"], r["updated"], r["removed"]) == (9, 5, 4, 5, 0, 0)
    assert [req.query["page"] for req in api.seen("/api/forecasts")] == ["1", "2", "3", "4", "5"]
    assert [e.context["phase"] for e in events(run.id, "phase")] == ["fetching", "parsing", "indexing"]
    invalid = events(run.id, "invalid_record")
    assert [e.context["id"] for e in invalid] == ["F6", None, "F8", None]
    assert "title" in invalid[0].message and "estimated_value" in invalid[2].message
    assert events(run.id, "invalid_records")[0].context["invalid"] == 4
    saved = records(org)
    assert set(saved) == {f"F{n}" for n in range(1, 6)}
    assert {x.resource_id for x in saved.values()} == {SYNC_ID}
    assert saved["F2"].title == "Forecast 2" and saved["F2"].data["office"] == "FAS"  # extra fields kept
    assert saved["F2"].data["anticipated_award_date"] == "2026-09-30"

    api.records = [r for r in api.records if not (isinstance(r, dict) and r.get("id") == "F2")]
    api.records[0] = {**api.records[0], "title": "Forecast 1, revised"}
    run = sync(org, api)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    r = run.results_summary
    assert (r["fetched"], r["valid"], r["new"], r["updated"], r["removed"]) == (8, 4, 0, 4, 1)
    assert set(records(org)) == {"F1", "F3", "F4", "F5"} and set(records(org, live=False)) == {"F2"}
    assert records(org)["F1"].title == "Forecast 1, revised"


def test_5xx_and_429_are_retried_and_logged(backend, org, api, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    api.fail(r"/api/forecasts", 502, times=2)
    api.fail(r"page=2", 429, retry_after=1)
    run = sync(org, api)
    assert RunStatus(run.status) is RunStatus.COMPLETED, run.error_message
    assert run.results_summary["valid"] == 5
    retries = events(run.id, "retry")
    assert [e.context["reason"] for e in retries] == ["HTTP 502", "HTTP 502", "HTTP 429"]
    assert retries[-1].context["delay_seconds"] == 1.0
    page2 = api.seen("page=2")
    assert len(page2) == 2 and page2[1].at - page2[0].at >= 0.9, "waited as Retry-After asked"


def test_permanent_errors_fail_with_a_clear_message(backend, org, api, start_worker):
    wrong = {"wrong-path": {"kind": "forecast", "base_url": api.base_url + "/v9", "organizations": [org.slug]}}
    backend.extend({"CURATORE_CONNECTIONS": json.dumps(wrong)})
    start_worker(extra_env=ALLOW_PRIVATE)
    run = ended(start(org, api, connection="wrong-path").id, api)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "The forecast API failed on page 1" in run.error_message and "HTTP 404" in run.error_message
    assert len(api.requests) == 1, "a 404 is not retried"

    api.fail(r"page=1", 200, body="<html>down for maintenance</html>")  # a 200 that is not the API's JSON
    run = sync(org, api)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "answered page 1 with something that is not a JSON object (HTTP 200" in run.error_message
    assert records(org) == {}
    assert all(r.retry_of is None for r in list_runs()), "permanent errors get no automatic retry"


def test_cancel_mid_fetch_stops_paging(backend, org, api, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    hold = api.hold(r"page=3")
    run = start(org, api)
    hold.wait_blocked(1)
    assert request_cancel(run.id, by="tester") is RunStatus.CANCELLING
    hold.release()
    stopped = ended(run.id, api)
    assert RunStatus(stopped.status) is RunStatus.CANCELLED
    assert [req.query["page"] for req in api.seen("/api/forecasts")] == ["1", "2", "3"], "no page after the cancel"
    assert records(org) == {}
    assert events(run.id, "cancelled")


def test_private_addresses_are_refused_without_the_setting(backend, org, api, start_worker, monkeypatch):
    monkeypatch.delenv("CURATORE_ALLOW_PRIVATE_FETCH", raising=False)
    start_worker()
    run = sync(org, api)
    assert RunStatus(run.status) is RunStatus.FAILED
    assert "Refusing to fetch" in run.error_message and "internal address (127.0.0.1)" in run.error_message
    assert api.requests == []
