"""``/metrics``: the Prometheus series, read from a (SQLite) database at scrape time."""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from backend.api.app import create_api
from backend.api.metrics import metrics_text
from backend.auth.orgs import ensure_org
from backend.db.engine import dispose_engines
from backend.runs import service
from tests.api_client import ApiClient


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def finish(run_id, ok: bool = True) -> None:  # type: ignore[no-untyped-def]
    attempt = service.mark_submitted(run_id, f"task-{run_id}")
    assert service.start(run_id, attempt, "test-node", 60)
    assert service.complete(run_id, {"ok": True}) if ok else service.fail(run_id, "broken on purpose")


def test_metrics_expose_runs_queues_durations_and_outbox(sqlite_backend) -> None:  # type: ignore[no-untyped-def]
    org = ensure_org("acme")
    empty = samples(metrics_text()[0].decode())
    assert empty[("curatore_outbox_newest_seq", ())] == 0 and empty[("curatore_database_up", ())] == 1
    assert not [k for k in empty if k[0] == "curatore_runs"]

    for _ in range(2):
        service.create_run("system_maintenance", {}, organization_id=org.id)  # pending, maintenance queue
    for ok in (True, True, False):
        finish(service.create_run("procedure", {"procedure": "noop"}, organization_id=org.id).id, ok)
    alias = service.create_run("extraction_enhancement", {"asset_id": "00000000-0000-0000-0000-000000000001"},
                               organization_id=org.id)
    finish(alias.id)

    with ApiClient(create_api()) as client:
        r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = samples(r.text)
    assert m[("curatore_runs", (("run_type", "system_maintenance"), ("status", "pending")))] == 2
    assert m[("curatore_runs", (("run_type", "procedure"), ("status", "completed")))] == 2
    assert m[("curatore_runs", (("run_type", "procedure"), ("status", "failed")))] == 1
    assert m[("curatore_runs", (("run_type", "extraction"), ("status", "completed")))] == 1  # alias → its type
    assert m[("curatore_queue_pending", (("queue", "maintenance"),))] == 2
    assert m[("curatore_queue_running", (("queue", "maintenance"),))] == 0
    assert m[("curatore_queue_limit", (("queue", "extraction"),))] == 4
    assert m[("curatore_run_duration_seconds_count", (("run_type", "procedure"),))] == 3
    assert m[("curatore_run_duration_seconds_bucket", (("le", "+Inf"), ("run_type", "procedure")))] == 3
    assert m[("curatore_run_duration_seconds_bucket", (("le", "1.0"), ("run_type", "procedure")))] == 3
    assert m[("curatore_run_duration_seconds_sum", (("run_type", "procedure"),))] < 3
    assert m[("curatore_outbox_newest_seq", ())] > 10
    assert 0 <= m[("curatore_outbox_age_seconds", ())] < 60
    assert m[("curatore_workers_online", ())] == 0
    assert m[("curatore_database_up", ())] == 1


def test_metrics_answer_when_the_database_does_not(sqlite_backend, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import reset_process_state

    saved = os.environ["CURATORE_DATABASE_URL"]
    os.environ["CURATORE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'not-migrated.db'}"
    reset_process_state()
    try:
        m = samples(metrics_text()[0].decode())
    finally:
        os.environ["CURATORE_DATABASE_URL"] = saved
        dispose_engines()
        reset_process_state()
    assert m == {("curatore_database_up", ()): 0}
