"""A deletion run delivered again (handed back, or its worker lost) after its first delivery deleted the
resource completes: the resource being gone is its own work. Without an earlier delivery that got as far as
deleting, a missing resource still fails clearly. (The job runs in this process: ``worker.base.execute``.)"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from backend.db.engine import in_transaction
from backend.db.models import Asset, Run
from backend.db.states import RunStatus
from backend.runs import service
from backend.runs.queries import get_logs, get_run
from backend.storage.assets import store_bytes
from backend.worker.base import execute

pytestmark = pytest.mark.integration


def _deletion_of_a_vanished_asset(org, phase: str | None):  # type: ignore[no-untyped-def]
    asset = store_bytes(org.id, "gone.txt", b"gone")
    run = service.create_run("deletion", {"resource_type": "asset", "resource_id": str(asset.id)},
                             organization_id=org.id)
    attempt = service.mark_submitted(run.id, "task-1")

    def first_delivery_did_it(s):  # type: ignore[no-untyped-def]
        s.delete(s.get(Asset, asset.id))
        if phase:
            s.execute(update(Run).where(Run.id == run.id).values(progress={"phase": phase, "current": 1, "total": 3}))

    in_transaction(first_delivery_did_it)
    execute(str(run.id), attempt, "deletion", "test-worker")
    return get_run(run.id)


def test_a_redelivered_deletion_whose_resource_is_already_gone_completes(backend, org):  # type: ignore[no-untyped-def]
    done = _deletion_of_a_vanished_asset(org, "deleting")
    assert RunStatus(done.status) is RunStatus.COMPLETED, done.error_message
    assert done.results_summary["already_deleted"] is True
    assert any(e.event_type == "already_deleted" for e in get_logs(done.id))


def test_a_first_delivery_of_a_deletion_of_a_missing_resource_still_fails(backend, org):  # type: ignore[no-untyped-def]
    done = _deletion_of_a_vanished_asset(org, None)
    assert RunStatus(done.status) is RunStatus.FAILED
    assert "does not exist" in (done.error_message or "")
