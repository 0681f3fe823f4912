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


# --------------------------------------------------------------------------- issue 18: worker loss, ownership


def _running(org, worker: str = "w"):  # type: ignore[no-untyped-def]
    run = _submitted(org)
    attempt = get_run(run.id).dispatch_attempt
    assert service.start(run.id, attempt, worker, 10)
    return run.id, attempt


def _lose(run_id):  # type: ignore[no-untyped-def]
    """Its worker vanished: the lease expired long ago; two sweeps (stale, then the loss is acted on)."""
    past = utcnow() - timedelta(seconds=60)
    _age(run_id, lease_expires_at=past)
    first = recovery.sweep()
    _age(run_id, lease_expires_at=past, last_activity_at=past)
    return first, recovery.sweep()


def _events(run_id, event_type):  # type: ignore[no-untyped-def]
    return [e for e in get_logs(run_id) if e.event_type == event_type]


def test_a_refused_self_transition_writes_no_log_line(backend, org):  # type: ignore[no-untyped-def]
    run_id, _ = _running(org)
    before = len(get_logs(run_id))
    assert in_transaction(lambda s: service.transition(s, run_id, S.RUNNING, "again")) is None
    assert service.mark_stale(run_id, "no heartbeat")
    assert not service.mark_stale(run_id, "no heartbeat, says a second sweeper")
    logs = get_logs(run_id)
    assert not [e for e in logs if e.event_type == "transition_refused"], [e.message for e in logs]
    assert [e.event_type for e in logs[before:]] == ["stale"]
    # a refusal that is not a self-transition still says so
    assert service.complete(run_id) and not service.fail(run_id, "late")
    assert [e.message for e in _events(run_id, "transition_refused")] == [
        "Refused to move from completed to failed: late"]


def test_a_claim_applies_once_and_only_to_the_dispatch_it_read(backend, org):  # type: ignore[no-untyped-def]
    run_id, attempt = _running(org)
    # two sweepers read the same expiry; each claims it: one moves it, the other writes nothing
    assert service.claim(run_id, S.RUNNING, attempt, S.STALE, "lease expired")
    assert not service.claim(run_id, S.RUNNING, attempt, S.STALE, "lease expired")
    # a claim for an older dispatch never touches the current one
    assert not service.claim(run_id, S.STALE, attempt - 1, S.PENDING, "old read")
    assert RunStatus(get_run(run_id).status) is S.STALE
    assert len(_events(run_id, "stale")) == 1 and not _events(run_id, "transition_refused")


def test_worker_loss_is_redelivered_under_its_own_budget(backend, org, monkeypatch):  # type: ignore[no-untyped-def]
    """Extraction allows 2 attempts for job errors; worker loss has its own budget (here 3)."""
    from backend.config import reset_settings

    monkeypatch.setenv("CURATORE_MAX_REDELIVERIES", "3")
    reset_settings()
    run = _submitted(org)
    for n in range(1, 4):
        attempt = get_run(run.id).dispatch_attempt
        assert service.start(run.id, attempt, f"w{n}", 10)
        first, second = _lose(run.id)
        assert first["stale"] == 1 and second["requeued"] == 1 and second["timed_out"] == 0
        assert RunStatus(get_run(run.id).status) is S.PENDING
        line = _events(run.id, "redelivered")[-1]
        assert f"redelivery {n} of 3 after worker loss" in line.message and f"w{n}" in line.message
        assert line.context["cause"] == "worker_lost" and line.context["worker"] == f"w{n}"
        assert service.mark_submitted(run.id, f"task-{n}") == attempt + 1
    assert service.start(run.id, get_run(run.id).dispatch_attempt, "w4", 10)
    _, last = _lose(run.id)
    assert last["timed_out"] == 1
    ended = get_run(run.id)
    assert RunStatus(ended.status) is S.TIMED_OUT
    assert "3 redelivery(ies) after worker loss are used up" in ended.error_message
    assert ended.attempt == 1 and ended.dispatch_attempt == 4


def test_the_lease_is_ownership(backend, org):  # type: ignore[no-untyped-def]
    run_id, first = _running(org)
    _lose(run_id)  # re-queued while its first process was frozen
    assert service.mark_submitted(run_id, "task-2") == first + 1
    assert service.start(run_id, first + 1, "w2", 10)
    # the first process wakes up: its heartbeat renews nothing and learns it lost the run
    before = get_run(run_id).lease_expires_at
    assert service.renew_lease(run_id, 60, first) == (S.RUNNING, False)
    assert get_run(run_id).lease_expires_at == before
    assert service.renew_lease(run_id, 60, first + 1) == (S.RUNNING, True)
    # and it cannot hand back what it no longer holds
    assert not service.hand_back(run_id, first, "stopping")
    assert RunStatus(get_run(run_id).status) is S.RUNNING


def test_a_stopping_worker_hands_back_its_runs(backend, org):  # type: ignore[no-untyped-def]
    mine, attempt = _running(org, "stopping@host")
    other, _ = _running(org, "other@host")
    cancelling, _ = _running(org, "stopping@host")
    service.request_cancel(cancelling, by="tester")
    assert service.hand_back(mine, attempt, "its worker is stopping")
    assert RunStatus(get_run(mine).status) is S.PENDING and get_run(mine).worker_hostname is None
    assert _events(mine, "handed_back")[-1].message == "its worker is stopping"
    # what a job did not hand back itself, the worker's main process does before it exits
    mine2, _ = _running(org, "stopping@host")
    assert recovery.hand_back_held("stopping@host", "its worker stopped") == 1
    assert RunStatus(get_run(mine2).status) is S.PENDING
    assert RunStatus(get_run(cancelling).status) is S.CANCELLED
    assert RunStatus(get_run(other).status) is S.RUNNING
    assert not _redeliveries_counted(mine) and not _redeliveries_counted(mine2)  # a hand-back is no loss


def _redeliveries_counted(run_id):  # type: ignore[no-untyped-def]
    return service.redeliveries(run_id)


def test_a_job_that_lost_its_run_stops_at_its_next_check(backend, org):  # type: ignore[no-untyped-def]
    import pytest

    from backend.errors import JobHandedBack, LeaseLost
    from backend.jobtypes.registry import get_registry
    from backend.worker import base

    run_id, first = _running(org)
    old = base.JobContext(get_run(run_id), get_registry().resolve("extraction"), get_settings(), "w1")
    old.check_cancelled()  # still its own
    _lose(run_id)
    assert service.mark_submitted(run_id, "task-2") == first + 1 and service.start(run_id, first + 1, "w2", 10)
    old.ensure_held()  # within a lease of its last renewal it does not even look
    old._held_at -= old._lease  # no renewal for a lease period (it was frozen): now it looks, and stops
    with pytest.raises(LeaseLost):
        old.ensure_held()
    with pytest.raises(LeaseLost):
        old.check_cancelled()
    new = base.JobContext(get_run(run_id), get_registry().resolve("extraction"), get_settings(), "w2")
    new.check_cancelled()
    base.request_hand_back()  # its worker is stopping
    try:
        with pytest.raises(JobHandedBack):
            new.check_cancelled()
    finally:
        base._hand_back_requested.clear()
    assert RunStatus(get_run(run_id).status) is S.RUNNING  # checks write nothing


def test_a_repeated_delivery_is_ignored_and_says_so(backend, org):  # type: ignore[no-untyped-def]
    """The broker delivers a message again after its worker process died: no "Refused to move from running to
    running" (or stale to running), one line that says what happened."""
    run_id, attempt = _running(org)
    assert not service.start(run_id, attempt, "w2", 10)
    assert service.mark_stale(run_id, "no heartbeat")
    assert not service.start(run_id, attempt, "w2", 10)
    assert not _events(run_id, "transition_refused")
    assert [e.message for e in _events(run_id, "duplicate_delivery")] == [
        f"Ignored a repeated delivery of dispatch {attempt}: the run is already running",
        f"Ignored a repeated delivery of dispatch {attempt}: the run is already stale"]


def test_a_stopping_worker_leaves_its_sealed_group_parents_alone(backend, org):  # type: ignore[no-untyped-def]
    """A group parent that spawned everything holds no lease and no process: it ends with its children,
    not by a hand-back (which would run it again)."""
    parent, _ = _running(org, "stopping@host")
    _age(parent, lease_expires_at=None, is_group_parent=True)
    assert recovery.held_by("stopping@host") == []
    assert recovery.hand_back_held("stopping@host", "its worker stopped") == 0
    assert RunStatus(get_run(parent).status) is S.RUNNING
