"""The list counters equal ``COUNT(*)`` after any mix of writes (SQLite and PostgreSQL).

A Hypothesis state machine creates runs (one at a time, in batches like ``submit_many``, and as retries), moves
them to any status (refused moves included), deletes them with what retention and deletion use
(``purge_runs``), ages their end times across the 24 h window (as time passing does), moves them to another
organization (as ``schedules._adopt_system_work`` does) and folds the deltas at random points. After every step
the counters (:mod:`backend.runs.counters`): per type × status × origin, the ended-since buckets and the status
cards: must equal what ``COUNT(*)`` over ``runs`` says, for every organization and for all of them.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select, update

from backend.db.engine import in_transaction
from backend.db.models import Run
from backend.db.states import RunOrigin, RunStatus
from backend.db.types import utcnow
from backend.queues.dispatch import schedule_retry
from backend.runs import counters, listing, service
from backend.worker.jobs.deletion import descendants, purge_runs

S = RunStatus
EXAMPLES = {"sqlite": 40, "postgres": 25}
TYPES = ("extraction", "extraction_enhancement", "system_maintenance")
ORIGINS = (RunOrigin.USER, RunOrigin.SCHEDULED, RunOrigin.WEBHOOK)


def _config(run_type: str) -> dict:
    return {"handlers": ["health"]} if run_type == "system_maintenance" else {"asset_id": str(uuid.uuid4())}


def counted_by_scan(org_id: uuid.UUID | None) -> dict[tuple[str, str, str], int]:
    where = [Run.organization_id == org_id] if org_id else []
    rows = in_transaction(lambda s: s.execute(select(Run.run_type, Run.status, Run.origin, func.count())
                                              .where(*where).group_by(Run.run_type, Run.status, Run.origin)).all())
    return {(t, RunStatus(st).value, RunOrigin(o).value): n for t, st, o, n in rows}


def cards_by_scan(org_id: uuid.UUID | None) -> dict[str, int]:
    """The status cards as ``COUNT(*)`` computes them (what the list did before the counters)."""
    since = utcnow() - timedelta(hours=24)
    org = [Run.organization_id == org_id] if org_id else []

    def count(s, *where):  # type: ignore[no-untyped-def]
        return int(s.execute(select(func.count()).select_from(Run).where(*org, *where)).scalar_one())

    return in_transaction(lambda s: {
        "pending": count(s, Run.status.in_((S.PENDING, S.SUBMITTED))),
        "running": count(s, Run.status.in_((S.RUNNING, S.CANCELLING))),
        "done_24h": count(s, Run.status == S.COMPLETED, Run.completed_at >= since),
        "failed_24h": count(s, Run.status.in_((S.FAILED, S.TIMED_OUT)), Run.completed_at >= since),
        "stale": count(s, Run.status == S.STALE),
    })


class CounterMachine(RuleBasedStateMachine):
    org_ids: list[uuid.UUID]  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[uuid.UUID] = []

    @initialize()
    def start_clean(self) -> None:
        in_transaction(lambda s: s.execute(update(Run).values(retry_of=None)))
        levels = [[rid for (rid,) in in_transaction(lambda s: s.execute(
            select(Run.id).where(Run.parent_run_id.is_(None))).all())]]
        if levels[0]:
            in_transaction(lambda s: purge_runs(s, levels))

    def _pick(self, i: int) -> uuid.UUID:
        return self.ids[i % len(self.ids)]

    def _create(self, s, org: int, run_type: str, origin: RunOrigin) -> uuid.UUID:  # type: ignore[no-untyped-def]
        run = service.create_run(run_type, _config(run_type), organization_id=self.org_ids[org % len(self.org_ids)],
                                 origin=origin, session=s)
        return run.id

    @rule(org=st.integers(0, 1), run_type=st.sampled_from(TYPES), origin=st.sampled_from(ORIGINS))
    def create(self, org: int, run_type: str, origin: RunOrigin) -> None:
        self.ids.append(in_transaction(lambda s: self._create(s, org, run_type, origin)))

    @rule(specs=st.lists(st.tuples(st.integers(0, 1), st.sampled_from(TYPES), st.sampled_from(ORIGINS)),
                         min_size=2, max_size=6))
    def create_batch(self, specs: list) -> None:  # type: ignore[type-arg]
        """Several runs in one transaction, as ``submit_many`` writes a batch."""
        self.ids += in_transaction(lambda s: [self._create(s, *spec) for spec in specs])

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 50), to=st.sampled_from(list(RunStatus)))
    def move(self, i: int, to: RunStatus) -> None:
        in_transaction(lambda s: service.transition(s, self._pick(i), to, "property test"))

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 50))
    def retry(self, i: int) -> None:
        self.ids.append(schedule_retry(self._pick(i)).id)

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 50))
    def purge(self, i: int) -> None:
        run_id = self._pick(i)
        in_transaction(lambda s: purge_runs(s, descendants(run_id, s)))
        self.ids.remove(run_id)

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 50), minutes=st.one_of(st.integers(1, 60 * 30), st.integers(23 * 60, 25 * 60)))
    def age(self, i: int, minutes: int) -> None:
        """Time passes for an ended run: its end moves back, across the 24 h window and hour buckets."""
        run_id = self._pick(i)
        in_transaction(lambda s: s.execute(update(Run).where(Run.id == run_id, Run.completed_at.is_not(None))
                                           .values(completed_at=utcnow() - timedelta(minutes=minutes))))

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 50), org=st.integers(0, 1))
    def move_organization(self, i: int, org: int) -> None:
        run_id = self._pick(i)
        in_transaction(lambda s: s.execute(update(Run).where(Run.id == run_id)
                                           .values(organization_id=self.org_ids[org])))

    @rule(batch=st.integers(1, 30))
    def fold(self, batch: int) -> None:
        counters.compact(batch)

    @invariant()
    def counters_equal_count(self) -> None:
        since = utcnow() - timedelta(hours=24)
        for org_id in (None, *self.org_ids):
            scope = counters.scope_of(org_id)
            assert counters.counts(scope) == counted_by_scan(org_id)
            ended = counters.ended_since(scope, since)
            where = [Run.organization_id == org_id] if org_id else []
            scanned = dict(in_transaction(lambda s: s.execute(
                select(Run.status, func.count()).where(*where, Run.status.in_(counters.ENDED),
                                                       Run.completed_at >= since).group_by(Run.status)).all()))
            assert ended == {RunStatus(k).value: v for k, v in scanned.items()}
            # the cards of the same instant: no run ends between the two reads (nothing runs meanwhile)
            assert listing.status_cards(org_id) == cards_by_scan(org_id)


def test_counters_equal_count_after_any_mix_of_writes(backend, org) -> None:  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org

    CounterMachine.org_ids = [org.id, ensure_org("beta", "Beta").id]
    run_state_machine_as_test(
        CounterMachine,
        settings=settings(max_examples=EXAMPLES[backend.kind], stateful_step_count=15, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )


def test_the_eta_statistic_follows_completions(backend, org) -> None:  # type: ignore[no-untyped-def]
    """A completed run feeds its type's weighted mean; folded or not, the reader sees the same value."""
    assert listing.mean_durations({"extraction"}) == {}
    durations = [10.0, 20.0, 40.0]
    for seconds in durations:
        run = service.create_run("extraction", _config("extraction"), organization_id=org.id)
        start = utcnow() - timedelta(seconds=seconds)
        in_transaction(lambda s, r=run, t=start: s.execute(update(Run).where(Run.id == r.id).values(
            status=S.RUNNING, started_at=t)))
        service.complete(run.id)
    unfolded = listing.mean_durations({"extraction", "system_maintenance"})
    counters.compact_all()
    folded = listing.mean_durations({"extraction", "system_maintenance"})
    expected = durations[0]
    for d in durations[1:]:
        expected += counters.ALPHA * (d - expected)
    assert set(folded) == {"extraction"}
    assert abs(folded["extraction"] - expected) < 0.5 and abs(unfolded["extraction"] - folded["extraction"]) < 1e-6


def test_the_24h_window_is_exact_at_its_edge(backend, org) -> None:  # type: ignore[no-untyped-def]
    """Runs that ended just inside and just outside 24 h ago, in the same hour bucket: one counts, folded or not."""
    now = utcnow()
    since = now - timedelta(hours=24)
    hour_start = since.replace(minute=0, second=0, microsecond=0)
    inside = since + (hour_start + timedelta(hours=1) - since) / 2
    outside = hour_start + (since - hour_start) / 2
    for moment in (inside, outside):
        run = service.create_run("extraction", _config("extraction"), organization_id=org.id)
        service.fail(run.id, "boom")
        in_transaction(lambda s, r=run, t=moment: s.execute(update(Run).where(Run.id == r.id).values(completed_at=t)))
    for _ in range(2):
        assert counters.ended_since(counters.scope_of(org.id), since) == {"failed": 1}
        counters.compact_all()
