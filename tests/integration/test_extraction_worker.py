"""A real worker extracts a real file; bad input fails clearly and leaves nothing running; a cancel stops a
long PDF between two pages, and nothing of it is kept."""

from __future__ import annotations

import pytest

from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.db.states import RunStatus
from backend.errors import InvalidConfig, UnknownRunType
from backend.queues.dispatch import submit_run
from backend.runs.cancellation import cancel_run
from backend.runs.queries import get_logs, get_run
from backend.search import search
from backend.storage.assets import store_bytes
from tests.data.make_samples import pdf_bytes
from tests.support import wait_for, wait_terminal

pytestmark = pytest.mark.integration


def test_extracts_text_file(backend, org, worker):
    asset = store_bytes(org.id, "notes.md", b"# Title\n\nSome *markdown* text.\n")
    run = submit_run("extraction", {"asset_id": str(asset.id)}, organization_id=org.id)
    done = wait_terminal(run.id)
    assert RunStatus(done.status) is RunStatus.COMPLETED, done.error_message
    assert done.results_summary["format"] == "markdown"
    assert done.progress["percent"] == 100.0
    assert done.celery_task_id and done.submitted_to_celery_at and done.started_at and done.completed_at
    events = [e.event_type for e in get_logs(run.id)]
    assert events[:3] == ["created", "queued", "start"]
    assert "phase" in events and events[-1] == "complete"


def test_binary_posing_as_text_fails_clearly(backend, org, worker):
    asset = store_bytes(org.id, "report.txt", b"%PDF-1.7\n\x00\x01binary")
    run = submit_run("extraction", {"asset_id": str(asset.id)}, organization_id=org.id)
    done = wait_terminal(run.id)
    assert RunStatus(done.status) is RunStatus.FAILED
    assert done.error_message == "report.txt is not a text file: its content is a PDF document."


def test_unknown_type_and_invalid_config_write_nothing(backend, org):
    from backend.runs.queries import list_runs

    with pytest.raises(UnknownRunType, match="Unknown run type 'nope'"):
        submit_run("nope", {}, organization_id=org.id)
    with pytest.raises(InvalidConfig, match="config.asset_id"):
        submit_run("extraction", {"asset": "x"}, organization_id=org.id)
    assert list_runs() == []


def test_cancel_stops_a_long_pdf_between_pages(backend, org, worker):
    pages = 3000
    report = pdf_bytes(tuple(f"Quarterly zebrafish report page {n}" for n in range(1, pages + 1)))
    asset = store_bytes(org.id, "long-report.pdf", report)
    run = submit_run("extraction", {"asset_id": str(asset.id)}, organization_id=org.id)

    def reading_pages():  # type: ignore[no-untyped-def]
        progress = get_run(run.id).progress
        return progress.get("unit") == "pages" and progress["current"] > 0

    wait_for(reading_pages, timeout=60, interval=0.02, what="the extraction to be reading pages")
    assert cancel_run(run.id, by="test") is RunStatus.CANCELLING
    done = wait_terminal(run.id)

    assert RunStatus(done.status) is RunStatus.CANCELLED, done.error_message
    assert done.progress["phase"] == "extracting" and 0 < done.progress["current"] < pages
    stored = in_transaction(lambda s: s.get(Asset, asset.id))
    assert stored.extraction_status == "none" and stored.extracted_text is None  # nothing half-done is kept
    assert search(org.id, "zebrafish") == []
    events = get_logs(run.id)
    [ended] = [e for e in events if e.event_type == "cancelled"]
    assert ended.context["stage"] == "acknowledged"  # the job stopped itself, within the grace period
    assert not {"extracted", "complete"} & {e.event_type for e in events}
