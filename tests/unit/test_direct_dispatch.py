"""A run submitted to a queue with a free slot, where no run waits, goes straight to a worker: created submitted
in its one transaction, with the same log lines and outbox rows as a pending run claimed by a dispatch pass. When
a run waits, or the queue or the type is full, it is created pending and a pass decides (oldest first). Runs are
published to the test's real broker; no worker takes them."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import event, select

from backend.auth.orgs import ensure_org
from backend.db.engine import get_engine, in_transaction
from backend.db.models import OutboxEvent, Run
from backend.db.states import RunStatus
from backend.queues.dispatch import submit_run
from backend.runs import service
from backend.runs.queries import get_logs, get_run

S = RunStatus


def extraction(org_id: uuid.UUID) -> Run:
    return submit_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org_id)


def test_a_run_with_room_is_submitted_in_its_one_transaction(backend) -> None:  # type: ignore[no-untyped-def]
    org = ensure_org("acme", "Acme")
    commits = []
    listener = lambda *_: commits.append(1)  # noqa: E731
    event.listen(get_engine(), "commit", listener)
    try:
        run = extraction(org.id)
    finally:
        event.remove(get_engine(), "commit", listener)
    assert len(commits) == 1
    stored = get_run(run.id)
    assert S(stored.status) is S.SUBMITTED and stored.dispatch_attempt == 1
    assert stored.celery_task_id == run.celery_task_id and stored.submitted_at is not None
    # the history a claimed run has: created, then queued, in this order in the log and in the outbox
    assert [(e.event_type, e.message) for e in get_logs(run.id)] == [
        ("created", "Extraction run created"), ("queued", "Queued for a worker")]
    rows = in_transaction(lambda s: s.execute(select(OutboxEvent.kind, OutboxEvent.payload).where(
        OutboxEvent.run_id == run.id).order_by(OutboxEvent.seq)).all())
    assert [(kind, payload["status"]) for kind, payload in rows] == [("created", "pending"), ("status", "submitted")]
    logged = {e.message: e.id for e in get_logs(run.id)}
    assert [payload["event"]["id"] for _, payload in rows] == [logged["Extraction run created"],
                                                              logged["Queued for a worker"]]


def test_a_waiting_run_goes_first_even_when_a_slot_is_free(backend) -> None:  # type: ignore[no-untyped-def]
    org = ensure_org("acme", "Acme")
    first = [extraction(org.id) for _ in range(4)]  # the extraction queue's limit
    waiting = extraction(org.id)
    assert [S(get_run(r.id).status) for r in [*first, waiting]] == [S.SUBMITTED] * 4 + [S.PENDING]
    # a slot frees without a dispatch pass (as when a worker's pass failed): the waiting run is still pending
    in_transaction(lambda s: s.execute(Run.__table__.update().where(Run.id == first[0].id).values(status=S.FAILED)))
    assert S(get_run(waiting.id).status) is S.PENDING
    newer = extraction(org.id)  # there is room, but a run waits: it may not jump the queue
    assert S(get_run(waiting.id).status) is S.SUBMITTED  # the pass of newer's submit took the older one
    assert S(get_run(newer.id).status) is S.PENDING
    assert [e.event_type for e in get_logs(newer.id)] == ["created"]


def test_a_type_at_its_own_limit_waits(backend, tmp_path) -> None:  # type: ignore[no-untyped-def]
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"job_types": {"extraction": {"max_concurrency": 2}}}))
    backend.extend({"CURATORE_REGISTRY_OVERRIDES": str(overrides)})
    org = ensure_org("acme", "Acme")
    runs = [extraction(org.id) for _ in range(3)]
    assert [S(get_run(r.id).status) for r in runs] == [S.SUBMITTED, S.SUBMITTED, S.PENDING]
    service.mark_cancelled(runs[0].id, "test")  # a slot frees; the next submit's pass takes the waiting one
    later = extraction(org.id)
    assert [S(get_run(r.id).status) for r in [runs[2], later]] == [S.SUBMITTED, S.PENDING]
