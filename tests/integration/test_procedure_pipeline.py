"""Procedures and pipelines on real workers; cancelling a parent cascades by its type's policy.

Workers import this module (``CURATORE_JOB_MODULES``), which registers a step action that waits for a
gate file the test creates: the signal that lets a test stop a procedure between known steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from backend import procedures
from backend.db.engine import in_transaction
from backend.db.states import RunStatus
from backend.errors import InvalidConfig, InvalidTransition
from backend.queues.dispatch import submit_run
from backend.runs.queries import RunFilter, get_logs, get_run, group_for, list_runs
from tests.conftest import reset_process_state, restore_environ

pytestmark = pytest.mark.integration
S = RunStatus
ROOT = Path(__file__).resolve().parents[2]
WORKER_ENV = {
    "CURATORE_JOB_MODULES": json.dumps(["tests.jobs_for_tests", "tests.integration.test_procedure_pipeline"]),
    "PYTHONPATH": str(ROOT),
}


@procedures.step_action("tests.wait_for_gate")
def wait_for_gate(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Wait (checking for a cancel) until ``<gate_dir>/<gate>`` exists."""
    gate = Path(params["gate_dir"]) / str(params["gate"])
    while not gate.exists():
        ctx.check_cancelled()
        time.sleep(0.02)
    return {"gate": gate.name}


procedures.define_procedure(
    "tests.gated", "Three steps, each released by a gate file",
    [procedures.Step(f"step_{n}", "tests.wait_for_gate", {"gate": n}) for n in (1, 2, 3)],
    params={"gate_dir": {"required": True}},
)


@pytest.fixture
def test_types(backend):  # type: ignore[no-untyped-def]
    """The test job types in this process too, as in the workers: a pipeline's stages are validated when it
    is submitted."""
    saved = {k: os.environ.get(k) for k in WORKER_ENV}
    os.environ.update(WORKER_ENV)
    reset_process_state()
    try:
        yield
    finally:
        restore_environ(saved)
        reset_process_state()


@pytest.fixture
def pworker(test_types, start_worker):  # type: ignore[no-untyped-def]
    return start_worker(extra_env=WORKER_ENV)


def wait_terminal(run_id, timeout: float = 60):  # type: ignore[no-untyped-def]
    from tests.support import wait_terminal as wait

    return wait(run_id, timeout)


def events(run_id, event_type: str | None = None):  # type: ignore[no-untyped-def]
    return [e for e in get_logs(run_id, limit=10_000) if event_type is None or e.event_type == event_type]


def children(run_id):  # type: ignore[no-untyped-def]
    return sorted(list_runs(RunFilter(parent_run_id=run_id)), key=lambda r: (r.created_at, r.id))


# --------------------------------------------------------------------------- procedures


def test_verify_assets_reports_mismatch_and_missing_one_event_per_step(backend, org, pworker):
    from backend.storage.assets import _path_for, store_bytes

    good = store_bytes(org.id, "good.txt", b"fine\n")
    tampered = store_bytes(org.id, "tampered.txt", b"original\n")
    gone = store_bytes(org.id, "gone.txt", b"soon missing\n")
    _path_for(tampered.storage_key).write_bytes(b"changed on disk\n")
    _path_for(gone.storage_key).unlink()

    run = submit_run("procedure", {"procedure": "verify_assets"}, organization_id=org.id)
    done = wait_terminal(run.id)

    assert S(done.status) is S.COMPLETED, done.error_message
    steps = events(run.id, "step_complete")
    assert [e.context["step"] for e in steps] == ["checksums", "extractions"]
    assert [(e.context["index"], e.context["total"]) for e in steps] == [(1, 2), (2, 2)]
    assert [e.context["phase"] for e in events(run.id, "phase")] == ["checksums", "extractions"]
    checks = done.results_summary["steps"][0]["result"]
    assert (checks["assets"], checks["ok"], checks["mismatched"], checks["missing"]) == (3, 1, 1, 1)
    assert checks["mismatched_ids"] == [str(tampered.id)] and checks["missing_ids"] == [str(gone.id)]
    assert done.results_summary["steps"][1]["result"]["by_status"] == {"none": 3}
    assert done.progress["current"] == 2 and done.progress["total"] == 2 and done.progress["percent"] == 100.0
    assert any(e.event_type == "integrity" and e.level.value == "WARN" for e in events(run.id))
    assert good.id  # the good one is counted in "ok"


def test_yaml_procedure_reextracts_and_indexes_a_collection(backend, org, pworker):
    from sqlalchemy import update

    from backend.db.models import Asset
    from backend.search import search
    from backend.storage.assets import store_bytes

    docs = [store_bytes(org.id, f"note{i}.md", f"# Note {i}\n\nzephyrine keyword {i}\n".encode()) for i in range(3)]
    other = store_bytes(org.id, "elsewhere.txt", b"zephyrine but not in the collection\n")
    in_transaction(lambda s: s.execute(update(Asset).where(Asset.id.in_([d.id for d in docs]))
                                       .values(collection_id="col-1")))

    run = submit_run("procedure", {"procedure": "reindex_collection", "params": {"collection_id": "col-1"}},
                     organization_id=org.id)
    done = wait_terminal(run.id)

    assert S(done.status) is S.COMPLETED, done.error_message
    assert [e.context["step"] for e in events(run.id, "step_complete")] == ["extract", "index"]
    extract, index = (s["result"] for s in done.results_summary["steps"])
    assert (extract["extracted"], extract["failed"], index["indexed"]) == (3, 0, 3)
    hits = {h.asset_id for h in search(org.id, "zephyrine")}
    assert hits == {d.id for d in docs} and other.id not in hits


def test_unknown_procedure_and_missing_param_fail_clearly(backend, org, pworker):
    unknown = submit_run("procedure", {"procedure": "no_such_thing"}, organization_id=org.id)
    missing = submit_run("procedure", {"procedure": "reindex_collection"}, organization_id=org.id)

    done = wait_terminal(unknown.id)
    assert S(done.status) is S.FAILED
    assert done.error_message.startswith("Unknown procedure 'no_such_thing'. Known procedures: ")
    assert "verify_assets" in done.error_message and "reindex_collection" in done.error_message
    assert events(unknown.id, "step_complete") == []

    done = wait_terminal(missing.id)
    assert S(done.status) is S.FAILED
    assert done.error_message == "Procedure 'reindex_collection' needs param(s) collection_id."

    # (one run per procedure at a time: duplicate protection keys procedure runs on the procedure's name)
    empty = submit_run("procedure", {"procedure": "reindex_collection", "params": {"collection_id": "nothing"}},
                       organization_id=org.id)
    done = wait_terminal(empty.id)
    assert S(done.status) is S.FAILED
    assert done.error_message == ("Step 1 (extract) of procedure reindex_collection failed: "
                                  "Collection 'nothing' has no assets.")
    assert [e.context["step"] for e in events(empty.id, "step_failed")] == ["extract"]


def test_cancel_mid_procedure_stops_between_steps(backend, org, pworker, tmp_path):
    from backend.runs.cancellation import cancel_run

    gates = tmp_path / "gates"
    gates.mkdir()
    run = submit_run("procedure", {"procedure": "tests.gated", "params": {"gate_dir": str(gates)}},
                     organization_id=org.id)
    (gates / "1").touch()
    _wait(lambda: events(run.id, "step_complete"), "step 1 to complete")
    assert S(get_run(run.id).status) is S.RUNNING  # waiting at gate 2

    assert cancel_run(run.id, by="tester", reason="enough") is S.CANCELLING
    done = wait_terminal(run.id)

    assert S(done.status) is S.CANCELLED
    assert [e.context["step"] for e in events(run.id, "step_complete")] == ["step_1"]
    assert done.progress["current"] == 1 and done.progress["phase"] == "step_2"
    requested = events(run.id, "cancel_requested")
    assert len(requested) == 1 and requested[0].context["by"] == "tester"


# --------------------------------------------------------------------------- pipelines


def test_pipeline_runs_stages_in_sequence(backend, org, pworker):
    config = {"name": "two-step", "stages": [
        {"run_type": "test_steps", "config": {"steps": 2}},
        {"run_type": "test_steps", "config": {"steps": 3}},
    ]}
    run = submit_run("pipeline", config, organization_id=org.id)
    done = wait_terminal(run.id)

    assert S(done.status) is S.COMPLETED, done.error_message
    first, second = children(run.id)
    assert S(first.status) is S.COMPLETED and S(second.status) is S.COMPLETED
    assert second.created_at >= first.completed_at  # stage 2 was spawned after stage 1 had ended
    assert (first.results_summary["steps"], second.results_summary["steps"]) == (2, 3)
    results = done.results_summary
    assert results["stages_completed"] == 2 and [s["status"] for s in results["stages"]] == ["completed"] * 2
    assert [s["run_id"] for s in results["stages"]] == [str(first.id), str(second.id)]
    assert results["children"]["completed"] == 2
    assert [e.context["stage"] for e in events(run.id, "step_complete")] == [1, 2]
    assert [e.context["phase"] for e in events(run.id, "phase")] == ["stage 1: test_steps", "stage 2: test_steps"]
    group = group_for(run.id)
    assert group.status == "completed" and group.finalized_at is not None
    assert done.progress["percent"] == 100.0


def test_failing_stage_fails_the_pipeline(backend, org, pworker):
    config = {"stages": [
        {"run_type": "test_steps", "config": {"steps": 1}},
        {"run_type": "test_steps", "config": {"steps": 2, "fail_at": 1}},
        {"run_type": "test_steps", "config": {"steps": 1}},
    ]}
    run = submit_run("pipeline", config, organization_id=org.id)
    done = wait_terminal(run.id)

    assert S(done.status) is S.FAILED
    assert done.error_message == "stage 2 (test_steps) failed: RuntimeError: step 1 failed on purpose"
    stages = children(run.id)
    assert [S(c.status) for c in stages] == [S.COMPLETED, S.FAILED]  # stage 3 never started
    assert done.results_summary["stages_completed"] == 1
    assert [s["status"] for s in done.results_summary["stages"]] == ["completed", "failed"]
    group = _wait(lambda: (g := group_for(run.id)) and g.finalized_at and g, "the group to end")
    assert (group.expected, group.completed, group.failed, group.status) == (2, 1, 1, "partial")
    assert [e.event_type for e in events(run.id)].count("error") == 1


def test_invalid_stage_is_refused_at_submit(backend, org, test_types):
    config = {"stages": [{"run_type": "test_steps", "config": {"steps": 1}},
                         {"run_type": "extraction", "config": {"asset": "x"}}]}
    with pytest.raises(InvalidConfig, match=r"^Invalid config for pipeline: config\.stages\.1\.config\.asset_id: "
                                            r"Field required; config\.stages\.1\.config\.asset: Extra inputs"):
        submit_run("pipeline", config, organization_id=org.id)
    assert list_runs(RunFilter()) == []


def test_cancelling_a_running_pipeline_cancels_its_running_stage(backend, org, pworker, tmp_path):
    from backend.runs.cancellation import cancel_run

    gates = tmp_path / "gates"
    gates.mkdir()
    config = {"stages": [
        {"run_type": "test_steps", "config": {"steps": 3, "gate_dir": str(gates)}},
        {"run_type": "test_steps", "config": {"steps": 1}},
    ]}
    run = submit_run("pipeline", config, organization_id=org.id)
    (gates / "1").touch()
    stage = _wait(lambda: [c for c in children(run.id) if c.progress.get("current") == 1], "stage 1 to progress")[0]
    assert S(stage.status) is S.RUNNING

    cancel_run(run.id, by="tester")
    done = wait_terminal(run.id)
    stage = get_run(stage.id)

    assert S(done.status) is S.CANCELLED, done.error_message
    assert S(stage.status) is S.CANCELLED and stage.progress["current"] == 1  # stopped at gate 2, not finished
    assert len(children(run.id)) == 1  # stage 2 never spawned
    assert [e.context["by"] for e in events(stage.id, "cancel_requested")] in (["tester"], [f"pipeline {run.id}"])
    group = group_for(run.id)
    assert (group.expected, group.cancelled, group.finalized_at is not None) == (1, 1, True)


def test_pipelines_waiting_on_their_stages_do_not_hold_the_slots_the_stages_need(backend, org, test_types,
                                                                                   start_worker, tmp_path):
    """More pipelines than their queue has slots, with stages in that same queue: a pipeline waiting for its
    stage holds no worker process and no slot, so every stage gets to run and every pipeline completes."""
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"queues": {"default": {"max_concurrency": 2}}}))
    backend.extend({"CURATORE_REGISTRY_OVERRIDES": str(overrides)})
    start_worker(extra_env=WORKER_ENV, concurrency=2)
    stages = [{"run_type": "test_steps", "config": {"steps": 2}}, {"run_type": "test_steps", "config": {"steps": 1}}]
    runs = [submit_run("pipeline", {"stages": stages}, organization_id=org.id) for _ in range(5)]  # unnamed: no
    # duplicate protection between them (a named pipeline runs once at a time per organization)

    done = [wait_terminal(run.id, timeout=120) for run in runs]

    assert [S(d.status) for d in done] == [S.COMPLETED] * 5, [d.error_message for d in done]
    assert all(d.results_summary["stages_completed"] == 2 for d in done)
    assert all([S(c.status) for c in children(d.id)] == [S.COMPLETED] * 2 for d in done)


def test_a_stage_refused_at_its_start_fails_the_pipeline(backend, org, pworker, tmp_path):
    from backend.runs.cancellation import cancel_run

    busy = submit_run("procedure", {"procedure": "tests.gated", "params": {"gate_dir": str(tmp_path)}},
                      organization_id=org.id)  # waits at its first gate: one tests.gated at a time per org
    config = {"name": "refused", "stages": [
        {"run_type": "test_steps", "config": {"steps": 1}},
        {"run_type": "procedure", "config": {"procedure": "tests.gated", "params": {"gate_dir": str(tmp_path)}}},
    ]}
    done = wait_terminal(submit_run("pipeline", config, organization_id=org.id).id)
    cancel_run(busy.id, by="test")

    assert S(done.status) is S.FAILED
    assert done.error_message.startswith("stage 2 (procedure) could not start: ")
    assert str(busy.id) in done.error_message
    assert [S(c.status) for c in children(done.id)] == [S.COMPLETED]
    assert done.results_summary["stages_completed"] == 1 and done.results_summary["stages_total"] == 2
    assert S(wait_terminal(busy.id).status) is S.CANCELLED


def test_cancel_run_cascades_by_policy(backend, org):
    """No worker: statuses set through the service. A pipeline's cancel reaches running and queued children;
    an upload's only its queued ones."""
    from backend.runs import groups, service
    from backend.runs.cancellation import cancel_run

    def running(run_id):  # type: ignore[no-untyped-def]
        attempt = service.mark_submitted(run_id, f"task-{run_id}")
        assert service.start(run_id, attempt, "test-worker", 60)

    def family(run_type: str, config: dict[str, Any]):  # type: ignore[no-untyped-def]
        parent = service.create_run(run_type, config, organization_id=org.id)
        running(parent.id)
        group = groups.create_group(parent.id)
        busy = groups.add_child(group.id, "test_steps", {"steps": 1})
        queued = groups.add_child(group.id, "test_steps", {"steps": 1})
        done = groups.add_child(group.id, "test_steps", {"steps": 1})
        running(busy.id)
        running(done.id)
        service.complete(done.id, {})
        return parent, busy, queued, done

    _register_test_steps()
    pipe, p_busy, p_queued, p_done = family("pipeline", {"stages": [{"run_type": "test_steps"}]})
    upload, u_busy, u_queued, u_done = family("upload", {"asset_ids": [str(org.id)]})

    assert cancel_run(pipe.id, by="tester") is S.CANCELLING
    assert cancel_run(upload.id, by="tester") is S.CANCELLING

    def statuses(*runs):  # type: ignore[no-untyped-def]
        return [S(get_run(r.id).status) for r in runs]

    assert statuses(p_busy, p_queued, p_done) == [S.CANCELLING, S.CANCELLED, S.COMPLETED]
    assert statuses(u_busy, u_queued, u_done) == [S.RUNNING, S.CANCELLED, S.COMPLETED]
    assert [e.context["children"] for e in events(pipe.id, "cancel_cascade")] == [2]
    assert [e.context["children"] for e in events(upload.id, "cancel_cascade")] == [1]
    assert cancel_run(pipe.id) is S.CANCELLING  # again: nothing left to cascade to, nothing breaks
    with pytest.raises(InvalidTransition, match="already ended"):
        cancel_run(p_done.id)


# --------------------------------------------------------------------------- helpers


def _register_test_steps() -> None:
    from backend.jobtypes.registry import get_registry
    from tests.jobs_for_tests import JOB_TYPES

    for job_type in JOB_TYPES:
        if job_type.key not in get_registry().types:
            get_registry().register(job_type)


def _wait(predicate, what: str, timeout: float = 30):  # type: ignore[no-untyped-def]
    from tests.support import wait_for

    return wait_for(predicate, timeout, what=what)
