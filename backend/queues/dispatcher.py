"""The dispatcher: pending runs leave the database for Celery only while their queue has a free slot.

Order: priority first (4 is the most urgent); within a priority, the organization with the fewest runs
active in the queue goes first (so one tenant cannot starve the others); then age. Every queue's limit
(and a job type's own limit, when it has one) is enforced by counting submitted and running runs. A group
parent that has spawned all its children and only waits for them (its group sealed, no lease: it holds no
worker process) takes no slot, so parents waiting on children in their own queue cannot starve them.

A pass over a queue claims its runs in one transaction: on PostgreSQL under a per-queue advisory lock
(concurrent dispatchers skip a queue another one is serving) with ``FOR UPDATE SKIP LOCKED`` on the
pending rows; on SQLite the write lock serializes it. Claimed runs are published after the commit; a
run whose publish fails goes back to pending and is tried again at the next pass.

Passes run when a run is created, when a run ends, and on every worker node's sweep.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, literal, not_, or_, select

from backend.db.engine import in_transaction
from backend.db.models import Run, status_is
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.jobtypes.registry import get_registry
from backend.queues import celery_link
from backend.runs import service

log = logging.getLogger(__name__)
S = RunStatus
OCCUPYING = (S.SUBMITTED, S.RUNNING, S.CANCELLING, S.STALE)
# A parent whose task has ended: sealing its group cleared its lease; it only waits for its children.
WAITING_PARENT = and_(Run.is_group_parent.is_(True), Run.lease_expires_at.is_(None),
                      status_is(Run.status, S.RUNNING, S.CANCELLING))
# The statuses written into the SQL (models.status_is): the partial indexes ix_runs_occupying and ix_runs_waiting
# (PostgreSQL) answer these questions, whatever the plan.
IS_OCCUPYING = status_is(Run.status, *OCCUPYING)
IS_PENDING = status_is(Run.status, S.PENDING)


@dataclass(frozen=True)
class Candidate:
    id: uuid.UUID
    run_type: str
    organization_id: uuid.UUID
    priority: int
    created_at: datetime


@dataclass(frozen=True)
class Claimed:
    run_id: uuid.UUID
    task_name: str
    queue: str
    attempt: int
    task_id: str
    timeout: int


def fair_pick(
    candidates: list[Candidate],
    free: int,
    org_active: dict[uuid.UUID, int],
    type_active: dict[str, int],
    type_limits: dict[str, int],
) -> list[Candidate]:
    """Choose up to ``free`` candidates: priority, then the least-served organization, then age.

    A candidate whose job type is at its own limit is passed over (it does not block the others).
    """
    orgs, types = Counter(org_active), Counter(type_active)
    remaining = sorted(candidates, key=lambda c: (-c.priority, c.created_at, c.id))
    picked: list[Candidate] = []
    while remaining and len(picked) < free:
        remaining = [c for c in remaining if types[c.run_type] < type_limits.get(c.run_type, 1 << 30)]
        if not remaining:
            break
        top = remaining[0].priority
        tier = [c for c in remaining if c.priority == top]
        best = min(tier, key=lambda c: (orgs[c.organization_id], c.created_at, c.id))
        picked.append(best)
        orgs[best.organization_id] += 1
        types[best.run_type] += 1
        remaining.remove(best)
    return picked


_TRY_LOCK = select(func.pg_try_advisory_xact_lock(bindparam("key")))


def _lock_key(queue: str) -> int:
    return 0x44495300 + zlib.crc32(queue.encode()) % 100_000  # "DIS" + queue


def _type_limit(registry: Any, run_type: str) -> tuple[int | None, list[str]]:
    """A job type's own concurrency limit (None: only its queue's), and every name its runs may carry."""
    job_type = registry.resolve(run_type)
    return job_type.max_concurrency or None, [job_type.key, *job_type.aliases]


def _direct_check(with_type: bool) -> Any:
    """What :func:`direct_slot` reads, in one statement (built once): the runs occupying ``:queue``'s slots,
    whether a run waits in it, and (``with_type``) the occupying runs of the type (``:names``). The counts stop
    at the limits (``:limit``, ``:type_limit``): a long backlog of submitted runs is not counted at every submit."""
    occupying = [Run.queue == bindparam("queue"), IS_OCCUPYING, not_(WAITING_PARENT)]

    def count_to(limit: str, *where: Any) -> Any:
        # in the order of ix_runs_occupying (PostgreSQL): no plan finds reading the table cheaper (migration 0014)
        upto = (select(literal(1)).where(*occupying, *where).order_by(Run.run_type, Run.id)
                .limit(bindparam(limit)).subquery())
        return select(func.count()).select_from(upto).scalar_subquery()

    of_type = (count_to("type_limit", Run.run_type.in_(bindparam("names", expanding=True))) if with_type
               else literal(0))
    return select(
        count_to("limit"),
        select(Run.id).where(IS_PENDING, Run.queue == bindparam("queue"),
                             or_(Run.not_before.is_(None), Run.not_before <= bindparam("now"))).limit(1).exists(),
        of_type,
    )


_DIRECT_CHECK, _DIRECT_CHECK_WITH_TYPE = _direct_check(False), _direct_check(True)


class _DirectSlot:
    """Whether a run of ``run_type`` created now may go straight to a worker, without a dispatch pass: the queue
    has a free slot (and the type, when it has a limit of its own) and no run waits in it, so no fairness is at
    stake (a pass would claim that run alone). Answers ``create_run``'s ``direct``: see
    :class:`backend.runs.service.DirectSlot`."""

    def __call__(self, session: Any, queue: str, run_type: str) -> str | None:
        """Asked in ``session``'s transaction: the new Celery task id, or None (the run is then created pending and
        a pass decides). On PostgreSQL it takes the queue's dispatch lock, as a pass does, and holds it to the
        commit (None when another dispatcher holds it)."""
        asked = self.arguments(queue, run_type)
        if asked is None:
            return None
        if session.get_bind().dialect.name == "postgresql":
            if not session.execute(_TRY_LOCK, {"key": asked["lock"]}).scalar_one():
                return None
        limit, type_limit = asked["limit"], asked["type_limit"]
        check = _DIRECT_CHECK if type_limit is None else _DIRECT_CHECK_WITH_TYPE
        active, waiting, type_active = session.execute(check, asked).one()
        if waiting or active >= limit or (type_limit and type_active >= type_limit):
            return None
        return str(uuid.uuid4())

    def arguments(self, queue: str, run_type: str) -> dict[str, Any] | None:
        """The same question asked by the creating statement itself (PostgreSQL: ``curatore_direct_slot``,
        migration 0013, which takes the lock and reads the same): its arguments, or None for an unknown queue."""
        registry = get_registry()
        if queue not in registry.queues:
            return None
        type_limit, names = _type_limit(registry, run_type)
        return {"lock": _lock_key(queue), "queue": queue, "limit": registry.queues[queue].max_concurrency,
                "now": utcnow(), "names": names, "type_limit": type_limit}


direct_slot = _DirectSlot()


def claim(session: Any, queue: str) -> list[Claimed] | None:
    """Claim the runs that may go now from ``queue`` (pending → submitted) in ``session``'s transaction, to be
    published after it commits (:func:`publish`). None when another dispatcher is serving the queue (PostgreSQL):
    run a pass after the commit instead (:func:`kick`), so a run created in this transaction is not missed."""
    registry = get_registry()
    if session.get_bind().dialect.name == "postgresql":
        if not session.execute(_TRY_LOCK, {"key": _lock_key(queue)}).scalar_one():
            return None  # another dispatcher is serving this queue right now
    limit = registry.queues[queue].max_concurrency
    active = session.execute(
        select(Run.organization_id, Run.run_type, func.count())
        .where(Run.queue == queue, IS_OCCUPYING, not_(WAITING_PARENT))
        .group_by(Run.organization_id, Run.run_type)
    ).all()
    free = limit - sum(n for _, _, n in active)
    if free <= 0:
        return []
    org_active: Counter[uuid.UUID] = Counter()
    type_active: Counter[str] = Counter()
    for org, run_type, n in active:
        org_active[org] += n
        type_active[run_type] += n
    now = utcnow()
    stmt = (
        select(Run.id, Run.run_type, Run.organization_id, Run.priority, Run.created_at)
        .where(Run.queue == queue, IS_PENDING, or_(Run.not_before.is_(None), Run.not_before <= now))
        .order_by(Run.priority.desc(), Run.created_at, Run.id)
        .limit(free * 10 + 50)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    candidates = [Candidate(*row) for row in session.execute(stmt).all()]
    type_limits = {key: t.max_concurrency for key, t in registry.types.items() if t.max_concurrency}
    for alias, key in registry.aliases.items():
        if key in type_limits:
            type_limits[alias] = type_limits[key]
    claimed = []
    for c in fair_pick(candidates, free, org_active, type_active, type_limits):
        job_type = registry.resolve(c.run_type)
        task_id = str(uuid.uuid4())
        attempt = service.mark_submitted(c.id, task_id, session=session)
        if attempt is not None:
            claimed.append(Claimed(c.id, job_type.task_name, queue, attempt, task_id, job_type.timeout_seconds))
    return claimed


def dispatch_pending(queues: Iterable[str] | None = None) -> dict[uuid.UUID, Exception | None]:
    """One pass over ``queues`` (default: all). Returns each published run with the publish error, if any."""
    outcome: dict[uuid.UUID, Exception | None] = {}
    for queue in sorted(set(queues or get_registry().queues)):
        if queue not in get_registry().queues:
            continue
        outcome |= publish(in_transaction(lambda s, q=queue: claim(s, q)) or [])
    return outcome


def publish(claimed: list[Claimed]) -> dict[uuid.UUID, Exception | None]:
    """Publish claimed runs (after the claiming transaction committed); a run whose publish fails goes back
    to pending. Returns each run with its publish error, if any."""
    outcome: dict[uuid.UUID, Exception | None] = {}
    for c in claimed:
        try:
            celery_link.publish(c.task_name, c.queue, c.run_id, c.attempt, c.task_id, c.timeout)
            outcome[c.run_id] = None
        except celery_link.BROKER_ERRORS as exc:
            outcome[c.run_id] = exc
            service.requeue(c.run_id, f"The broker could not be reached ({type(exc).__name__}); "
                                      "the run goes back to the queue")
    return outcome


def waiting(session: Any, queue: str) -> bool:
    """Whether runs of ``queue`` wait for a slot (one indexed read)."""
    return session.execute(select(Run.id).where(IS_PENDING, Run.queue == queue).limit(1)).first() \
        is not None


def kick_if_waiting(queue: str) -> None:
    """After a run freed its slot: a dispatch pass only when runs of ``queue`` wait for one (one cheap read,
    without the write lock, when none do). Never raises."""
    try:
        if not in_transaction(lambda s: waiting(s, queue), read_only=True):
            return
    except Exception as exc:  # noqa: BLE001 - the next sweep tries again
        log.warning("dispatch check for %s failed: %s", queue, exc)
        return
    kick(queue)


def kick(queue: str) -> None:
    """A dispatch pass for one queue that never raises (after a run ends, say)."""
    try:
        dispatch_pending([queue])
    except Exception as exc:  # noqa: BLE001 - the next sweep tries again
        log.warning("dispatch pass for %s failed: %s", queue, exc)
