"""Random sequences of service calls never break the state machine (SQLite and PostgreSQL).

A Hypothesis state machine drives a few runs through every call of
``backend.runs.service`` that can change a status, plus direct
``service.transition`` calls to arbitrary targets, forbidden ones included. After
each call it reads the database and checks: the status moved along an edge of
``TRANSITIONS`` or not at all (exactly as predicted from the table); a terminal
status never changed; each change wrote exactly one ``status`` outbox row whose
``from``/``status`` match; a refusal wrote none, only a WARN ``transition_refused``
log line and its ``log`` outbox row (a refused move to the status the run is already in writes nothing at all);
outbox sequence numbers strictly increase.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest
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
from sqlalchemy import func, select

from backend.db.engine import in_transaction
from backend.db.models import OutboxEvent, Run, RunLogEvent
from backend.db.states import EVENT_TYPES, TERMINAL, LogLevel, RunStatus, allowed
from backend.errors import InvalidTransition
from backend.runs import service

S = RunStatus
MAX_RUNS = 4
LEASE = 30.0
EXAMPLES = {"sqlite": 150, "postgres": 80}  # about 20-30 s each
LEASED = {S.RUNNING, S.CANCELLING, S.STALE}  # statuses in which a worker holds the run


@dataclass
class Expect:
    """What one call should do to one run."""

    status: RunStatus
    kinds: list[str] = field(default_factory=list)  # outbox rows, in order
    events: list[str] = field(default_factory=list)  # log event types, in order
    refused: tuple[RunStatus, RunStatus] | None = None
    already: bool = False  # a refused self-transition: nothing written at all (issue 18, item 9)

    @property
    def accepted(self) -> bool:
        return self.refused is None and not self.already


def attempt_change(current: RunStatus, to: RunStatus, expect: set[RunStatus] | None = None) -> Expect:
    """What ``service.transition`` must do, read from the table alone."""
    if allowed(current, to) and (expect is None or current in expect):
        return Expect(to, ["status"], [EVENT_TYPES[to]])
    if current is to:  # refused, silently: the run is already there
        return Expect(current, already=True)
    return Expect(current, ["log"], ["transition_refused"], refused=(current, to))


def revive(current: RunStatus, base: Expect) -> Expect:
    """Activity on a stale run brings it back to running, after the call's own rows."""
    if current is S.STALE:
        return Expect(S.RUNNING, [*base.kinds, "status"], [*base.events, EVENT_TYPES[S.RUNNING]])
    return base


class RunMachine(RuleBasedStateMachine):
    organization_id: uuid.UUID  # set by the test before it runs the machine

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[uuid.UUID, list] = {}  # run id -> [status, dispatch_attempt]
        self.ids: list[uuid.UUID] = []
        self.last_seq, self.last_event = in_transaction(
            lambda s: (
                s.execute(select(func.coalesce(func.max(OutboxEvent.seq), 0))).scalar_one(),
                s.execute(select(func.coalesce(func.max(RunLogEvent.id), 0))).scalar_one(),
            )
        )

    # ------------------------------------------------------------------ helpers

    def pick(self, index: int) -> tuple[uuid.UUID, RunStatus]:
        run_id = self.ids[index % len(self.ids)]
        return run_id, self.model[run_id][0]

    def check(self, run_id: uuid.UUID, before: RunStatus, want: Expect) -> None:
        """Compare the database with the prediction for the call just made on ``run_id``."""

        def read(s):  # type: ignore[no-untyped-def]
            status = s.execute(select(Run.status).where(Run.id == run_id)).scalar_one()
            rows = s.execute(select(OutboxEvent).where(OutboxEvent.seq > self.last_seq).order_by(OutboxEvent.seq)).scalars().all()
            events = s.execute(
                select(RunLogEvent).where(RunLogEvent.id > self.last_event).order_by(RunLogEvent.id)
            ).scalars().all()
            return RunStatus(status), rows, events

        after, rows, events = in_transaction(read)

        # the status: an allowed edge or no change, never out of a terminal status, as the table predicts
        if after is not before:
            assert allowed(before, after), f"{before.value} -> {after.value} is not an edge of TRANSITIONS"
        if before in TERMINAL:
            assert after is before, f"terminal {before.value} changed to {after.value}"
        assert after is want.status, f"expected {want.status.value} after the call, found {after.value}"

        # the outbox: increasing seq, this run only, the predicted kinds
        seqs = [r.seq for r in rows]
        assert seqs == sorted(set(seqs)) and all(q > self.last_seq for q in seqs), f"outbox seq not increasing: {seqs}"
        assert {r.run_id for r in rows} <= {run_id}
        assert [r.kind for r in rows] == want.kinds, [(r.kind, r.payload.get("status")) for r in rows]
        assert [e.event_type for e in events] == want.events
        assert {e.run_id for e in events} <= {run_id}

        # status rows form one chain from the old status to the new one, each with its log event
        status_rows = [r for r in rows if r.kind == "status"]
        assert len(status_rows) == (0 if after is before else 1)
        by_id = {e.id: e for e in events}
        chain = before
        for row in status_rows:
            assert row.payload["from"] == chain.value, row.payload
            nxt = RunStatus(row.payload["status"])
            assert allowed(chain, nxt)
            event = by_id[row.payload["event"]["id"]]
            assert event.event_type == EVENT_TYPES[nxt]
            assert event.context["from"] == chain.value and event.context["to"] == nxt.value
            chain = nxt
        assert chain is after

        # a refusal: one WARN line and its log row, nothing else
        refusals = [e for e in events if e.event_type == "transition_refused"]
        if want.refused is None:
            assert not refusals
        else:
            (event,) = refusals
            assert LogLevel(event.level) is LogLevel.WARN
            assert (event.context["from"], event.context["to"]) == (want.refused[0].value, want.refused[1].value)
            log_rows = [r for r in rows if r.kind == "log" and r.payload["event"]["id"] == event.id]
            assert len(log_rows) == 1 and log_rows[0].payload["event"]["level"] == "WARN"

        self.model[run_id][0] = after
        if rows:
            self.last_seq = rows[-1].seq
        if events:
            self.last_event = events[-1].id

    # ------------------------------------------------------------------ rules

    def _create(self) -> None:
        run = service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=self.organization_id)
        self.model[run.id] = [S.PENDING, 0]
        self.ids.append(run.id)
        assert run.status is S.PENDING
        self.check(run.id, S.PENDING, Expect(S.PENDING, ["created"], ["created"]))

    @initialize()
    def two_runs(self) -> None:
        self._create()
        self._create()

    @precondition(lambda self: len(self.ids) < MAX_RUNS)
    @rule()
    def create_run(self) -> None:
        self._create()

    @rule(i=st.integers(0, MAX_RUNS - 1))
    def mark_submitted(self, i: int) -> None:
        run_id, cur = self.pick(i)
        want = attempt_change(cur, S.SUBMITTED, {S.PENDING})
        got = service.mark_submitted(run_id, f"task-{uuid.uuid4().hex[:8]}")
        if not want.accepted:
            assert got is None
        else:
            self.model[run_id][1] += 1
            assert got == self.model[run_id][1]
        self.check(run_id, cur, want)

    @rule(i=st.integers(0, MAX_RUNS - 1), delta=st.sampled_from([0, 0, 0, 1, -1]))
    def start(self, i: int, delta: int) -> None:
        run_id, cur = self.pick(i)
        attempt = self.model[run_id][1] + delta
        if delta or cur is not S.SUBMITTED:
            # a stale or repeated delivery: logged, no outbox row, no change (a repeated one used to be a
            # "Refused to move from … to running" line; issue 18 item 9)
            want = Expect(cur, [], ["duplicate_delivery"])
        else:
            want = attempt_change(cur, S.RUNNING, {S.SUBMITTED})
        got = service.start(run_id, attempt, "worker-1", LEASE)
        assert got is (want.status is not cur)
        self.check(run_id, cur, want)

    @rule(i=st.integers(0, MAX_RUNS - 1))
    def complete(self, i: int) -> None:
        run_id, cur = self.pick(i)
        want = attempt_change(cur, S.COMPLETED)
        assert service.complete(run_id, {"n": 1}) is want.accepted
        self.check(run_id, cur, want)

    @rule(i=st.integers(0, MAX_RUNS - 1))
    def fail(self, i: int) -> None:
        run_id, cur = self.pick(i)
        want = attempt_change(cur, S.FAILED)
        assert service.fail(run_id, "boom") is want.accepted
        self.check(run_id, cur, want)

    @rule(i=st.integers(0, MAX_RUNS - 1))
    def time_out(self, i: int) -> None:
        run_id, cur = self.pick(i)
        want = attempt_change(cur, S.TIMED_OUT)
        assert service.time_out(run_id, "too slow") is want.accepted
        self.check(run_id, cur, want)

    @rule(i=st.integers(0, MAX_RUNS - 1))
    def request_cancel(self, i: int) -> None:
        run_id, cur = self.pick(i)
        if cur in TERMINAL:
            with pytest.raises(InvalidTransition):
                service.request_cancel(run_id, by="tester")
            want = Expect(cur)  # rolled back: nothing written
        elif cur is S.CANCELLING:
            assert service.request_cancel(run_id, by="tester") is S.CANCELLING
            want = Expect(cur)
        else:
            target = S.CANCELLED if cur in (S.PENDING, S.SUBMITTED) else S.CANCELLING
            want = attempt_change(cur, target)
            assert want.accepted, f"request_cancel from {cur.value} has no edge to {target.value}"
            assert service.request_cancel(run_id, by="tester") is target
        self.check(run_id, cur, want)

    @rule(i=st.integers(0, MAX_RUNS - 1))
    def mark_cancelled(self, i: int) -> None:
        run_id, cur = self.pick(i)
        want = attempt_change(cur, S.CANCELLED)
        assert service.mark_cancelled(run_id) is want.accepted
        self.check(run_id, cur, want)

    @rule(i=st.integers(0, MAX_RUNS - 1))
    def heartbeat(self, i: int) -> None:
        run_id, cur = self.pick(i)
        want = revive(cur, Expect(cur))
        assert service.heartbeat(run_id, LEASE) is want.status
        self.check(run_id, cur, want)

    @rule(i=st.integers(0, MAX_RUNS - 1), level=st.sampled_from(list(LogLevel)))
    def add_log(self, i: int, level: LogLevel) -> None:
        run_id, cur = self.pick(i)
        service.add_log(run_id, level, "note", "a line")
        self.check(run_id, cur, revive(cur, Expect(cur, ["log"], ["note"])))

    @rule(i=st.integers(0, MAX_RUNS - 1), n=st.integers(0, 100))
    def set_progress(self, i: int, n: int) -> None:
        run_id, cur = self.pick(i)
        service.set_progress(run_id, {"current": n, "total": 100})
        self.check(run_id, cur, revive(cur, Expect(cur, ["progress"], [])))

    @rule(
        i=st.integers(0, MAX_RUNS - 1),
        to=st.sampled_from(list(RunStatus)),
        expect=st.none() | st.sets(st.sampled_from(list(RunStatus)), min_size=1),
    )
    def transition(self, i: int, to: RunStatus, expect: set[RunStatus] | None) -> None:
        run_id, cur = self.pick(i)
        want = attempt_change(cur, to, expect)
        came_from = in_transaction(lambda s: service.transition(s, run_id, to, "direct", expect=expect))
        assert came_from is (cur if want.accepted else None)
        self.check(run_id, cur, want)

    # ------------------------------------------------------------------ every run, after every step

    @invariant()
    def database_matches_model(self) -> None:
        if not self.ids:
            return
        rows = in_transaction(lambda s: s.execute(select(Run).where(Run.id.in_(self.ids))).scalars().all())
        for run in rows:
            status, attempt = self.model[run.id]
            assert RunStatus(run.status) is status
            assert run.dispatch_attempt == attempt
            if status in TERMINAL:
                assert run.completed_at is not None
            else:
                assert run.completed_at is None
            if status not in LEASED:
                assert run.lease_expires_at is None, f"a {status.value} run holds a lease"
            if status is S.RUNNING:
                assert run.started_at is not None and run.heartbeat_at is not None
            if status is S.CANCELLING:
                assert run.cancel_requested_at is not None
            if attempt:
                assert run.submitted_at is not None and run.celery_task_id


@pytest.mark.timeout(300)  # room for Hypothesis to shrink a failure
def test_random_service_calls_follow_the_table(backend, org):
    RunMachine.organization_id = org.id
    run_state_machine_as_test(
        RunMachine,
        settings=settings(
            max_examples=EXAMPLES[backend.kind],
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )


# --------------------------------------------------------------------------- two cases the machine found


def _running(org_id: uuid.UUID) -> uuid.UUID:
    run = service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org_id)
    assert service.start(run.id, service.mark_submitted(run.id, "task"), "worker-1", LEASE)
    return run.id


def test_a_stale_run_whose_worker_finishes_completes(backend, org):
    """The worker's completion report ends a stale run as completed (it used to be refused, and the
    worker's fallback then recorded the successful run as cancelled)."""
    run_id = _running(org.id)
    assert in_transaction(lambda s: service.transition(s, run_id, S.STALE, "no heartbeat")) is S.RUNNING
    assert service.complete(run_id, {"ok": True})
    assert not service.mark_cancelled(run_id, "Finished its work after the cancel request; kept as cancelled")
    run = in_transaction(lambda s: s.get(Run, run_id))
    assert RunStatus(run.status) is S.COMPLETED and run.results_summary == {"ok": True}


def test_a_late_heartbeat_does_not_lease_an_ended_run(backend, org):
    run_id = _running(org.id)
    assert service.complete(run_id)
    assert service.heartbeat(run_id, LEASE) is S.COMPLETED
    run = in_transaction(lambda s: s.get(Run, run_id))
    assert run.lease_expires_at is None
