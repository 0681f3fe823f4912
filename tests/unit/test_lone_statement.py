"""A hot statement sent straight to the driver (``engine.lone_statement``, PostgreSQL) reads back what SQLAlchemy's
``Connection`` reads, and a connection lost under it is replaced as SQLAlchemy would."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy import text

from backend.auth.orgs import ensure_org
from backend.db import engine
from backend.db.engine import get_engine, in_transaction, patience
from backend.db.states import RunStatus
from backend.errors import DatabaseUnavailable, DuplicateRun
from backend.queues.dispatch import submit_run
from backend.runs import service
from backend.runs.queries import get_logs, get_run


@pytest.mark.parametrize("run_type", ["system_maintenance", "extraction"])  # without, with a duplicate check
def test_the_driver_reads_back_what_sqlalchemy_reads(pg_backend, monkeypatch, run_type) -> None:  # type: ignore[no-untyped-def]
    org = ensure_org("acme", "Acme")
    watched, run = engine._watched, engine._Driven.run
    driven: list[str] = []  # the ways whose statements went to the driver

    def counted(self, *args):  # type: ignore[no-untyped-def]
        driven.append(way)
        return run(self, *args)

    monkeypatch.setattr(engine._Driven, "run", counted)
    made: dict[str, dict[str, object]] = {}
    for way in ("sqlalchemy", "driver"):
        monkeypatch.setattr(engine, "_watched", (lambda _engine: True) if way == "sqlalchemy" else watched)
        config = {"asset_id": str(uuid.uuid4())} if run_type == "extraction" else {}
        submitted = submit_run(run_type, config, organization_id=org.id)
        if run_type == "extraction":  # the same asset again while it is queued: refused, nothing written
            with pytest.raises(DuplicateRun):
                submit_run(run_type, config, organization_id=org.id)
        started = service.start_and_load(submitted.id, submitted.dispatch_attempt, "w1", 60)
        assert started is not None
        waiting = service.complete_alone(submitted.id, {"pages": 3})
        made[way] = {"submitted": submitted.__dict__, "started": started.__dict__, "waiting": waiting,
                     "stored": get_run(submitted.id).__dict__, "log": [e.event_type for e in get_logs(submitted.id)]}
    # its submit (and the refused duplicate), start and end; none of the other way's
    assert driven == ["driver"] * (4 if run_type == "extraction" else 3)
    assert made["driver"]["waiting"] is made["sqlalchemy"]["waiting"] is False
    assert made["driver"]["log"] == made["sqlalchemy"]["log"] == ["created", "queued", "start", "complete"]
    assert in_transaction(lambda s: s.execute(text("SELECT count(*) FROM runs")).scalar_one()) == 2
    per_resource = ("config", "resource_id", "input_asset_ids")
    for part in ("submitted", "started", "stored"):
        a, b = made["sqlalchemy"][part], made["driver"][part]
        keys = {k for k in a if not k.startswith("_")}
        assert keys == {k for k in b if not k.startswith("_")}
        for key in keys:  # same types (enums, aware datetimes, UUIDs, JSON); same values where not per run
            assert type(a[key]) is type(b[key]), (part, key, a[key], b[key])
            if key not in ("id", "trace_id", "celery_task_id", *per_resource) and not key.endswith("_at"):
                assert a[key] == b[key], (part, key)
    started = made["driver"]["started"]
    assert started["status"] is RunStatus.RUNNING and started["worker_hostname"] == "w1"
    assert started["started_at"].tzinfo is not None and started["config"] == made["driver"]["submitted"]["config"]
    assert made["driver"]["stored"]["results_summary"] == {"pages": 3}


def test_a_connection_lost_under_a_lone_statement_is_replaced(pg_backend) -> None:  # type: ignore[no-untyped-def]
    org = ensure_org("acme", "Acme")
    runs = [submit_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org.id) for _ in range(2)]
    url = get_engine().url

    def cut() -> None:  # the server ends every connection of the pool (as a restart or a failover would)
        with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False),
                             autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", [url.database])

    held = [get_engine().connect() for _ in range(3)]  # the pool keeps several connections, all cut below
    for connection in held:
        connection.close()
    cut()
    with pytest.raises(DatabaseUnavailable):  # the pooled connection was cut: a clear error, not a driver's
        service.start_and_load(runs[0].id, runs[0].dispatch_attempt, "w1", 60)
    assert service.start_and_load(runs[0].id, runs[0].dispatch_attempt, "w1", 60) is not None  # a new one
    cut()
    with patience(10):  # a worker's run rides it out
        assert service.start_and_load(runs[1].id, runs[1].dispatch_attempt, "w1", 60) is not None
    assert in_transaction(lambda s: s.execute(text("SELECT count(*) FROM runs WHERE status = 'running'"))
                          .scalar_one()) == 2


def test_a_lone_statement_missing_a_parameter_is_refused_before_it_is_sent(pg_backend) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import InvalidRequestError

    org = ensure_org("acme", "Acme")
    statement = service._created_alone(("id", "organization_id"), None)
    with pytest.raises(InvalidRequestError, match="d_queue"):
        engine.lone_statement(statement, {"r_id": uuid.uuid4(), "r_organization_id": org.id})
    assert in_transaction(lambda s: s.execute(text("SELECT count(*) FROM runs")).scalar_one()) == 0
