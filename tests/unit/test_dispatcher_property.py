"""The dispatcher's choice, as properties: the pure ``fair_pick`` and the real dispatcher on a real database.

``fair_pick`` (no database): for random candidates, free slots, active counts and per-type limits, the
choice (1) never exceeds the free slots, picks nothing twice and nothing unknown; (2) never pushes a
type past its own limit; (3) leaves a slot free only when every waiting candidate is held by its type's
limit; (4) never takes a lower priority while an eligible higher one waits; (5) within a priority never
serves an organization that ends with two more active runs than an organization left waiting, and within
one organization takes the oldest first; (6) does not depend on the input order; and (7) each pick is the
best eligible candidate at its step by (priority desc, the organization's active runs, age).

The dispatcher (a Hypothesis state machine on SQLite and PostgreSQL, no worker): runs arrive in three
small queues (limits 2, 3, 1, two job types with their own limits) from three organizations at random
priorities, some held back by ``not_before``; they are started, completed, failed, cancelled, go stale
and are re-queued as recovery would; dispatch passes run over one queue or all of them. Publishing, the
broker boundary, is replaced by a recorder (which can also play a broker that is down); the database is
real. After every step: per queue, submitted + running + cancelling + stale <= the queue's limit, per type
<= the type's limit; a run held by a future ``not_before`` was never dispatched. After every pass: each
claimed run was published once for its new dispatch attempt (never twice, never a run that was not
pending), and the set claimed in each queue satisfies the ``fair_pick`` properties above computed from
the database as it was just before the pass, and equals what ``fair_pick`` chooses from that snapshot.
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import select, update

from backend.db.engine import in_transaction
from backend.db.models import Run
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.jobtypes.registry import JobType, QueueDef, get_registry, reset_registry
from backend.queues.dispatcher import OCCUPYING, Candidate, dispatch_pending, fair_pick
from backend.runs import service
from tests.jobs_for_tests import GatedStepsConfig, run_gated_steps

S = RunStatus
UNLIMITED = math.inf

# --------------------------------------------------------------------------- the properties, stated once


def check_fair_choice(
    candidates: list[Candidate],
    free: int,
    org_active: dict[uuid.UUID, int],
    type_active: dict[str, int],
    type_limits: dict[str, int],
    picked: list[Candidate],
) -> None:
    """Assert the dispatcher's rules on one choice, without re-running its algorithm."""
    ids = [c.id for c in picked]
    assert len(ids) == len(set(ids)), "a candidate picked twice"
    assert set(ids) <= {c.id for c in candidates}, "picked something that was not a candidate"
    assert len(picked) <= max(free, 0), f"{len(picked)} picked for {free} free slot(s)"

    final_org, final_type = Counter(org_active), Counter(type_active)
    for c in picked:
        final_org[c.organization_id] += 1
        final_type[c.run_type] += 1
    for run_type, limit in type_limits.items():
        got = sum(1 for c in picked if c.run_type == run_type)
        assert got == 0 or final_type[run_type] <= limit, (
            f"type {run_type} pushed to {final_type[run_type]} past its limit {limit}")

    chosen = set(ids)

    def held(c: Candidate) -> bool:  # its type is at its own limit (counts only grow during a pass)
        return final_type[c.run_type] >= type_limits.get(c.run_type, UNLIMITED)

    waiting = [c for c in candidates if c.id not in chosen and not held(c)]
    if waiting:
        assert len(picked) == free, f"a slot left free ({len(picked)} of {free}) while {len(waiting)} run(s) wait"
    for u in waiting:
        for p in picked:
            assert p.priority >= u.priority, (
                f"dispatched priority {p.priority} while an eligible priority {u.priority} run waits")
            if p.priority != u.priority:
                continue
            if p.organization_id != u.organization_id:
                # p's organization got a slot while u's waited: it had no more active runs than u's at that
                # moment, so it ends with at most one more.
                assert final_org[p.organization_id] - 1 <= final_org[u.organization_id], (
                    f"an organization ending with {final_org[p.organization_id]} active runs got a slot while "
                    f"one ending with {final_org[u.organization_id]} waited, at the same priority")
            else:
                assert (p.created_at, p.id) < (u.created_at, u.id), "a younger run went before an older one"


def check_greedy_steps(
    candidates: list[Candidate],
    org_active: dict[uuid.UUID, int],
    type_active: dict[str, int],
    type_limits: dict[str, int],
    picked: list[Candidate],
) -> None:
    """Each pick, in order, is the best eligible candidate left at its step."""
    orgs, types = Counter(org_active), Counter(type_active)
    left = list(candidates)
    for p in picked:
        eligible = [c for c in left if types[c.run_type] < type_limits.get(c.run_type, UNLIMITED)]
        best = min(eligible, key=lambda c: (-c.priority, orgs[c.organization_id], c.created_at, c.id))
        assert p == best, f"picked {p} where {best} was the best eligible candidate"
        orgs[p.organization_id] += 1
        types[p.run_type] += 1
        left.remove(p)


# --------------------------------------------------------------------------- fair_pick, pure

ORGS = [uuid.UUID(int=i) for i in (1, 2, 3)]
TYPES = ["alpha", "beta", "gamma"]
BASE = datetime(2025, 1, 1, tzinfo=timezone.utc)


@st.composite
def pick_inputs(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(0, 14))
    ids = draw(st.lists(st.uuids(), min_size=n, max_size=n, unique=True))
    candidates = [
        Candidate(
            run_id,
            draw(st.sampled_from(TYPES)),
            draw(st.sampled_from(ORGS)),
            draw(st.integers(0, 4)),
            BASE + timedelta(seconds=draw(st.integers(0, 20))),  # equal ages happen: the id breaks the tie
        )
        for run_id in ids
    ]
    free = draw(st.integers(0, 8))
    org_active = draw(st.dictionaries(st.sampled_from(ORGS), st.integers(0, 4)))
    type_active = draw(st.dictionaries(st.sampled_from(TYPES), st.integers(0, 3)))
    type_limits = draw(st.dictionaries(st.sampled_from(TYPES), st.integers(1, 4)))
    return candidates, free, org_active, type_active, type_limits


@settings(max_examples=600, deadline=None)
@given(pick_inputs())
def test_fair_pick_follows_the_rules(inputs) -> None:  # type: ignore[no-untyped-def]
    candidates, free, org_active, type_active, type_limits = inputs
    picked = fair_pick(candidates, free, org_active, type_active, type_limits)
    check_fair_choice(candidates, free, org_active, type_active, type_limits, picked)
    check_greedy_steps(candidates, org_active, type_active, type_limits, picked)


@settings(max_examples=300, deadline=None)
@given(pick_inputs(), st.randoms(use_true_random=False))
def test_fair_pick_does_not_depend_on_input_order(inputs, rnd: random.Random) -> None:  # type: ignore[no-untyped-def]
    candidates, free, org_active, type_active, type_limits = inputs
    shuffled = list(candidates)
    rnd.shuffle(shuffled)
    assert fair_pick(shuffled, free, org_active, type_active, type_limits) == fair_pick(
        candidates, free, org_active, type_active, type_limits)


@settings(max_examples=300, deadline=None)
@given(pick_inputs())
def test_fair_pick_leaves_its_inputs_alone(inputs) -> None:  # type: ignore[no-untyped-def]
    candidates, free, org_active, type_active, type_limits = inputs
    before = (list(candidates), dict(org_active), dict(type_active), dict(type_limits))
    fair_pick(candidates, free, org_active, type_active, type_limits)
    assert (candidates, org_active, type_active, type_limits) == before


@settings(max_examples=200, deadline=None)
@given(big=st.integers(2, 12), small=st.integers(1, 4), free=st.integers(1, 6), busy=st.integers(0, 3))
def test_a_busy_tenant_does_not_starve_a_small_one(big: int, small: int, free: int, busy: int) -> None:
    """One organization queued many old runs; another queued a few later: they share the slots."""
    a, b = ORGS[0], ORGS[1]
    old = [Candidate(uuid.uuid4(), "alpha", a, 2, BASE + timedelta(seconds=i)) for i in range(big)]
    new = [Candidate(uuid.uuid4(), "alpha", b, 2, BASE + timedelta(hours=1, seconds=i)) for i in range(small)]
    picked = fair_pick(old + new, free, {a: busy}, {}, {})
    got_b = sum(1 for c in picked if c.organization_id == b)
    # b, with fewer active runs, gets at least half the slots (as far as it has runs), however old a's are
    assert got_b >= min(small, free // 2, free)
    if busy >= free:
        assert got_b == min(small, free)  # a already has more: b goes first
    assert [c for c in picked if c.organization_id == a] == old[: len(picked) - got_b]


def test_fair_pick_examples() -> None:
    a, b = ORGS[0], ORGS[1]
    t = lambda s: BASE + timedelta(seconds=s)  # noqa: E731
    urgent = Candidate(uuid.UUID(int=10), "alpha", a, 4, t(9))
    older = Candidate(uuid.UUID(int=11), "alpha", a, 2, t(0))
    other_org = Candidate(uuid.UUID(int=12), "alpha", b, 2, t(5))
    held = Candidate(uuid.UUID(int=13), "beta", b, 3, t(1))
    cands = [older, other_org, urgent, held]
    # priority first; then b (no active runs) before a's older run; beta is at its limit and does not block
    assert fair_pick(cands, 2, {}, {"beta": 1}, {"beta": 1}) == [urgent, other_org]
    assert fair_pick(cands, 3, {}, {}, {"beta": 1}) == [urgent, held, older]
    assert fair_pick(cands, 0, {}, {}, {}) == []
    assert fair_pick([], 3, {}, {}, {}) == []


# --------------------------------------------------------------------------- the dispatcher on a real database

# queue suffix, limit, {type suffix: type limit or None}
QUEUES = [("qa", 2, {"a1": None, "a2": 1}), ("qb", 3, {"b1": None, "b2": 2}), ("qc", 1, {"c1": None})]
EXAMPLES = {"sqlite": 150, "postgres": 80}
STEPS = 40


@dataclass
class Publisher:
    """Stands in for ``backend.queues.dispatch.publish``: records calls; can play a broker that is down."""

    calls: list[tuple[uuid.UUID, int, str, str]] = field(default_factory=list)  # run, attempt, queue, task id
    down: bool = False

    def __call__(self, task_name: str, queue: str, run_id: uuid.UUID, attempt: int, task_id: str,
                 timeout: int) -> None:
        self.calls.append((run_id, attempt, queue, task_id))
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused (the test's broker is down)")


@dataclass(frozen=True)
class Row:
    id: uuid.UUID
    queue: str
    run_type: str
    organization_id: uuid.UUID
    priority: int
    created_at: datetime
    status: RunStatus
    not_before: datetime | None
    dispatch_attempt: int

    def candidate(self) -> Candidate:
        return Candidate(self.id, self.run_type, self.organization_id, self.priority, self.created_at)


class DispatchMachine(RuleBasedStateMachine):
    orgs: list[uuid.UUID] = []
    publisher: Publisher
    totals: Counter[str] = Counter()  # what the examples did, summed (a guard against a test that checks nothing)

    def __init__(self) -> None:
        super().__init__()
        tag = uuid.uuid4().hex[:6]
        registry = get_registry()
        self.queue_limits: dict[str, int] = {}
        self.type_limits: dict[str, int] = {}
        self.types: list[str] = []
        for suffix, limit, types in QUEUES:
            queue = f"pd_{tag}_{suffix}"
            registry.add_queue(QueueDef(queue, queue, limit))
            self.queue_limits[queue] = limit
            for type_suffix, type_limit in types.items():
                key = f"pd_{tag}_{type_suffix}"
                registry.register(JobType(key, key, "flask-conical", "pink", queue, 60, (), GatedStepsConfig,
                                          run_gated_steps, max_concurrency=type_limit))
                self.types.append(key)
                if type_limit:
                    self.type_limits[key] = type_limit
        self.queues = sorted(self.queue_limits)
        self.publisher.calls.clear()
        self.publisher.down = False
        self.seen_dispatches: set[tuple[uuid.UUID, int]] = set()
        self.seen_tasks: set[str] = set()
        self.held_back: set[uuid.UUID] = set()  # created with a not_before in the future, not released
        self.totals["examples"] += 1

    def teardown(self) -> None:
        registry = get_registry()
        for key in self.types:
            registry.unregister(key)
        for queue in self.queues:
            registry.queues.pop(queue, None)

    # ------------------------------------------------------------------ reading the database

    def rows(self) -> list[Row]:
        stmt = select(Run.id, Run.queue, Run.run_type, Run.organization_id, Run.priority, Run.created_at,
                      Run.status, Run.not_before, Run.dispatch_attempt).where(Run.queue.in_(self.queues))
        return [Row(*r[:6], RunStatus(r[6]), *r[7:]) for r in in_transaction(lambda s: s.execute(stmt).all())]

    def with_status(self, *statuses: RunStatus) -> list[Row]:
        return sorted((r for r in self.rows() if r.status in statuses), key=lambda r: (r.created_at, r.id))

    @staticmethod
    def pick(rows: list[Row], i: int) -> Row | None:
        return rows[i % len(rows)] if rows else None

    # ------------------------------------------------------------------ rules

    @initialize(n=st.integers(2, 6), data=st.data())
    def some_arrivals(self, n: int, data: st.DataObject) -> None:
        for _ in range(n):
            self.arrive(data.draw(st.integers(0, 99)), data.draw(st.integers(0, 2)), data.draw(st.integers(0, 4)),
                        None)

    @rule(arrivals=st.lists(st.tuples(st.integers(0, 99), st.integers(0, 2), st.integers(0, 4),
                                      st.sampled_from([None, None, None, "future", "past"])), min_size=1, max_size=4))
    def arrivals(self, arrivals: list[tuple[int, int, int, str | None]]) -> None:
        for arrival in arrivals:
            self.arrive(*arrival)

    def arrive(self, kind: int, org: int, priority: int, hold: str | None) -> None:
        not_before = None
        if hold == "future":
            not_before = utcnow() + timedelta(hours=1)
        elif hold == "past":
            not_before = utcnow() - timedelta(seconds=5)
        run = service.create_run(self.types[kind % len(self.types)], {"steps": 1}, organization_id=self.orgs[org],
                                 priority=priority, not_before=not_before)
        if hold == "future":
            self.held_back.add(run.id)

    @rule(which=st.sampled_from(["all", "all", 0, 1, 2]), broker_down=st.sampled_from([False, False, False, True]))
    def dispatch_pass(self, which: str | int, broker_down: bool) -> None:
        queues = self.queues if which == "all" else [self.queues[int(which)]]
        self.publisher.down = broker_down
        before = self.rows()
        first_call = len(self.publisher.calls)
        now = utcnow()
        outcome = dispatch_pending(queues)
        calls = self.publisher.calls[first_call:]
        after = {r.id: r for r in self.rows()}
        self.totals["passes"] += 1
        self.totals["claimed"] += len(calls)
        self.totals["failed_publishes"] += len(calls) if self.publisher.down else 0

        # the broker was called once per claimed run, for its new attempt, never twice for one attempt
        assert set(outcome) == {c[0] for c in calls}
        assert len({c[0] for c in calls}) == len(calls), "a run published twice in one pass"
        by_id = {r.id: r for r in before}
        for run_id, attempt, queue, task_id in calls:
            old = by_id[run_id]
            assert old.status is S.PENDING, f"published a run that was {old.status.value}"
            assert old.queue == queue and queue in queues
            assert attempt == old.dispatch_attempt + 1 == after[run_id].dispatch_attempt
            assert (run_id, attempt) not in self.seen_dispatches, "the same dispatch attempt published twice"
            assert task_id not in self.seen_tasks
            self.seen_dispatches.add((run_id, attempt))
            self.seen_tasks.add(task_id)
            assert run_id not in self.held_back and (old.not_before is None or old.not_before <= now), \
                "dispatched a run before its not_before"
            want = S.PENDING if self.publisher.down else S.SUBMITTED  # a failed publish goes back to the queue
            assert after[run_id].status is want
            assert (outcome[run_id] is None) is (not self.publisher.down)
        # nothing else changed
        published = {c[0] for c in calls}
        for row in before:
            if row.id not in published:
                assert after[row.id] == row, f"a run not dispatched changed: {row} -> {after[row.id]}"

        # per queue: the choice follows the rules, from the database as it was before the pass
        for queue in queues:
            rows = [r for r in before if r.queue == queue]
            occupying = [r for r in rows if r.status in OCCUPYING]
            free = self.queue_limits[queue] - len(occupying)
            org_active = Counter(r.organization_id for r in occupying)
            type_active = Counter(r.run_type for r in occupying)
            candidates = [r.candidate() for r in sorted(rows, key=lambda r: (r.created_at, r.id))
                          if r.status is S.PENDING and (r.not_before is None or r.not_before <= now)]
            picked = [by_id[c[0]].candidate() for c in calls if c[2] == queue]
            if 0 < free < len(candidates) and len({c.organization_id for c in candidates}) > 1:
                self.totals["contested"] += 1  # more runs than slots, from several organizations
            check_fair_choice(candidates, free, org_active, type_active, self.type_limits, picked)
            assert picked == fair_pick(candidates, free, org_active, type_active, self.type_limits)

    @rule(i=st.integers(0, 99))
    def start(self, i: int) -> None:
        row = self.pick(self.with_status(S.SUBMITTED), i)
        if row:
            assert service.start(row.id, row.dispatch_attempt, "worker-test", 30)

    @rule(i=st.integers(0, 99), outcome=st.sampled_from(["complete", "complete", "fail", "time_out"]))
    def finish(self, i: int, outcome: str) -> None:
        row = self.pick(self.with_status(S.RUNNING, S.STALE), i)
        if row is None:
            return
        if outcome == "complete":
            assert service.complete(row.id, {"ok": True})
        elif outcome == "fail":
            assert service.fail(row.id, "failed on purpose")
        else:
            assert service.time_out(row.id, "too slow")

    @rule(i=st.integers(0, 99))
    def cancel(self, i: int) -> None:
        row = self.pick(self.with_status(S.PENDING, S.SUBMITTED, S.RUNNING, S.STALE, S.CANCELLING), i)
        if row:
            service.request_cancel(row.id, by="tester")
            self.held_back.discard(row.id)

    @rule(i=st.integers(0, 99))
    def acknowledge_cancel(self, i: int) -> None:
        row = self.pick(self.with_status(S.CANCELLING), i)
        if row:
            assert service.mark_cancelled(row.id, "stopped", stage="acknowledged")

    @rule(i=st.integers(0, 99))
    def lose_heartbeat(self, i: int) -> None:
        row = self.pick(self.with_status(S.RUNNING), i)
        if row:
            assert service.mark_stale(row.id, "no heartbeat")

    @rule(i=st.integers(0, 99))
    def requeue(self, i: int) -> None:
        """What recovery does to a stale run (and the dispatcher to a submitted one whose publish failed)."""
        row = self.pick(self.with_status(S.STALE, S.SUBMITTED), i)
        if row:
            assert service.requeue(row.id, "re-queued by the test")

    @rule(i=st.integers(0, 99))
    def release_hold(self, i: int) -> None:
        held = sorted(self.held_back)
        if not held:
            return
        run_id = held[i % len(held)]
        in_transaction(lambda s: s.execute(update(Run).where(Run.id == run_id)
                                           .values(not_before=utcnow() - timedelta(seconds=1))))
        self.held_back.discard(run_id)

    # ------------------------------------------------------------------ after every step

    @invariant()
    def limits_hold(self) -> None:
        self.totals["steps"] += 1
        rows = self.rows()
        occupying = [r for r in rows if r.status in OCCUPYING]
        per_queue = Counter(r.queue for r in occupying)
        for queue, limit in self.queue_limits.items():
            assert per_queue[queue] <= limit, f"{queue}: {per_queue[queue]} active runs, limit {limit}"
        per_type = Counter(r.run_type for r in occupying)
        for run_type, limit in self.type_limits.items():
            assert per_type[run_type] <= limit, f"{run_type}: {per_type[run_type]} active runs, limit {limit}"
        for r in rows:
            if r.id in self.held_back:
                assert r.status in (S.PENDING, S.CANCELLED) and r.dispatch_attempt == 0, \
                    f"a run held back by not_before was dispatched: {r}"


@pytest.fixture
def publisher(backend, monkeypatch):  # type: ignore[no-untyped-def]
    """The broker boundary replaced by a recorder; revokes (on cancel) recorded too."""
    from backend.queues import celery_link

    recorder = Publisher()
    monkeypatch.setattr(celery_link, "publish", recorder)
    monkeypatch.setattr(service, "_task_dropped_hooks", [])
    yield recorder
    reset_registry()  # forget the queues and types the machine registered


@pytest.mark.timeout(600)  # room for Hypothesis to shrink a failure
def test_the_dispatcher_keeps_limits_and_order(backend, publisher) -> None:  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org

    DispatchMachine.orgs = [ensure_org(slug).id for slug in ("org-one", "org-two", "org-three")]
    DispatchMachine.publisher = publisher
    DispatchMachine.totals = Counter()
    run_state_machine_as_test(
        DispatchMachine,
        settings=settings(
            max_examples=EXAMPLES[backend.kind],
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    totals = DispatchMachine.totals
    print(f"dispatcher machine on {backend.kind}: {dict(totals)}")
    # a guard against a machine that checks nothing: passes ran and claimed runs, some of them failing to publish
    assert totals["passes"] >= EXAMPLES[backend.kind] and totals["claimed"] >= EXAMPLES[backend.kind]
    assert totals["contested"] >= 10 and totals["failed_publishes"] > 0
