"""An upload spawns one child extraction per file; the parent ends with its last child, exactly once."""

from __future__ import annotations

import pytest

from backend.queues.dispatch import submit_run
from backend.runs.queries import RunFilter, get_logs, group_for, list_runs
from backend.runs.states import RunStatus
from backend.storage.assets import store_bytes
from tests.support import wait_terminal

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
