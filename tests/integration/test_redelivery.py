"""Issue 18, findings 5 and 7, with a real worker on SQLite and PostgreSQL.

- A group parent executed again after its worker was lost mid-spawn (the state that execution left: a run
  group with some children, the parent re-queued) continues its group: one group, one child per file, and
  the parent completes (before: a second group, every child again, and ``MultipleResultsFound``).
- A submitted run whose message the broker lost (marked submitted, never published: what a Redis restarted
  empty leaves) is sent again by the worker's sweep and completes, with the start timeout far away.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import RunGroup
from backend.db.states import RunStatus
from backend.runs import groups, service
from backend.runs.queries import RunFilter, get_logs, list_runs
from backend.storage.assets import store_bytes
from tests.support import wait_terminal

pytestmark = pytest.mark.integration
S = RunStatus
FAST_SWEEP = {"CURATORE_SWEEP_SECONDS": "0.5", "CURATORE_LOST_MESSAGE_GRACE_SECONDS": "1",
              "CURATORE_START_TIMEOUT_SECONDS": "3600"}


def test_a_parent_executed_again_continues_its_group(backend, org, start_worker):
    files = [store_bytes(org.id, f"doc{i}.txt", f"document {i}\n".encode()) for i in range(4)]
    parent = service.create_run("upload", {"asset_ids": [str(a.id) for a in files]}, organization_id=org.id)
    # its first execution: started, made its group, spawned two children, then its worker vanished
    service.mark_submitted(parent.id, str(uuid.uuid4()))
    assert service.start(parent.id, 1, "vanished-worker", 10)
    group = groups.create_group(parent.id)
    for asset in files[:2]:
        groups.add_child(group.id, "extraction", {"asset_id": str(asset.id)}, display_name=asset.filename)
    assert service.requeue(parent.id, "Its worker was lost; re-queued for dispatch 2", expect={S.RUNNING})

    backend.extend(FAST_SWEEP)
    start_worker()  # its sweep dispatches the parent (dispatch 2) and the two children
    ended = wait_terminal(parent.id, timeout=90)

    assert RunStatus(ended.status) is S.COMPLETED, (ended.error_message, [e.message for e in get_logs(parent.id)])
    rows = in_transaction(lambda s: s.execute(select(RunGroup).where(RunGroup.parent_run_id == parent.id))
                          .scalars().all())
    assert len(rows) == 1 and rows[0].id == group.id
    assert (rows[0].expected, rows[0].completed, rows[0].sealed) == (4, 4, True)
    children = list_runs(RunFilter(parent_run_id=parent.id))
    assert sorted(c.config["asset_id"] for c in children) == sorted(str(a.id) for a in files)  # each file once
    assert all(RunStatus(c.status) is S.COMPLETED for c in children)
    assert ended.results_summary["children"]["children"] == 4
    events = [e.event_type for e in get_logs(parent.id)]
    assert "group_continued" in events and events.count("error") == 0


def test_a_submitted_run_whose_message_was_lost_is_sent_again(backend, org, start_worker):
    backend.extend(FAST_SWEEP)
    asset = store_bytes(org.id, "lost.txt", b"a message the broker lost\n")
    run = service.create_run("extraction", {"asset_id": str(asset.id)}, organization_id=org.id)
    service.mark_submitted(run.id, str(uuid.uuid4()))  # never published: its message is gone
    start_worker()
    ended = wait_terminal(run.id, timeout=60)
    assert RunStatus(ended.status) is S.COMPLETED, ended.error_message
    assert ended.dispatch_attempt == 2
    lines = [e for e in get_logs(run.id) if e.context.get("cause") == "message_lost"]
    assert len(lines) == 1 and "sent again" in lines[0].message
