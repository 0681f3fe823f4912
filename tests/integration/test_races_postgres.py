"""Races between real OS processes: one status wins, a group ends exactly once.

Each process is started with the ``spawn`` method (a fresh interpreter, its own
engine and connections), points itself at the test's database through the
``CURATORE_*`` environment, and waits on a barrier before each contested step,
so the calls really overlap.

- cancel vs. complete: 200 running runs; one process cancels each
  (``request_cancel`` then ``mark_cancelled``) while another completes it. Every
  run ends exactly once, and its ``status`` outbox rows form one valid chain.
- cancel vs. start: 300 submitted runs; one process cancels each while another starts it. A cancel is never
  lost: the run ends cancelled (the cancel came first) or is cancelling (the start came first), and the cancel
  says which.
- groups of 50 children finished by 4 processes at once (some sealed up front,
  some sealed by a fifth process while the children end): exact counters, each
  group finalized once, its parent ended once, its completion hook fired once,
  and sealing it again afterwards changes nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

import tests.hooks_for_tests as hooks
from backend.auth.orgs import ensure_org
from backend.db.engine import in_transaction
from backend.db.models import OutboxEvent, Run, RunGroup, RunLogEvent
from backend.db.states import TERMINAL, RunStatus, allowed
from backend.runs import groups, service

pytestmark = pytest.mark.integration

S = RunStatus
SPAWN = multiprocessing.get_context("spawn")
TRIALS = 200
CHILDREN = 50
WORKERS = 4
BARRIER_TIMEOUT = 60.0


# --------------------------------------------------------------------------- the other processes


def _point_at(env: dict[str, str]) -> None:
    """Make this fresh process use the test's database, broker and settings."""
    os.environ.update(env)
    if "CURATORE_REDIS_URL" not in env:
        os.environ.pop("CURATORE_REDIS_URL", None)
    from backend.config import reset_settings
    from backend.db.engine import dispose_engines
    from backend.jobtypes.registry import reset_registry

    reset_settings()
    reset_registry()
    dispose_engines()


def _cancel_each(barrier: Any, run_ids: list[str]) -> list[tuple[str, bool]]:
    from backend.errors import InvalidTransition

    out = []
    for rid in map(uuid.UUID, run_ids):
        barrier.wait(BARRIER_TIMEOUT)
        try:
            requested = service.request_cancel(rid, by="racer").value
        except InvalidTransition:
            requested = "ended"
        out.append((requested, service.mark_cancelled(rid, "Stopped after the cancel request")))
    return out


def _request_cancel_each(barrier: Any, run_ids: list[str]) -> list[str]:
    out = []
    for rid in map(uuid.UUID, run_ids):
        barrier.wait(BARRIER_TIMEOUT)
        out.append(service.request_cancel(rid, by="racer").value)
    return out


def _start_each(barrier: Any, run_ids: list[str]) -> list[bool]:
    out = []
    for rid in map(uuid.UUID, run_ids):
        barrier.wait(BARRIER_TIMEOUT)
        out.append(service.start(rid, 1, "racer", 300))
    return out


def _complete_each(barrier: Any, run_ids: list[str]) -> list[bool]:
    out = []
    for rid in map(uuid.UUID, run_ids):
        barrier.wait(BARRIER_TIMEOUT)
        out.append(service.complete(rid, {"done": True}))
    return out


def _finish_children(barrier: Any, plan: list[list[tuple[str, str]]]) -> list[bool]:
    """For each group in turn (all processes start it together): end my share of its children."""
    out = []
    for share in plan:
        barrier.wait(BARRIER_TIMEOUT)
        for rid, outcome in share:
            if outcome == "completed":
                out.append(service.complete(uuid.UUID(rid), {"child": rid}))
            else:
                out.append(service.fail(uuid.UUID(rid), "child failed on purpose"))
    return out


def _seal_groups(barrier: Any, plan: list[tuple[str | None, float]]) -> list[bool | None]:
    """For each group in turn: after ``delay`` seconds, seal it while the children are ending (None: sealed before)."""
    out: list[bool | None] = []
    for group_id, delay in plan:
        barrier.wait(BARRIER_TIMEOUT)
        if group_id is None:
            out.append(None)
            continue
        time.sleep(delay)
        out.append(groups.seal(uuid.UUID(group_id)))
    return out


ROLES = {"cancel": _cancel_each, "request_cancel": _request_cancel_each, "start": _start_each,
         "complete": _complete_each, "finish": _finish_children, "seal": _seal_groups}


def _process_main(key: str, role: str, env: dict[str, str], barrier: Any, results: Any, arg: Any) -> None:
    try:
        _point_at(env)
        import tests.hooks_for_tests  # noqa: F401  (registers the completion hook in this process)

        results.put((key, None, ROLES[role](barrier, arg)))
    except BaseException:  # noqa: BLE001 - reported to the test, which fails with it
        barrier.abort()
        results.put((key, traceback.format_exc(), None))


def run_processes(env: dict[str, str], jobs: list[tuple[str, str, Any]], timeout: float = 100) -> dict[str, Any]:
    """Run ``(key, role, arg)`` jobs, one spawned process each, sharing one barrier; their results by key."""
    barrier = SPAWN.Barrier(len(jobs))
    results = SPAWN.Queue()
    procs = [
        SPAWN.Process(target=_process_main, args=(key, role, env, barrier, results, arg), daemon=True)
        for key, role, arg in jobs
    ]
    for proc in procs:
        proc.start()
    out: dict[str, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) + len(errors) < len(procs):
            key, error, value = results.get(timeout=max(deadline - time.monotonic(), 0.1))
            if error:
                errors.append(f"process {key} failed:\n{error}")
            else:
                out[key] = value
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    assert not errors, "\n".join(errors)
    return out


# --------------------------------------------------------------------------- checks on the database


def running_run(org_id: uuid.UUID, **kwargs: Any) -> uuid.UUID:
    run = service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org_id, **kwargs)
    attempt = service.mark_submitted(run.id, f"task-{run.id.hex[:8]}")
    assert attempt == 1
    assert service.start(run.id, attempt, "setup", 300)
    return run.id


def statuses(run_ids: list[uuid.UUID]) -> dict[uuid.UUID, RunStatus]:
    rows = in_transaction(lambda s: s.execute(select(Run.id, Run.status).where(Run.id.in_(run_ids))).all())
    return {rid: RunStatus(status) for rid, status in rows}


def status_events(run_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[dict[str, Any]]]:
    """Each run's ``status`` outbox payloads, in seq order."""
    rows = in_transaction(
        lambda s: s.execute(
            select(OutboxEvent.run_id, OutboxEvent.seq, OutboxEvent.payload)
            .where(OutboxEvent.kind == "status", OutboxEvent.run_id.in_(run_ids))
            .order_by(OutboxEvent.seq)
        ).all()
    )
    out: dict[uuid.UUID, list[dict[str, Any]]] = {rid: [] for rid in run_ids}
    for rid, _seq, payload in rows:
        out[rid].append(payload)
    return out


def assert_one_ending(run_id: uuid.UUID, events: list[dict[str, Any]], final: RunStatus) -> None:
    """The status events start at pending, follow the table, and end once, in ``final``."""
    path = [e["status"] for e in events]
    current = S.PENDING
    for event in events:
        assert event["from"] == current.value, f"run {run_id}: broken chain {path}"
        nxt = RunStatus(event["status"])
        assert allowed(current, nxt), f"run {run_id}: {current.value} -> {nxt.value} in {path}"
        current = nxt
    assert current is final, f"run {run_id}: events end in {current.value}, the run is {final.value}"
    terminal = [p for p in path if RunStatus(p) in TERMINAL]
    assert terminal == [final.value], f"run {run_id}: terminal events {terminal}"


def log_events(run_ids: list[uuid.UUID], event_type: str) -> list[RunLogEvent]:
    return in_transaction(
        lambda s: s.execute(
            select(RunLogEvent).where(RunLogEvent.run_id.in_(run_ids), RunLogEvent.event_type == event_type)
        ).scalars().all()
    )


# --------------------------------------------------------------------------- cancel vs. complete


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_cancel_racing_complete_ends_each_run_once(pg_backend):
    org = ensure_org("acme", "Acme")
    run_ids = [running_run(org.id) for _ in range(TRIALS)]
    ids = [str(r) for r in run_ids]

    out = run_processes(pg_backend.env, [("cancel", "cancel", ids), ("complete", "complete", ids)])

    final = statuses(run_ids)
    events = status_events(run_ids)
    refused = {e.run_id: e for e in log_events(run_ids, "transition_refused") if e.context["to"] == "completed"}
    for rid, (requested, cancelled), completed in zip(run_ids, out["cancel"], out["complete"], strict=True):
        status = final[rid]
        assert_one_ending(rid, events[rid], status)
        assert status in (S.COMPLETED, S.CANCELLED), status
        if status is S.COMPLETED:
            assert completed and not cancelled, (requested, cancelled, completed)
            assert requested in ("ended", "completed")  # the cancel came too late: refused, nothing changed
        else:
            assert cancelled and not completed, (requested, cancelled, completed)
            assert requested == "cancelling"
            assert [e["status"] for e in events[rid]][-2:] == ["cancelling", "cancelled"]
            assert rid in refused, "the late complete must be refused and logged"
    outcomes = Counter(s.value for s in final.values())
    print(f"cancel vs complete over {TRIALS} trials: {dict(outcomes)}")
    assert sum(outcomes.values()) == TRIALS


# --------------------------------------------------------------------------- a late commit in the outbox


@pytest.mark.postgres
def test_a_reader_never_skips_an_outbox_row_that_commits_late(pg_backend):
    """No writer takes a lock for the outbox: a row written first may commit last. The relay numbers rows as
    they commit, so a reader following positions sees it after the one that committed first, not never."""
    from backend.db.engine import transaction
    from backend.runs import outbox

    org = ensure_org("acme", "Acme")
    first, second = (service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org.id)
                     for _ in range(2))
    cursor = outbox.last_seq()
    with transaction() as slow:
        service.add_log(first.id, "INFO", "note", "written first, committed last", session=slow)
        service.add_log(second.id, "INFO", "note", "written second, committed first")
        seen = outbox.read_after(cursor)
        assert [(e["run_id"], e["payload"]["event"]["message"]) for e in seen] == \
            [(str(second.id), "written second, committed first")]
        cursor = seen[-1]["seq"]
    late = outbox.read_after(cursor)
    assert [(e["run_id"], e["payload"]["event"]["message"]) for e in late] == \
        [(str(first.id), "written first, committed last")]
    assert late[0]["seq"] > cursor
    rows = in_transaction(lambda s: s.execute(select(OutboxEvent.seq, OutboxEvent.pos).where(
        OutboxEvent.run_id.in_([first.id, second.id]), OutboxEvent.kind == "log").order_by(OutboxEvent.seq)).all())
    (first_seq, first_pos), (second_seq, second_pos) = rows
    assert first_seq < second_seq and first_pos > second_pos  # what a reader following seq would have skipped


# --------------------------------------------------------------------------- cancel vs. start


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_a_cancel_racing_a_start_is_never_lost(pg_backend):
    org = ensure_org("acme", "Acme")
    run_ids = []
    for _ in range(500):
        run = service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org.id)
        assert service.mark_submitted(run.id, f"task-{run.id.hex[:8]}") == 1
        run_ids.append(run.id)
    ids = [str(r) for r in run_ids]

    out = run_processes(pg_backend.env, [("cancel", "request_cancel", ids), ("start", "start", ids)])

    final = statuses(run_ids)
    refused_cancels = [e for e in log_events(run_ids, "transition_refused")
                       if e.context["to"] in ("cancelled", "cancelling")]
    assert not refused_cancels, [e.message for e in refused_cancels]
    for rid, answered, started in zip(run_ids, out["cancel"], out["start"], strict=True):
        if started:  # the start came first: the cancel must find it running and ask it to stop
            assert (answered, final[rid]) == ("cancelling", S.CANCELLING), (rid, answered, final[rid])
        else:  # the cancel came first: the start was refused
            assert (answered, final[rid]) == ("cancelled", S.CANCELLED), (rid, answered, final[rid])
    outcomes = Counter(s.value for s in final.values())
    print(f"cancel vs start over 500 trials: {dict(outcomes)}")
    assert sum(outcomes.values()) == 500


# --------------------------------------------------------------------------- a group finished by 4 processes


@dataclass
class GroupCase:
    expect: str  # the group's final status
    seal_late: bool  # sealed by another process while its children end, not before
    group_id: uuid.UUID
    parent_id: uuid.UUID
    children: list[tuple[uuid.UUID, str]]  # (child run id, "completed" | "failed")


def build_group(org_id: uuid.UUID, expect: str, seal_late: bool) -> GroupCase:
    parent_id = running_run(org_id, display_name=f"parent ({expect})")
    group = groups.create_group(parent_id, hook=hooks.COUNTING_HOOK)
    children = []
    for i in range(CHILDREN):
        child = groups.add_child(group.id, "extraction", {"asset_id": str(uuid.uuid4())})
        fails = expect == "failed" or (expect == "partial" and i % 5 == 0)
        children.append((child.id, "failed" if fails else "completed"))
    if not seal_late:
        assert groups.seal(group.id) is False  # sealed, but nothing has ended yet
    for child_id, _ in children:
        attempt = service.mark_submitted(child_id, f"task-{child_id.hex[:8]}")
        assert service.start(child_id, attempt, "setup", 300)
    return GroupCase(expect, seal_late, group.id, parent_id, children)


def finish_groups_concurrently(backend, rounds: int, seal_delay: float) -> None:  # type: ignore[no-untyped-def]
    """Each round: a partial, a completed and a failed group sealed up front, and the same three sealed
    by a fifth process ``0..seal_delay`` s after the four finishers start on them."""
    org = ensure_org("acme", "Acme")
    cases = [
        build_group(org.id, expect, seal_late)
        for _ in range(rounds)
        for seal_late in (False, True)
        for expect in ("partial", "completed", "failed")
    ]
    plans = [
        [[(str(rid), outcome) for rid, outcome in case.children[k::WORKERS]] for case in cases] for k in range(WORKERS)
    ]
    rng = random.Random(0)
    seal_plan = [(str(c.group_id), rng.uniform(0, seal_delay)) if c.seal_late else (None, 0.0) for c in cases]
    jobs = [(f"finisher-{k}", "finish", plans[k]) for k in range(WORKERS)] + [("sealer", "seal", seal_plan)]
    out = run_processes(backend.env, jobs)
    sealed_by_sealer = out.pop("sealer")
    assert all(all(results) for results in out.values()), "every child ends on its first call"

    finalizers = Counter()
    for case in cases:
        group = in_transaction(lambda s: s.get(RunGroup, case.group_id))  # noqa: B023
        want = Counter(outcome for _, outcome in case.children)
        assert (group.expected, group.completed, group.failed, group.cancelled) == (
            CHILDREN, want["completed"], want["failed"], 0
        )
        assert group.sealed and group.finalized_at is not None and group.hook_fired_at is not None
        assert group.status == case.expect

        child_ids = [rid for rid, _ in case.children]
        child_status = statuses(child_ids)
        child_events = status_events(child_ids)
        for rid, outcome in case.children:
            assert child_status[rid] is RunStatus(outcome)
            assert_one_ending(rid, child_events[rid], RunStatus(outcome))

        parent_final = S.FAILED if case.expect == "failed" else S.COMPLETED
        assert statuses([case.parent_id])[case.parent_id] is parent_final
        assert_one_ending(case.parent_id, status_events([case.parent_id])[case.parent_id], parent_final)

        fired = log_events([case.parent_id], hooks.HOOK_EVENT)
        assert len(fired) == 1, f"the hook fired {len(fired)} times for a {case.expect} group"
        ctx = fired[0].context
        assert (ctx["group_id"], ctx["status"], ctx["completed"], ctx["failed"]) == (
            str(case.group_id), case.expect, want["completed"], want["failed"]
        )
        finalizers[ctx["pid"]] += 1

        # sealing again after the end (a retried task) finalizes nothing and fires nothing
        assert groups.seal(case.group_id) is False
        assert len(log_events([case.parent_id], hooks.HOOK_EVENT)) == 1
        assert_one_ending(case.parent_id, status_events([case.parent_id])[case.parent_id], parent_final)

    assert os.getpid() not in finalizers, "the groups must be finalized by the other processes"
    late = [r for r in sealed_by_sealer if r is not None]
    print(f"groups finalized per process: {dict(finalizers)}; late seals that finalized: {sum(late)}/{len(late)}")


@pytest.mark.postgres
@pytest.mark.timeout(240)
def test_group_finished_by_four_processes_ends_once_postgres(pg_backend):
    finish_groups_concurrently(pg_backend, rounds=2, seal_delay=0.4)


@pytest.mark.timeout(240)
def test_group_finished_by_four_processes_ends_once_sqlite(sqlite_backend):
    finish_groups_concurrently(sqlite_backend, rounds=1, seal_delay=0.4)
