"""Deletion and system maintenance on real workers: what goes, what stays, what is refused."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from backend.auth.orgs import system_org
from backend.db.engine import in_transaction
from backend.db.models import Asset, ExternalRecord, OutboxEvent, Run, RunGroup, RunLogEvent
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.queues.dispatch import submit_run
from backend.runs import groups, service
from backend.runs.queries import get_logs, get_run
from backend.storage.assets import _path_for, store_bytes
from tests.support import wait_for, wait_terminal

pytestmark = pytest.mark.integration
S = RunStatus
ROOT = Path(__file__).resolve().parents[2]
WORKER_ENV = {"CURATORE_JOB_MODULES": json.dumps(["tests.jobs_for_tests"]), "PYTHONPATH": str(ROOT)}


@pytest.fixture
def dworker(start_worker):  # type: ignore[no-untyped-def]
    return start_worker(extra_env=WORKER_ENV)


def count(model, *where) -> int:  # type: ignore[no-untyped-def]
    return in_transaction(lambda s: s.execute(select(func.count()).select_from(model).where(*where)).scalar_one(),
                          read_only=True)


def search_rows(asset_id: uuid.UUID) -> int:
    def read(s):  # type: ignore[no-untyped-def]
        key = asset_id.hex if s.get_bind().dialect.name == "sqlite" else asset_id
        return s.execute(text("SELECT count(*) FROM asset_search WHERE asset_id = :a"), {"a": key}).scalar_one()

    return in_transaction(read)


def phases(run_id) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.context["phase"] for e in get_logs(run_id) if e.event_type == "phase"]


# --------------------------------------------------------------------------- deletion


def test_deleting_an_asset_removes_file_row_index_and_links(backend, org, dworker):
    from backend.search import index_asset

    doomed = store_bytes(org.id, "doomed.txt", b"to be deleted\n")
    kept = store_bytes(org.id, "kept.txt", b"stays\n")
    for asset in (doomed, kept):
        index_asset(None, asset.id, org.id, asset.filename, asset.filename)
    record = ExternalRecord(organization_id=org.id, source="sam", kind="opportunity", external_id="N-1",
                            title="Opportunity", asset_ids=[str(doomed.id), str(kept.id)])
    in_transaction(lambda s: s.add(record))
    path = _path_for(doomed.storage_key)
    assert path.is_file()

    run = submit_run("deletion", {"resource_type": "asset", "resource_id": str(doomed.id)}, organization_id=org.id)
    done = wait_terminal(run.id)

    assert S(done.status) is S.COMPLETED, done.error_message
    assert phases(run.id) == ["preparing", "deleting", "cleaning_up"]
    assert not path.exists() and count(Asset, Asset.id == doomed.id) == 0 and search_rows(doomed.id) == 0
    assert _path_for(kept.storage_key).is_file() and search_rows(kept.id) == 1
    assert in_transaction(lambda s: s.get(ExternalRecord, record.id)).asset_ids == [str(kept.id)]
    wanted = {"assets_deleted": 1, "files_deleted": 1, "external_records_unlinked": 1, "search_rows_removed": 1}
    assert {k: done.results_summary[k] for k in wanted} == wanted

    again = wait_terminal(submit_run("deletion", {"resource_type": "asset", "resource_id": str(doomed.id)},
                                     organization_id=org.id).id)
    assert S(again.status) is S.FAILED
    assert again.error_message == f"Asset {doomed.id} does not exist (already deleted?)."


def test_deleting_a_collection_and_unsupported_types(backend, org, dworker):
    members = [store_bytes(org.id, f"c{i}.txt", b"x", collection_id="col-9") for i in range(3)]
    outsider = store_bytes(org.id, "outside.txt", b"y")
    done = wait_terminal(submit_run("deletion", {"resource_type": "collection", "resource_id": "col-9"},
                                    organization_id=org.id).id)
    assert S(done.status) is S.COMPLETED, done.error_message
    assert done.results_summary["assets_deleted"] == 3 and count(Asset) == 1
    assert all(not _path_for(m.storage_key).exists() for m in members) and _path_for(outsider.storage_key).is_file()

    unsupported = wait_terminal(submit_run("deletion", {"resource_type": "sam_search", "resource_id": "s-1"},
                                           organization_id=org.id).id)
    assert S(unsupported.status) is S.FAILED
    assert unsupported.error_message == ("Deleting a sam_search is not supported; a deletion run removes asset, "
                                         "collection or run resources.")


def _bulk_assets(org_id: uuid.UUID, n: int, collection_id: str) -> list[Asset]:
    """``n`` small stored files in a collection, written in one transaction (store_bytes one by one is slow)."""
    assets = []
    for i in range(n):
        asset_id = uuid.uuid4()
        key = f"{org_id}/{asset_id.hex[:2]}/{asset_id}"
        path = _path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"file %d\n" % i)
        assets.append(Asset(id=asset_id, organization_id=org_id, filename=f"f{i:05}.txt",
                            size_bytes=path.stat().st_size, sha256="", storage_key=key, collection_id=collection_id))
    in_transaction(lambda s: s.add_all(assets))
    return assets


def test_cancel_mid_deletion_leaves_every_asset_whole_or_gone(backend, org, dworker):
    total = 4000
    doomed = _bulk_assets(org.id, total, "big-collection")
    run = submit_run("deletion", {"resource_type": "collection", "resource_id": "big-collection"},
                     organization_id=org.id)

    def deleting():  # type: ignore[no-untyped-def]
        progress = get_run(run.id).progress
        return progress["phase"] == "deleting" and progress["current"] > 0

    wait_for(deleting, timeout=60, interval=0.02, what="the deletion to be under way")
    assert service.request_cancel(run.id, by="test") is S.CANCELLING
    done = wait_terminal(run.id)

    assert S(done.status) is S.CANCELLED, done.error_message
    ids = [a.id for a in doomed]
    rows = set(in_transaction(lambda s: s.execute(select(Asset.id).where(Asset.collection_id == "big-collection"))
                              .scalars().all()))
    files = {a.id for a in doomed if _path_for(a.storage_key).exists()}
    assert rows == files  # no row without its file, no file without its row
    deleted = total - len(rows)
    assert 0 < deleted < total and deleted % 100 == 0  # whole chunks only, then it stopped
    assert rows == set(ids[deleted:])  # in order: the first chunks went, the rest is untouched
    events = get_logs(run.id)
    [partial] = [e for e in events if e.event_type == "partial"]
    assert partial.message == (f"Cancelled after deleting {deleted} of {total} assets; "
                               f"the other {total - deleted} are untouched")
    assert [e.context["stage"] for e in events if e.event_type == "cancelled"] == ["acknowledged"]
    assert "deleted" not in {e.event_type for e in events} and "cleaning_up" not in phases(run.id)


def test_deleting_runs_refuses_active_ones_and_takes_children_and_logs(backend, org, dworker, tmp_path):
    gates = tmp_path / "gates"
    gates.mkdir()
    upload_file = store_bytes(org.id, "u.txt", b"upload me\n")
    busy = submit_run("upload", {"asset_ids": [str(upload_file.id)]}, organization_id=org.id)
    finished_upload = wait_terminal(busy.id)
    assert S(finished_upload.status) is S.COMPLETED
    child = in_transaction(lambda s: s.execute(select(Run).where(Run.parent_run_id == busy.id)).scalar_one())

    _register_test_steps()
    active = submit_run("test_steps", {"steps": 2, "gate_dir": str(gates)}, organization_id=org.id)
    wait_for(lambda: S(get_run(active.id).status) is S.RUNNING, what="the gated run to start")

    refused = wait_terminal(submit_run("deletion", {"resource_type": "run", "resource_id": str(active.id)},
                                       organization_id=org.id).id)
    assert S(refused.status) is S.FAILED
    assert refused.error_message == (f"Run {active.id} was not deleted: it is still running. "
                                     "Cancel it or wait for it to end, then delete again.")
    assert S(get_run(active.id).status) is S.RUNNING

    deletion = wait_terminal(submit_run("deletion", {"resource_type": "run", "resource_id": str(busy.id)},
                                        organization_id=org.id).id)
    assert S(deletion.status) is S.COMPLETED, deletion.error_message
    assert phases(deletion.id) == ["preparing", "deleting", "cleaning_up"]
    assert count(Run, Run.id.in_([busy.id, child.id])) == 0
    assert count(RunLogEvent, RunLogEvent.run_id.in_([busy.id, child.id])) == 0
    assert count(RunGroup, RunGroup.parent_run_id == busy.id) == 0
    assert deletion.results_summary["runs"] == 2 and deletion.results_summary["run_groups"] == 1

    for n in (1, 2):
        (gates / str(n)).touch()
    assert S(wait_terminal(active.id).status) is S.COMPLETED


# --------------------------------------------------------------------------- maintenance


def _finished_run(org_id, *, days_ago: float, group_id=None, retry_of=None) -> Run:  # type: ignore[no-untyped-def]
    """A cancelled run (a child in ``group_id`` if given) whose completion is ``days_ago`` in the past."""
    if group_id is not None:
        run = groups.add_child(group_id, "extraction", {"asset_id": str(uuid.uuid4())})
    else:
        run = service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org_id,
                                 retry_of=retry_of)
    service.request_cancel(run.id)
    service.add_log(run.id, "INFO", "note", "some history")
    when = utcnow() - timedelta(days=days_ago)
    in_transaction(lambda s: s.execute(update(Run).where(Run.id == run.id).values(completed_at=when)))
    return run


def _bulk_old_runs(org_id, n: int, days_ago: float) -> list[uuid.UUID]:  # type: ignore[no-untyped-def]
    when = utcnow() - timedelta(days=days_ago)
    rows = [Run(organization_id=org_id, run_type="extraction", status=S.COMPLETED, queue="extraction",
                config={}, completed_at=when, created_at=when) for _ in range(n)]

    def write(s):  # type: ignore[no-untyped-def]
        s.add_all(rows)
        s.flush()
        s.add_all([RunLogEvent(run_id=r.id, event_type="complete", message="done") for r in rows])
        s.add_all([OutboxEvent(organization_id=org_id, run_id=r.id, kind="status", payload={}) for r in rows])
        return [r.id for r in rows]

    return in_transaction(write)


def test_retention_deletes_old_finished_runs_only(backend, org, dworker):
    old = _finished_run(org.id, days_ago=40)
    retried = _finished_run(org.id, days_ago=40)
    recent_retry = _finished_run(org.id, days_ago=1, retry_of=retried.id)
    recent = _finished_run(org.id, days_ago=2)

    old_parent = _finished_run(org.id, days_ago=40)
    group = groups.create_group(old_parent.id)
    old_child = _finished_run(org.id, days_ago=40, group_id=group.id)

    busy_parent = _finished_run(org.id, days_ago=40)
    busy_group = groups.create_group(busy_parent.id)
    still_queued = groups.add_child(busy_group.id, "extraction", {"asset_id": str(uuid.uuid4())})

    active = service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org.id)
    in_transaction(lambda s: s.execute(update(Run).where(Run.id == active.id)
                                       .values(created_at=utcnow() - timedelta(days=90))))
    bulk = _bulk_old_runs(org.id, 1200, days_ago=35)

    run = submit_run("system_maintenance", {"handlers": ["retention"], "retention_days": 30},
                     organization_id=system_org().id)
    done = wait_terminal(run.id, timeout=90)

    assert S(done.status) is S.COMPLETED, done.error_message
    gone = [old.id, retried.id, old_parent.id, old_child.id, *bulk]
    kept = [recent_retry.id, recent.id, busy_parent.id, still_queued.id, active.id, run.id]
    assert count(Run, Run.id.in_(gone[:500])) == 0 and count(Run, Run.id.in_(gone[500:])) == 0
    assert count(Run, Run.id.in_(kept)) == len(kept)
    assert count(RunLogEvent, RunLogEvent.run_id.in_(gone[:4])) == 0
    assert count(RunLogEvent, RunLogEvent.run_id.in_(kept)) > 0
    assert count(OutboxEvent, OutboxEvent.run_id.in_(gone[:500])) == 0
    assert count(RunGroup, RunGroup.id == group.id) == 0 and count(RunGroup, RunGroup.id == busy_group.id) == 1
    assert get_run(recent_retry.id).retry_of is None  # the run it retried is gone
    result = done.results_summary["retention"]
    assert result["deleted_runs"] == 1204 and result["batches"] >= 3
    assert result["families_kept_active_or_recent"] == 1
    handler_events = [e for e in get_logs(run.id) if e.event_type == "step_complete"]
    assert [e.context["handler"] for e in handler_events] == ["retention"]
    assert handler_events[0].message.startswith("Retention (30 days): deleted 1204 runs")


def test_orphans_are_counted_not_fixed(backend, org, dworker):
    from backend.config import get_settings

    lost = store_bytes(org.id, "lost.txt", b"its file will vanish\n")
    store_bytes(org.id, "fine.txt", b"fine\n")
    _path_for(lost.storage_key).unlink()
    stray = get_settings().assets_dir / str(org.id) / "zz" / "stray-file"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"nobody's")

    done = wait_terminal(submit_run("system_maintenance", {"handlers": ["orphans"]},
                                    organization_id=system_org().id).id)

    assert S(done.status) is S.COMPLETED, done.error_message
    result = done.results_summary["orphans"]
    assert (result["assets_missing_file"], result["files_without_asset"]) == (1, 1)
    assert result["assets_missing_file_ids"] == [str(lost.id)]
    assert result["files_without_asset_keys"] == [f"{org.id}/zz/stray-file"]
    assert result["child_runs_without_parent"] == 0
    assert stray.exists() and count(Asset, Asset.id == lost.id) == 1  # nothing fixed
    [event] = [e for e in get_logs(done.id) if e.event_type == "step_complete"]
    assert event.level.value == "WARN" and event.context["handler"] == "orphans"


def test_health_and_stale_runs_report_in_results(backend, org, dworker):
    done = wait_terminal(submit_run("system_maintenance", {}, organization_id=system_org().id).id)

    assert S(done.status) is S.COMPLETED, done.error_message
    results = done.results_summary
    assert results["handlers"] == ["stale_runs", "orphans", "health"]
    health = results["health"]
    assert health["database"]["ok"] is True and health["workers_online"] >= 1
    assert health["runs_by_status"].get("running", 0) >= 1  # this run itself
    assert {q["name"] for q in health["queues"]} >= {"default", "maintenance", "extraction"}
    assert {"stale", "requeued", "timed_out", "cancelled"} <= set(results["stale_runs"])
    handler_events = [e for e in get_logs(done.id) if e.event_type == "step_complete"]
    assert [e.context["handler"] for e in handler_events] == ["stale_runs", "orphans", "health"]
    assert [e.context["phase"] for e in get_logs(done.id) if e.event_type == "phase"] == [
        "stale_runs", "orphans", "health"]


def test_cancel_mid_retention_stops_between_batches(backend, org, dworker):
    total = 8000
    old = _bulk_old_runs(org.id, total, days_ago=60)
    run = submit_run("system_maintenance", {"handlers": ["retention", "health"], "retention_days": 30},
                     organization_id=system_org().id)

    def remaining() -> int:
        return sum(count(Run, Run.id.in_(old[i:i + 1000])) for i in range(0, total, 1000))

    wait_for(lambda: remaining() < total, timeout=90, interval=0.02, what="retention's first batch")
    assert service.request_cancel(run.id, by="test") is S.CANCELLING
    done = wait_terminal(run.id, timeout=90)

    assert S(done.status) is S.CANCELLED, done.error_message
    left = remaining()
    deleted = total - left
    assert 0 < deleted < total and deleted % 500 == 0  # whole batches (one transaction each), then it stopped
    kept = set(in_transaction(lambda s: s.execute(select(RunLogEvent.run_id).where(
        RunLogEvent.run_id.in_(sorted(old)[deleted:deleted + 500]))).scalars().all()))
    assert len(kept) == 500  # the runs kept still have their log events
    assert count(RunLogEvent, RunLogEvent.run_id.in_(sorted(old)[:500])) == 0  # the oldest batch went whole
    events = get_logs(run.id)
    [partial] = [e for e in events if e.event_type == "partial"]
    assert partial.message.startswith(f"Retention cancelled after {deleted // 500} batches: deleted {deleted} runs")
    assert [e.context["stage"] for e in events if e.event_type == "cancelled"] == ["acknowledged"]
    assert "health" not in phases(run.id) and "step_complete" not in {e.event_type for e in events}


def test_a_failing_handler_fails_the_run_and_the_others_still_run(backend, org, dworker):
    from backend.config import get_settings

    store_bytes(org.id, "report.txt", b"on storage that went away\n")
    assets_dir = get_settings().assets_dir
    unmounted = assets_dir.with_name(assets_dir.name + "-unmounted")
    assets_dir.rename(unmounted)  # the storage volume is not mounted
    try:
        done = wait_terminal(submit_run("system_maintenance", {"handlers": ["orphans", "health"]},
                                        organization_id=system_org().id).id)
    finally:
        unmounted.rename(assets_dir)

    assert S(done.status) is S.FAILED
    assert done.error_message == (f"1 of 2 maintenance handlers failed: orphans: The assets folder {assets_dir} is "
                                  "missing (is its storage mounted?); the files of 1 assets cannot be checked.")
    results = done.results_summary
    assert results["orphans"] == {"error": done.error_message.split("orphans: ", 1)[1]}
    assert results["health"]["database"]["ok"] is True  # the next handler ran, and its result is kept
    events = get_logs(done.id)
    assert [(e.event_type, e.context.get("handler")) for e in events if e.event_type.startswith("step_")] == [
        ("step_failed", "orphans"), ("step_complete", "health")]


def _register_test_steps() -> None:
    from backend.jobtypes.registry import get_registry
    from tests.jobs_for_tests import JOB_TYPES

    for job_type in JOB_TYPES:
        if job_type.key not in get_registry().types:
            get_registry().register(job_type)
