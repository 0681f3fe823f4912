"""A real worker extracts a real file; bad input fails clearly and leaves nothing running."""

from __future__ import annotations

import pytest

from backend.errors import InvalidConfig, UnknownRunType
from backend.queues.dispatch import submit_run
from backend.runs.queries import get_logs
from backend.runs.states import RunStatus
from backend.storage.assets import store_bytes
from tests.support import wait_terminal

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
