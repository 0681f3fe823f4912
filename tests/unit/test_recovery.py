"""Recovery sweep rules, on a real database, without a worker."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update

from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import Run
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.runs import recovery, service
from backend.runs.queries import get_logs, get_run

S = RunStatus


def _submitted(org):  # type: ignore[no-untyped-def]
    run = service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org.id)
    service.mark_submitted(run.id, str(uuid.uuid4()))
    return run


def _age(run_id, **fields):  # type: ignore[no-untyped-def]
    in_transaction(lambda s: s.execute(update(Run).where(Run.id == run_id).values(**fields)))


def test_a_submitted_run_nobody_started_goes_back_to_the_queue(backend, org):  # type: ignore[no-untyped-def]
    fresh, lost = _submitted(org), _submitted(org)
    _age(lost.id, submitted_to_celery_at=utcnow() - timedelta(seconds=get_settings().start_timeout_seconds + 1))
    assert recovery.sweep()["unstarted"] == 1
    assert RunStatus(get_run(lost.id).status) is S.PENDING and RunStatus(get_run(fresh.id).status) is S.SUBMITTED
    assert get_logs(lost.id)[-1].event_type == "requeued"
    assert not service.start(lost.id, 1, "late-worker", 10)  # the lost message, delivered late, does nothing


def test_expired_lease_goes_stale_then_back_to_the_queue_not_in_one_pass(backend, org):  # type: ignore[no-untyped-def]
    run = _submitted(org)
    assert service.start(run.id, 1, "w", 10)
    past = utcnow() - timedelta(seconds=60)
    _age(run.id, lease_expires_at=past)
    first = recovery.sweep()
    assert first["stale"] == 1 and first["requeued"] == 0  # a heartbeat could still revive it
    service.heartbeat(run.id, 10)
    assert RunStatus(get_run(run.id).status) is S.RUNNING  # it did
    _age(run.id, lease_expires_at=past)
    recovery.sweep()
    _age(run.id, lease_expires_at=past, last_activity_at=past)
    assert recovery.sweep()["requeued"] == 1
    assert RunStatus(get_run(run.id).status) is S.PENDING
