"""Issue 18, findings 5 and 7, on a real database without a worker: one group per parent, the group of a lost
parent sealed by recovery, a re-stored file kept as the same asset, and a submitted run whose message was lost
sent again by the sweep (judged from what the live worker nodes report they hold)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from backend.config import get_settings
from backend.connectors import common
from backend.db.engine import in_transaction
from backend.db.models import Run, RunGroup, WorkerHeartbeat
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.jobtypes.registry import get_registry
from backend.queues import workers
from backend.runs import groups, recovery, service
from backend.runs.queries import get_logs, get_run
from backend.storage.assets import store_bytes

S = RunStatus


def _age(run_id, **fields):  # type: ignore[no-untyped-def]
    in_transaction(lambda s: s.execute(update(Run).where(Run.id == run_id).values(**fields)))


def _running_upload(org):  # type: ignore[no-untyped-def]
    files = [store_bytes(org.id, f"doc{i}.txt", f"document {i}".encode()) for i in range(3)]
    run = service.create_run("upload", {"asset_ids": [str(a.id) for a in files]}, organization_id=org.id)
    service.mark_submitted(run.id, str(uuid.uuid4()))
    assert service.start(run.id, 1, "w", 10)
    return run, files


def _groups_of(parent_id):  # type: ignore[no-untyped-def]
    return in_transaction(lambda s: s.execute(select(RunGroup).where(RunGroup.parent_run_id == parent_id))
                          .scalars().all())


def test_a_parent_has_one_group_which_a_second_execution_continues(backend, org):  # type: ignore[no-untyped-def]
    parent, files = _running_upload(org)
    first = groups.create_group(parent.id)
    child = groups.add_child(first.id, "extraction", {"asset_id": str(files[0].id)})
    again = groups.create_group(parent.id)  # the parent executed again after its worker was lost
    assert again.id == first.id and len(_groups_of(parent.id)) == 1
    assert groups.group_of(parent.id).id == first.id  # no MultipleResultsFound
    keys = groups.child_keys(first.id)
    clean = get_registry().validate_config("extraction", {"asset_id": str(files[0].id)}, org.id)
    assert keys == {groups.child_key("extraction", clean): child.id}  # what a re-executed parent looks up
    # the database itself refuses a second group for the parent
    with pytest.raises(IntegrityError):
        in_transaction(lambda s: (s.add(RunGroup(organization_id=org.id, parent_run_id=parent.id)), s.flush()))


def test_the_open_group_of_a_lost_parent_is_sealed_when_recovery_ends_the_parent(backend, org):  # type: ignore[no-untyped-def]
    backend.extend({"CURATORE_MAX_REDELIVERIES": "0"})  # no redelivery after a worker loss: recovery ends it
    parent, files = _running_upload(org)
    group = groups.create_group(parent.id)
    kids = [groups.add_child(group.id, "extraction", {"asset_id": str(f.id)}) for f in files[:2]]
    # its worker vanished while it was spawning: the lease expired and stays expired
    past = utcnow() - timedelta(seconds=60)
    _age(parent.id, lease_expires_at=past)
    recovery.sweep()
    _age(parent.id, lease_expires_at=past, last_activity_at=past)
    assert recovery.sweep()["timed_out"] == 1  # its redeliveries (none) are used up
    assert RunStatus(get_run(parent.id).status) is S.TIMED_OUT
    sealed = groups.group_of(parent.id)
    assert sealed.sealed and sealed.finalized_at is None  # sealed in the parent's terminal transaction
    for kid in kids:  # its children still run, and the group ends with the last of them
        service.mark_submitted(kid.id, str(uuid.uuid4()))
        assert service.start(kid.id, 1, "w", 10)
        assert service.complete(kid.id, {})
    ended = groups.group_of(parent.id)
    assert ended.finalized_at is not None and ended.status == "completed" and ended.completed == 2
    assert RunStatus(get_run(parent.id).status) is S.TIMED_OUT  # the parent keeps its own ending


def test_the_same_file_stored_again_is_the_same_asset(backend, org):  # type: ignore[no-untyped-def]
    first = common.store_external(org.id, "a.txt", b"alpha", collection_id="c", external_id="x", source="s:/a.txt")
    again = common.store_external(org.id, "a.txt", b"alpha", collection_id="c", external_id="x", source="s:/a.txt")
    assert again.id == first.id
    changed = common.store_external(org.id, "a.txt", b"alpha 2", collection_id="c", external_id="x",
                                    source="s:/a.txt")
    assert changed.id != first.id and common.live_asset(org.id, "c", "x").id == changed.id


# --------------------------------------------------------------------------- lost messages


def _submitted(org, seconds_ago: float):  # type: ignore[no-untyped-def]
    run = service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org.id)
    task_id = str(uuid.uuid4())
    service.mark_submitted(run.id, task_id)
    _age(run.id, submitted_to_celery_at=utcnow() - timedelta(seconds=seconds_ago))
    return run.id, task_id


def test_a_submitted_run_no_live_worker_holds_is_sent_again(backend, org):  # type: ignore[no-untyped-def]
    grace = get_settings().lost_message_grace_seconds
    lost, _ = _submitted(org, grace + 5)
    held, held_task = _submitted(org, grace + 5)
    fresh, _ = _submitted(org, 0)
    # a live node of the queue with a free slot (2 processes, one task held), reporting now
    workers.beat("node-a@test", ["extraction"], 2, [held_task])
    counts = recovery.sweep()
    assert counts["resent"] == 1
    assert RunStatus(get_run(lost).status) is S.PENDING
    assert RunStatus(get_run(held).status) is S.SUBMITTED  # a worker holds it: it will start
    assert RunStatus(get_run(fresh).status) is S.SUBMITTED  # within the grace: its message may be on its way
    line = get_logs(lost)[-1]
    assert "message was lost" in line.message and line.context["cause"] == "message_lost"
    assert not service.start(lost, 1, "late-worker", 10)  # the old message, if it turns up, does nothing


def test_no_resend_while_every_worker_of_the_queue_is_busy_or_none_is_alive(backend, org):  # type: ignore[no-untyped-def]
    grace = get_settings().lost_message_grace_seconds
    waiting, _ = _submitted(org, grace + 5)
    assert recovery.sweep()["resent"] == 0  # no live node: nothing to judge by
    workers.beat("node-busy@test", ["extraction"], 1, [str(uuid.uuid4())])  # its only process is busy
    workers.beat("node-other@test", ["default"], 4, [])  # free, but another queue
    assert recovery.sweep()["resent"] == 0
    assert RunStatus(get_run(waiting).status) is S.SUBMITTED
    # a node that stopped reporting (it died holding the message) does not count as holding it
    dead_since = utcnow() - timedelta(seconds=120)
    workers.beat("node-dead@test", ["extraction"], 2, [])
    in_transaction(lambda s: s.execute(update(WorkerHeartbeat).where(WorkerHeartbeat.hostname == "node-busy@test")
                                       .values(last_seen_at=dead_since)))
    assert recovery.sweep()["resent"] == 1
