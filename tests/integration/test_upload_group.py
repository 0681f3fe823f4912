"""An upload spawns one child extraction per file; the parent ends with its last child, exactly once.
Cancelling it mid-way cancels the children still queued; the one already extracting finishes."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.db.states import RunStatus
from backend.queues.dispatch import submit_run
from backend.runs.cancellation import cancel_run
from backend.runs.queries import RunFilter, get_logs, get_run, group_for, list_runs
from backend.storage.assets import store_bytes
from tests.data.make_samples import pdf_bytes
from tests.support import wait_for, wait_terminal

pytestmark = pytest.mark.integration


def test_upload_children_and_parent_outcome(backend, org, worker):
    good = [store_bytes(org.id, f"doc{i}.txt", f"document {i}\n".encode()) for i in range(3)]
    bad = store_bytes(org.id, "image.txt", b"\x89PNG\r\n\x1a\n....")
    run = submit_run("upload", {"asset_ids": [str(a.id) for a in [*good, bad]]}, organization_id=org.id)
    parent = wait_terminal(run.id)
    children = list_runs(RunFilter(parent_run_id=run.id))
    assert sorted(RunStatus(c.status).value for c in children) == ["completed", "completed", "completed", "failed"]
    assert all(c.origin.value == "group" and c.group_id for c in children)
    group = group_for(run.id)
    assert (group.expected, group.completed, group.failed, group.cancelled) == (4, 3, 1, 0)
    assert group.status == "partial" and group.finalized_at is not None
    assert RunStatus(parent.status) is RunStatus.COMPLETED
    assert parent.results_summary["children"]["failed"] == 1
    events = [e.event_type for e in get_logs(run.id)]
    assert events.count("complete") == 1 and "children_spawned" in events


def test_cancel_mid_upload_cancels_the_queued_children(backend, org, start_worker, tmp_path):
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"queues": {"extraction": {"max_concurrency": 1}}}))  # one file at a time
    backend.extend({"CURATORE_REGISTRY_OVERRIDES": str(overrides)})
    start_worker(concurrency=3)
    pdf = pdf_bytes(tuple(f"Page {n} of a long scanned contract" for n in range(1, 1501)))
    files = [store_bytes(org.id, f"contract-{i}.pdf", pdf) for i in range(4)]
    run = submit_run("upload", {"asset_ids": [str(a.id) for a in files]}, organization_id=org.id)

    def one_extracting():  # type: ignore[no-untyped-def]
        children = list_runs(RunFilter(parent_run_id=run.id))
        running = [c for c in children if get_run(c.id).progress.get("unit") == "pages"]
        return len(children) == 4 and running and running[0]

    first = wait_for(one_extracting, timeout=60, interval=0.02, what="the first file to be extracting")
    assert cancel_run(run.id, by="test") is RunStatus.CANCELLING
    parent = wait_terminal(run.id, timeout=90)

    assert RunStatus(parent.status) is RunStatus.CANCELLED, parent.error_message
    children = {c.id: c for c in list_runs(RunFilter(parent_run_id=run.id))}
    assert RunStatus(children.pop(first.id).status) is RunStatus.COMPLETED  # running: it finished its work
    assert [RunStatus(c.status) for c in children.values()] == [RunStatus.CANCELLED] * 3
    assert all(c.started_at is None for c in children.values())  # the queued ones never started
    extracted = in_transaction(lambda s: s.execute(
        select(Asset.extraction_status).where(Asset.id.in_([f.id for f in files]))).scalars().all())
    assert sorted(extracted) == ["completed", "none", "none", "none"]
    group = group_for(run.id)
    assert (group.expected, group.completed, group.failed, group.cancelled) == (4, 1, 0, 3)
    assert group.finalized_at is not None
    events = get_logs(run.id)
    [cascade] = [e for e in events if e.event_type == "cancel_cascade"]
    assert cascade.message == "Cancel passed on to 3 child runs (queued children only)"
    assert [e.event_type for e in events].count("cancelled") == 1 and "complete" not in [e.event_type for e in events]
