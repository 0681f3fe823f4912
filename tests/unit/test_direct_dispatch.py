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
    transactions = []  # committed ones, and statements sent alone (autocommit: each its own transaction)
    on_commit = lambda *_: transactions.append("commit")  # noqa: E731

    def on_execute(conn, *_) -> None:  # type: ignore[no-untyped-def]
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            transactions.append("alone")

    event.listen(get_engine(), "commit", on_commit)
    event.listen(get_engine(), "before_cursor_execute", on_execute)
    try:
        run = extraction(org.id)
    finally:
        event.remove(get_engine(), "commit", on_commit)
        event.remove(get_engine(), "before_cursor_execute", on_execute)
    assert len(transactions) == 1
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


def test_the_database_function_answers_as_the_dispatcher_does(pg_backend, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``curatore_direct_slot`` (the creating statement's question, migration 0013) and ``dispatcher.direct_slot``
    (the same question in a transaction) agree: room, a waiting run, a full queue, a type at its own limit, and a
    queue another dispatcher holds."""
    from sqlalchemy import func

    from backend.queues.dispatcher import _lock_key, direct_slot

    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"job_types": {"extraction": {"max_concurrency": 3}}}))
    pg_backend.extend({"CURATORE_REGISTRY_OVERRIDES": str(overrides)})
    org = ensure_org("acme", "Acme")

    def answers() -> tuple[str, bool]:
        arguments = direct_slot.arguments("extraction", "extraction")
        assert arguments is not None
        verdict = in_transaction(lambda s: s.execute(select(func.curatore_direct_slot(*arguments.values()))).scalar())
        return verdict, in_transaction(lambda s: direct_slot(s, "extraction", "extraction")) is not None

    assert answers() == ("direct", True)
    runs = [extraction(org.id) for _ in range(4)]  # the type's limit is 3: the 4th waits
    assert [S(get_run(r.id).status) for r in runs] == [S.SUBMITTED] * 3 + [S.PENDING]
    assert answers() == ("waiting", False)
    service.mark_cancelled(runs[3].id, "test")  # nothing waits; the type is full (the queue, of 4, is not)
    assert answers() == ("full", False)
    in_transaction(lambda s: s.execute(Run.__table__.update().where(Run.id == runs[0].id).values(run_type="x")))
    assert answers() == ("direct", True)  # a slot of the type is free (the queue's 4 are not all taken)
    extraction(org.id)  # the queue's 4th slot: the queue is full
    assert answers() == ("full", False)
    in_transaction(lambda s: s.execute(Run.__table__.update().where(Run.id == runs[1].id).values(status=S.FAILED)))
    assert answers() == ("direct", True)

    def held(s) -> tuple[str, bool]:  # type: ignore[no-untyped-def]
        s.execute(select(func.pg_advisory_xact_lock(_lock_key("extraction"))))  # another dispatcher's pass
        return answers()

    assert in_transaction(held) == ("locked", False)


def test_the_dispatchers_questions_read_no_more_after_600_ended_runs(pg_backend) -> None:  # type: ignore[no-untyped-def]
    """Every transition leaves its old row version's index entries until VACUUM. The dispatcher's questions (a run
    waiting? how many runs hold slots?), asked by every submit, read indexes where those dead entries do not pile
    up (migration 0014), also in a generic plan (a function's statements get one, prepared statements too): what
    they read does not grow with the runs that ended since the last VACUUM."""
    from backend.queues.dispatcher import direct_slot

    org = ensure_org("acme", "Acme")
    table = Run.__table__

    def churn(n: int) -> None:  # runs submitted (each submit asks the questions), started and ended
        for _ in range(n):
            run = extraction(org.id)
            assert S(get_run(run.id).status) is S.SUBMITTED
            for status in (S.RUNNING, S.COMPLETED):
                moved = table.update().where(table.c.id == run.id).values(status=status)
                in_transaction(lambda s, moved=moved: s.execute(moved))

    def pages_read() -> int:
        arguments = direct_slot.arguments("extraction", "extraction")
        assert arguments is not None
        raw = get_engine().raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            cursor.execute("ANALYZE runs")
            explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT curatore_direct_slot(%s, %s, %s, %s, %s, %s)"
            for _ in range(2):  # the second: the function's plans are made and cached
                cursor.execute(explain, list(arguments.values()))
                plan = cursor.fetchone()[0][0]["Plan"]
            cursor.execute("RESET plan_cache_mode")
            return plan["Shared Hit Blocks"] + plan["Shared Read Blocks"]
        finally:
            raw.close()

    churn(30)
    before = pages_read()
    churn(600)
    after = pages_read()
    assert after <= before + 2, (before, after)  # before migration 0014: 6 pages, then 14
