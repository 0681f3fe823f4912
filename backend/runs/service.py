"""The run service: every write to a run goes through here.

Every status change goes through :func:`transition`: one compare-and-set UPDATE
(``WHERE id = :id AND status = :observed``, re-read and retried when another
writer won), the timestamps of the new status, one log event and one outbox
row, all in the caller's transaction. The named functions below (``start``,
``complete``, ``fail``, ...) each fix a status, its reason and its stamps.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic_core import PydanticUndefined
from sqlalchemy import (ARRAY, BigInteger, BindParameter, ColumnElement, Integer, Text, any_, bindparam, case, func,
                        insert, literal_column, null, select, update)
from sqlalchemy.orm import configure_mappers
from sqlalchemy.orm.base import manager_of_class
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BinaryExpression
from sqlmodel import Session

from backend.db.engine import after_commit, get_engine, in_transaction, lone_statement
from backend.db.models import Run, RunLogEvent, empty_progress, status_is
from backend.db.states import EVENT_TYPES, LogLevel, RunOrigin, RunStatus, allowed
from backend.db.types import utcnow
from backend.errors import DuplicateRun, InvalidTransition, RunNotFound
from backend.jobtypes.registry import get_registry
from backend.runs import outbox
from backend.validation import MAX_NAME, check_priority, check_text

log = logging.getLogger(__name__)

S = RunStatus
_ACTIVE = tuple(status for status in RunStatus if status.is_active)
MAX_MESSAGE = 4000

# --------------------------------------------------------------------------- hooks
# What other parts of the engine do when a run changes, registered by them (the state machine imports
# neither groups nor Celery): run groups count a child's end in its terminal transaction; the Celery link
# revokes the task of a run that ended before it started, after the commit.
TerminalHook = Callable[[Session, uuid.UUID, RunStatus, Any], None]


class DirectSlot(Protocol):
    """Asked by ``create_run`` in its transaction (``direct=``): may a run of this type, created now, go straight to
    a worker in ``queue`` (nothing waits there, and it has a free slot)? Returns the Celery task id it is to be
    published with, or None. The dispatcher answers it (``backend.queues.dispatcher.direct_slot``)."""

    def __call__(self, session: Session, queue: str, run_type: str) -> str | None: ...

    def arguments(self, queue: str, run_type: str) -> dict[str, Any] | None:
        """The same question for ``create_run_alone``: the arguments of the database function that answers it in
        the creating statement (``lock``, ``queue``, ``limit``, ``now``, ``names``, ``type_limit``: see migration
        0013), or None when it cannot be asked so."""


TaskDroppedHook = Callable[[str], None]
_terminal_hooks: list[TerminalHook] = []
_task_dropped_hooks: list[TaskDroppedHook] = []


def on_terminal(fn: TerminalHook) -> TerminalHook:
    """Register ``fn(session, run_id, status, route)``, called inside every transaction that ends a run in a run
    group, a child or a group's parent (``route``: the run's :data:`ROUTE` columns, read by the transition that
    ended it). A run in no group may end without it, in one statement (:func:`_move_alone`)."""
    if fn not in _terminal_hooks:
        _terminal_hooks.append(fn)
    return fn


def on_task_dropped(fn: TaskDroppedHook) -> TaskDroppedHook:
    """Register ``fn(celery_task_id)``, called after the commit that ended a run whose task never started."""
    if fn not in _task_dropped_hooks:
        _task_dropped_hooks.append(fn)
    return fn


def _drop_task_after_commit(session: Session, task_id: str) -> None:
    for hook in _task_dropped_hooks:
        after_commit(session, lambda hook=hook: hook(task_id))


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _add_log(
    session: Session,
    run_id: uuid.UUID,
    level: LogLevel,
    event_type: str,
    message: str,
    context: dict[str, Any] | None,
) -> dict[str, Any]:
    """Insert one activity-log line (no outbox row: see :func:`_record`)."""
    row = _log_row(run_id, level, event_type, message, context)
    event_id = session.execute(insert(RunLogEvent).values(**row).returning(RunLogEvent.id)).scalar_one()
    return _event(row) | {"id": event_id}


def _log_row(run_id: uuid.UUID, level: LogLevel, event_type: str, message: str,
             context: dict[str, Any] | None) -> dict[str, Any]:
    return {"run_id": run_id, "level": LogLevel(level), "event_type": event_type[:40],
            "message": message[:MAX_MESSAGE], "context": _json_safe(context or {}), "created_at": utcnow()}


def _event(row: dict[str, Any]) -> dict[str, Any]:
    """A log line as the outbox carries it (``id`` filled in when it is inserted)."""
    return {"id": None, "level": row["level"].value, "event_type": row["event_type"], "message": row["message"],
            "context": row["context"], "created_at": row["created_at"].isoformat()}


def _record(session: Session, run_id: uuid.UUID, level: LogLevel, event_type: str, message: str,
            context: dict[str, Any] | None, kind: str, payload: dict[str, Any], route: Any = None) -> None:
    """A log line and the outbox row that carries it (``payload`` plus ``event``: the line)."""
    outbox.append_many(session, run_id, [_change_row(run_id, level, event_type, message, context, kind, payload)],
                       route=route)


def _change_row(run_id: uuid.UUID, level: LogLevel, event_type: str, message: str, context: dict[str, Any] | None,
                kind: str, payload: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One change for :func:`outbox.append_many`: its kind, payload (with ``event``: the log line) and log line."""
    row = _log_row(run_id, level, event_type, message, context)
    return kind, payload | {"event": _event(row)}, row


# --------------------------------------------------------------------------- creation

_RUNS = Run.__table__
_RUN_COLUMNS = tuple(_RUNS.columns)


def create_run(
    run_type: str,
    config: dict[str, Any],
    *,
    organization_id: uuid.UUID,
    origin: RunOrigin = RunOrigin.USER,
    priority: int | None = None,
    created_by: str | None = None,
    display_name: str | None = None,
    input_asset_ids: list[str] | None = None,
    parent_run_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
    retry_of: uuid.UUID | None = None,
    attempt: int = 1,
    not_before: datetime | None = None,
    check_duplicates: bool = True,
    direct: DirectSlot | None = None,
    session: Session | None = None,
) -> Run:
    """Validate and write a pending run (``direct``: or a submitted one, when the dispatcher says it may go
    straight to a worker: see :class:`DirectSlot`; the caller publishes it after the commit). An invalid config,
    or the same job already active on the same resource (or within the type's cooldown), raises before anything
    is written. Every caller (API, UI, CLI,
    schedules, children) gets the same input checks (:mod:`backend.validation`): strict types, storable text,
    and the config's size and depth limits."""
    job_type, run = _new_run(run_type, config, organization_id=organization_id, origin=origin, priority=priority,
                             created_by=created_by, display_name=display_name, input_asset_ids=input_asset_ids,
                             parent_run_id=parent_run_id, group_id=group_id, retry_of=retry_of, attempt=attempt,
                             not_before=not_before)

    def write(s: Session) -> Run:
        if check_duplicates and run.resource_id is not None:
            _refuse_duplicate(s, job_type, organization_id, run.resource_id)
        task_id = direct(s, job_type.queue, run_type) if direct is not None and not_before is None else None
        changes = [_created_change(job_type, run)]
        if task_id is not None:  # what mark_submitted would write, in the same statements
            changes.append(_queue_directly(run, task_id))
        outbox.append_many(s, run.id, changes, route=run, new_run={c.key: getattr(run, c.key) for c in _RUN_COLUMNS})
        return run

    return in_transaction(write, session)


def create_run_alone(run_type: str, config: dict[str, Any], *, direct: DirectSlot, organization_id: uuid.UUID,
                     check_duplicates: bool = True, **kw: Any) -> tuple[Run, str] | None:
    """:func:`create_run` with ``direct``, in one statement of its own (PostgreSQL, ``engine.lone_statement``): the
    duplicate checks, the dispatcher's answer (``curatore_direct_slot``, under the queue's lock), the run, its log
    lines and outbox rows. Returns the run, written submitted or pending, and the dispatcher's answer:
    ``direct`` (publish it), ``waiting`` or ``locked`` (a dispatch pass decides: run one), ``full`` (a pass would
    not take it; a slot's freeing runs one). None when it cannot be made so (SQLite, a start time, an unknown
    queue): call :func:`create_run` in a transaction. Raises as :func:`create_run` does, having written nothing."""
    if get_engine().dialect.name != "postgresql" or kw.get("not_before") is not None:
        return None
    job_type, run = _new_run(run_type, config, organization_id=organization_id, **kw)
    arguments = direct.arguments(job_type.queue, run_type)
    if arguments is None:
        return None
    task_id = str(uuid.uuid4())
    changes = [_created_change(job_type, run), _queue_directly(run, task_id, apply=False)]  # the 2nd: when direct
    check = _duplicate_check(job_type) if check_duplicates and run.resource_id is not None else None
    values = {c.key: getattr(run, c.key) for c in _RUN_COLUMNS}
    keys = tuple(k for k, v in values.items() if k not in _QUEUED and (v is not None or k in outbox.DEFAULTED))
    params = {f"r_{k}": values[k] for k in keys} | {f"d_{k}": v for k, v in arguments.items()}
    params |= {"q_task_id": task_id, "q_now": run.created_at} | outbox.changes_params(run.id, changes, run)
    if check is not None:
        params |= {"dup_org": organization_id, "dup_names": [job_type.key, *job_type.aliases],
                   "dup_resource": run.resource_id,
                   "dup_since": utcnow() - timedelta(seconds=job_type.dedupe_cooldown_seconds or 0)}
    row = lone_statement(_created_alone(keys, check), params)
    assert row is not None
    if row.active_dup is not None or row.recent_dup is not None:
        raise _duplicate(job_type, run.resource_id, row.active_dup, row.recent_dup)
    outbox.notify()
    if row.verdict == "direct":
        _queue_directly(run, task_id)
    return run, row.verdict


def _new_run(run_type: str, config: dict[str, Any], *, organization_id: uuid.UUID,
             origin: RunOrigin = RunOrigin.USER, priority: int | None = None, created_by: str | None = None,
             display_name: str | None = None, input_asset_ids: list[str] | None = None,
             parent_run_id: uuid.UUID | None = None, group_id: uuid.UUID | None = None,
             retry_of: uuid.UUID | None = None, attempt: int = 1,
             not_before: datetime | None = None) -> tuple[Any, Run]:
    """The checked job type and the new pending run (not written yet)."""
    check_text(run_type, "run_type")
    check_text(display_name, "name", max_length=MAX_NAME)
    check_priority(priority)
    job_type = get_registry().resolve(run_type)
    clean = get_registry().validate_config(run_type, config, organization_id)
    asset_ids = list(input_asset_ids or [])
    if job_type.resource_type == "asset" and job_type.resource_id_field and clean.get(job_type.resource_id_field):
        asset_ids = asset_ids or [str(clean[job_type.resource_id_field])]
    now = utcnow()
    return job_type, _made_run(
        organization_id=organization_id,
        run_type=run_type,
        origin=origin,
        priority=job_type.default_priority if priority is None else priority,
        queue=job_type.queue,
        display_name=display_name,
        config=clean,
        progress=empty_progress(),
        input_asset_ids=asset_ids,
        resource_type=job_type.resource_type,
        resource_id=job_type.resource_id_from(clean),
        created_by=created_by,
        parent_run_id=parent_run_id,
        group_id=group_id,
        retry_of=retry_of,
        attempt=attempt,
        not_before=not_before,
        created_at=now,
        last_activity_at=now,
    )


def _created_change(job_type: Any, run: Run) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return _change_row(run.id, LogLevel.INFO, "created", f"{job_type.label} run created",
                       {"origin": RunOrigin(run.origin).value}, "created", {"status": S.PENDING.value})


# What a run sent straight to a worker has that a pending one has not (mark_submitted's values).
_QUEUED = ("status", "submitted_at", "submitted_to_celery_at", "celery_task_id", "dispatch_attempt")


def _queue_directly(run: Run, task_id: str, apply: bool = True) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Make ``run`` (not written yet) one sent straight to a worker, as ``mark_submitted`` would (``apply``: else
    leave it as it is); returns the change (log line and outbox row) that says so."""
    now = run.created_at
    queued = {"submitted_at": now, "submitted_to_celery_at": now, "celery_task_id": task_id, "dispatch_attempt": 1}
    if apply:
        for key, value in queued.items():
            setattr(run, key, value)
        run.status = S.SUBMITTED
    return _change_row(run.id, LogLevel.INFO, EVENT_TYPES[S.SUBMITTED], "Queued for a worker",
                       {"from": S.PENDING.value, "to": S.SUBMITTED.value}, "status",
                       {"status": S.SUBMITTED.value, "from": S.PENDING.value,
                        "fields": _json_safe({"last_activity_at": now} | queued)})


def _duplicate_check(job_type: Any) -> str:
    return "active and recent" if job_type.dedupe_cooldown_seconds else "active"


@functools.cache
def _created_alone(run_keys: tuple[str, ...], check: str | None) -> Any:
    """The statement of :func:`create_run_alone`, built once per set of columns and duplicate check: ``slot``
    asks ``curatore_direct_slot`` (parameters ``d_*``) and reads the duplicates (``dup_*``); the run (``r_*``)
    is inserted when there is none, submitted (``q_*``) when the answer is ``direct``; then its ``created`` line
    and row, and, only when direct, its ``queued`` ones (``outbox.logged_changes``). Returns the answer and the
    duplicates' ids."""
    runs = _RUNS.c
    # No IN list (SQLAlchemy expands one at every execution): an array parameter and the statuses written out.
    same = [runs.organization_id == bindparam("dup_org"), runs.run_type == any_(bindparam("dup_names",
                                                                                         type_=ARRAY(Text))),
            runs.resource_id == bindparam("dup_resource")]
    active = (select(runs.id).where(*same, status_is(runs.status, *_ACTIVE)).limit(1).scalar_subquery()
              if check else null())
    recent = (select(runs.id).where(*same, status_is(runs.status, S.COMPLETED),
                                    runs.completed_at >= bindparam("dup_since"))
              .limit(1).scalar_subquery() if check == "active and recent" else null())
    verdict = func.curatore_direct_slot(
        bindparam("d_lock", type_=BigInteger), bindparam("d_queue", type_=Text), bindparam("d_limit", type_=Integer),
        bindparam("d_now", type_=runs.created_at.type), bindparam("d_names", type_=ARRAY(Text)),
        bindparam("d_type_limit", type_=Integer), type_=Text)
    slot = select(verdict.label("verdict"), active.label("active_dup"), recent.label("recent_dup")).cte("slot")
    direct = slot.c.verdict == literal_column("'direct'")  # constants written out: psycopg keeps the conversion
    # of a statement of at most 50 parameters
    queued = {
        "status": case((direct, literal_column(f"'{S.SUBMITTED.value}'")),
                       else_=literal_column(f"'{S.PENDING.value}'")),
        "submitted_at": case((direct, bindparam("q_now", type_=runs.submitted_at.type))),
        "submitted_to_celery_at": case((direct, bindparam("q_now", type_=runs.submitted_at.type))),
        "celery_task_id": case((direct, bindparam("q_task_id", type_=runs.celery_task_id.type))),
        "dispatch_attempt": case((direct, literal_column("1")), else_=literal_column("0")),
    }
    columns = {k: bindparam(f"r_{k}", type_=runs[k].type) for k in run_keys} | queued
    new_run = (insert(_RUNS).from_select(list(columns), select(*columns.values()).select_from(slot)
                                         .where(slot.c.active_dup.is_(None), slot.c.recent_dup.is_(None)),
                                         include_defaults=False)
               .returning(runs.id).cte("new_run"))
    rows = outbox.logged_changes([select(new_run.c.id).subquery(),
                                  select(new_run.c.id).select_from(new_run.join(slot, direct)).subquery()])
    return select(slot.c.verdict, slot.c.active_dup, slot.c.recent_dup).add_cte(rows)


def _a(label: str) -> str:
    """``label`` with its article: "An Extraction", "A SharePoint sync"."""
    return f"{'An' if label[:1].lower() in 'aeiou' else 'A'} {label}"


def _refuse_duplicate(session: Session, job_type: Any, organization_id: uuid.UUID, resource_id: str) -> None:
    names = [job_type.key, *job_type.aliases]
    same = [Run.organization_id == organization_id, Run.run_type.in_(names), Run.resource_id == resource_id]
    active = session.execute(
        select(Run.id).where(*same, status_is(Run.status, *_ACTIVE)).limit(1)
    ).scalar_one_or_none()
    recent = None
    if active is None and job_type.dedupe_cooldown_seconds:
        since = utcnow() - timedelta(seconds=job_type.dedupe_cooldown_seconds)
        recent = session.execute(
            select(Run.id).where(*same, Run.status == S.COMPLETED, Run.completed_at >= since).limit(1)
        ).scalar_one_or_none()
    if active is not None or recent is not None:
        raise _duplicate(job_type, resource_id, active, recent)


def _duplicate(job_type: Any, resource_id: str, active: uuid.UUID | None, recent: uuid.UUID | None) -> DuplicateRun:
    if active is not None:
        return DuplicateRun(f"{_a(job_type.label)} run for {resource_id} is already queued or running ({active}).",
                            run_id=str(active))
    return DuplicateRun(f"{_a(job_type.label)} run for {resource_id} completed less than "
                        f"{job_type.dedupe_cooldown_seconds} s ago ({recent}).", run_id=str(recent))


# --------------------------------------------------------------------------- the transition


class _Prebuilt:
    """A value a statement built once writes with its expression of :data:`_EXPRESSIONS` (``_statement_of_move``):
    in place of the expression, which then is not built for every move."""

    compile = None  # what tells an expression from a value (see _statement_of_move)


_PREBUILT = _Prebuilt()


def _stamps(to: RunStatus, now: datetime, prebuilt: bool = False) -> dict[str, Any]:
    values: dict[str, Any] = {"status": to, "last_activity_at": now}
    if to is S.SUBMITTED:
        values["submitted_at"] = now
    elif to is S.RUNNING:
        values["started_at"] = _PREBUILT if prebuilt else func.coalesce(Run.started_at, now)
        values["heartbeat_at"] = now
    elif to is S.CANCELLING:
        values["cancel_requested_at"] = now
    elif to is S.PENDING:
        values["lease_expires_at"] = None
    if to.is_terminal:
        values["completed_at"] = now
        values["lease_expires_at"] = None
    return values


# What a transition reads back from the run it changed (UPDATE … RETURNING): the outbox's routing columns,
# the run's group and whether it is a group parent (for the terminal hooks), and its dispatch attempt (for
# mark_submitted).
ROUTE = (*outbox.ROUTE_COLUMNS, Run.group_id, Run.dispatch_attempt, Run.is_group_parent)
# Read back by a transition that ends a run (PostgreSQL): whether runs wait for a slot in its queue, kept in the
# session as ``session.info[QUEUE_WAITING][run_id]`` (see ``backend.worker.base``; SQLite's RETURNING drops the
# table names the subquery needs, so there the worker reads it).
QUEUE_WAITING = "queue_waiting"
_waiting = _RUNS.alias("waiting")
_QUEUE_WAITING = (select(_waiting.c.id).where(status_is(_waiting.c.status, S.PENDING),
                                              _waiting.c.queue == _RUNS.c.queue)
                  .limit(1).exists().label("queue_waiting"))


def transition(
    session: Session,
    run_id: uuid.UUID,
    to: RunStatus,
    message: str,
    *,
    level: LogLevel = LogLevel.INFO,
    event_type: str | None = None,
    context: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    expect: set[RunStatus] | None = None,
    likely: RunStatus | None = None,
) -> RunStatus | None:
    """Move a run to ``to`` if the table allows it from its current status.

    Returns the status it came from, or None when refused (a WARN line records
    the refusal; nothing else changes; a move to the status the run is already in
    writes nothing at all). ``expect`` narrows the allowed sources.
    ``likely``: the status the caller expects the run to be in; the compare-and-set is tried from it first,
    without reading the status (when the run is in another status it matches nothing, and the status is
    read and decided as usual).
    """
    if likely is not None and allowed(likely, to) and (expect is None or likely in expect):
        if _move(session, run_id, likely, to, message, level=level, event_type=event_type, context=context,
                 values=values) is not None:
            return likely
    for _ in range(20):
        current = _status_in(session, run_id)
        if not allowed(current, to) or (expect is not None and current not in expect):
            _refused(session, run_id, current, to, message)
            return None
        if _move(session, run_id, current, to, message, level=level, event_type=event_type, context=context,
                 values=values) is not None:
            return current
        # another writer changed the status first: look again
    raise InvalidTransition(f"Run {run_id} kept changing; gave up moving it to {to.value}.")


def _move(
    session: Session,
    run_id: uuid.UUID,
    current: RunStatus,
    to: RunStatus,
    message: str,
    *,
    level: LogLevel = LogLevel.INFO,
    event_type: str | None = None,
    context: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    guard: Any = None,
    entity: bool = False,
) -> Any:
    """The compare-and-set: ``current`` → ``to`` if the run is still ``current`` (and ``guard``, an extra
    condition, holds), with its stamps, log line and outbox row: on PostgreSQL in one statement
    (:func:`_move_in_one`), else in one UPDATE … RETURNING and two INSERTs. Returns the run's :data:`ROUTE`
    row (``entity``: the whole :class:`Run`), or None (nothing written) when the run is not in ``current``."""
    now = utcnow()
    stamp = _stamps(to, now) | (values or {})
    if session.get_bind().dialect.name == "postgresql":  # the UPDATE, its log line and outbox row: one statement
        moved = _move_in_one(session, run_id, current, to, now, stamp, guard, message, level, event_type, context,
                             entity)
        if moved is not NotImplemented:
            return moved
    conditions = [Run.id == run_id, Run.status == current] + ([guard] if guard is not None else [])
    changed_run = update(_RUNS).where(*conditions).values(**stamp)  # Core: no ORM bookkeeping on the hot path
    if entity:
        row = session.execute(changed_run.returning(*_RUN_COLUMNS)).first()
        route = None if row is None else _run_of(row)
    else:
        route = session.execute(changed_run.returning(*ROUTE)).first()
    if route is None:
        return None
    changed = {k: v for k, v in stamp.items() if k != "status" and not hasattr(v, "compile")}
    _record(session, run_id, level, event_type or EVENT_TYPES[to], message,
            {"from": current.value, "to": to.value} | (context or {}),
            "status", {"status": to.value, "from": current.value, "fields": _json_safe(changed)}, route=route)
    if to.is_terminal:
        _on_terminal(session, run_id, to, route)
    return route


def _move_in_one(session: Session, run_id: uuid.UUID, current: RunStatus, to: RunStatus, now: datetime,
                 stamp: dict[str, Any], guard: Any, message: str, level: LogLevel, event_type: str | None,
                 context: dict[str, Any] | None, entity: bool) -> Any:
    """:func:`_move` on PostgreSQL, for the usual shapes of transition (``guard``: none, or ``Run.<column> ==
    value``): the compare-and-set, its log line and outbox row in one statement built once per shape
    (``outbox.logged_update``); a run's end also reads whether runs wait in its queue (its worker then lets the
    next one in without another read: ``session.info[QUEUE_WAITING]``). Returns NotImplemented for another shape."""
    prepared = _statement_of_move(run_id, current, to, now, stamp, guard, message, level, event_type, context,
                                  entity, alone=False)
    if prepared is NotImplemented:
        return NotImplemented
    row = session.execute(*prepared).first()
    if row is None:
        return None
    outbox.notify_after_commit(session)
    route = _run_of(row) if entity else row
    if to.is_terminal:
        session.info.setdefault(QUEUE_WAITING, {})[run_id] = bool(row.queue_waiting)
        _on_terminal(session, run_id, to, route)
    return route


def _move_alone(run_id: uuid.UUID, current: RunStatus, to: RunStatus, message: str, *,
                level: LogLevel = LogLevel.INFO, event_type: str | None = None, context: dict[str, Any] | None = None,
                values: dict[str, Any] | None = None, guard: tuple[str, Any] | None = None,
                entity: bool = False) -> Any:
    """:func:`_move` as a transaction of its own, on PostgreSQL: its one statement sent alone, without BEGIN and
    COMMIT (``engine.lone_statement``): a run's start and its end, the two transitions every run makes. A move
    that ends a run is made this way only for a run in no run group (the terminal hooks, which count a child in
    its group or seal a parent's, then have nothing to do): a run in one is not matched. Returns the :data:`ROUTE`
    row (``entity``: the :class:`Run`; a run's end: with ``queue_waiting``), or None when nothing matched (the
    caller then goes the usual way, in a transaction), or on SQLite."""
    if get_engine().dialect.name != "postgresql":
        return None
    now = utcnow()
    stamp = _stamps(to, now, prebuilt=True) | (values or {})
    prepared = _statement_of_move(run_id, current, to, now, stamp, guard, message, level, event_type, context, entity,
                                  alone=to.is_terminal)
    if prepared is NotImplemented:
        return None
    row = lone_statement(*prepared)
    if row is None:
        return None
    outbox.notify()
    return _run_of(row) if entity else row


def _statement_of_move(run_id: uuid.UUID, current: RunStatus, to: RunStatus, now: datetime, stamp: dict[str, Any],
                       guard: Any, message: str, level: LogLevel, event_type: str | None,
                       context: dict[str, Any] | None, entity: bool, alone: bool) -> Any:
    """The one statement of a move and its parameters, or NotImplemented for a shape it does not cover (see
    :func:`_move_in_one`; ``guard``: also ``(column, value)``). ``alone``: it matches only a run in no run group."""
    guard_key = None
    params: dict[str, Any] = {"t_run_id": run_id, "t_current": current}
    if isinstance(guard, tuple):  # (column, value): the guard of a hot transition, with no expression to build
        guard_key, params["t_guard"] = guard
    elif guard is not None:
        if not (isinstance(guard, BinaryExpression) and guard.operator is operators.eq
                and isinstance(guard.left, ColumnElement) and isinstance(guard.right, BindParameter)):
            return NotImplemented
        guard_key, params["t_guard"] = guard.left.key, guard.right.value
    shape = []
    for key, value in stamp.items():
        if not hasattr(value, "compile"):
            shape.append((key, False))
            params[f"v_{key}"] = value
        elif key in _EXPRESSIONS:  # the expressions _stamps and mark_submitted write
            shape.append((key, True))
            params[f"v_{key}"] = now
        else:
            return NotImplemented
    key = (current, to, tuple(shape), guard_key, entity, alone)
    statement = _TRANSITIONS.get(key)
    if statement is None:
        conditions = [_RUNS.c.id == bindparam("t_run_id"), _RUNS.c.status == bindparam("t_current", type_=_STATUS)]
        if guard_key is not None:
            conditions.append(_RUNS.c[guard_key] == bindparam("t_guard", type_=_RUNS.c[guard_key].type))
        if alone:
            conditions += [_RUNS.c.group_id.is_(None), _RUNS.c.is_group_parent.is_(False)]
        values = {k: _EXPRESSIONS[k](bindparam(f"v_{k}", type_=_RUNS.c[k].type)) if is_expression
                  else bindparam(f"v_{k}", type_=_RUNS.c[k].type) for k, is_expression in shape}
        returning = (*(_RUN_COLUMNS if entity else ROUTE), *((_QUEUE_WAITING,) if to.is_terminal else ()))
        statement = _TRANSITIONS[key] = outbox.logged_update(update(_RUNS).where(*conditions).values(values),
                                                             returning)
    changed = {k: v for k, v in stamp.items() if k != "status" and not hasattr(v, "compile")}
    change = _change_row(run_id, level, event_type or EVENT_TYPES[to], message,
                         {"from": current.value, "to": to.value} | (context or {}), "status",
                         {"status": to.value, "from": current.value, "fields": _json_safe(changed)})
    return statement, params | outbox.logged_update_params(run_id, change)


def _made_run(**values: Any) -> Run:
    """A new :class:`Run` (not written yet) of ``values``, the other columns their defaults: what ``Run(**values)``
    makes, without the 40 instrumented attribute sets of SQLModel's ``__init__`` (a fifth of a submit's CPU)."""
    configure_mappers()
    run = _RUN_CLASS.new_instance()
    run.__dict__.update({key: values[key] if key in values else default() for key, default in _RUN_DEFAULTS})
    run.__pydantic_fields_set__ = set(values)
    return run


def _run_of(row: Any) -> Run:
    """The :class:`Run` of a row that has all its columns, made as the ORM makes a loaded one (no ``__init__``)."""
    configure_mappers()  # as Run() would (once per process; then a flag's check)
    run = _RUN_CLASS.new_instance()
    mapping = row._mapping
    run.__dict__.update({key: mapping[key] for key in _RUN_KEYS})
    return run


_RUN_CLASS = manager_of_class(Run)
_RUN_KEYS = tuple(c.key for c in _RUN_COLUMNS)


def _default_of(field: Any) -> Callable[[], Any]:
    if field.default_factory is not None:
        return field.default_factory
    value = None if field.default is PydanticUndefined else field.default  # a constant (the mutable ones are factories)
    return lambda: value


_RUN_DEFAULTS = tuple((key, _default_of(Run.model_fields[key])) for key in _RUN_KEYS)


_STATUS = Run.__table__.c.status.type
_TRANSITIONS: dict[tuple[Any, ...], Any] = {}  # one statement per shape of transition (PostgreSQL)
# The values a transition writes as expressions: started_at keeps the first start (_stamps), dispatch_attempt
# counts up (mark_submitted). In a prebuilt statement, started_at's "now" is a parameter.
_EXPRESSIONS = {
    "started_at": lambda now: func.coalesce(_RUNS.c.started_at, now),
    "dispatch_attempt": lambda _: _RUNS.c.dispatch_attempt + 1,
}


def _refused(session: Session, run_id: uuid.UUID, current: RunStatus, to: RunStatus, message: str) -> None:
    if current is to:  # already there (a second sweep, a redelivery): nothing happened, nothing to say
        log.debug("run %s is already %s", run_id, to.value)
        return
    log.info("refused transition of run %s: %s -> %s", run_id, current.value, to.value)
    _record(session, run_id, LogLevel.WARN, "transition_refused",
            f"Refused to move from {current.value} to {to.value}: {message}", {"from": current.value, "to": to.value},
            "log", {})


def _on_terminal(session: Session, run_id: uuid.UUID, to: RunStatus, route: Any) -> None:
    for hook in _terminal_hooks:
        hook(session, run_id, to, route)


# --------------------------------------------------------------------------- named transitions


def _change(run_id: uuid.UUID, to: RunStatus, message: str, session: Session | None = None,
            **kw: Any) -> RunStatus | None:
    return in_transaction(lambda s: transition(s, run_id, to, message, **kw), session)


def mark_submitted(run_id: uuid.UUID, celery_task_id: str, session: Session | None = None) -> int | None:
    """pending → submitted; returns the new dispatch attempt, or None if refused."""

    def write(s: Session) -> int | None:
        values = {"celery_task_id": celery_task_id, "submitted_to_celery_at": utcnow(),
                  "dispatch_attempt": Run.dispatch_attempt + 1}
        route = _move(s, run_id, S.PENDING, S.SUBMITTED, "Queued for a worker", values=values)
        if route is not None:
            return int(route.dispatch_attempt)
        if transition(s, run_id, S.SUBMITTED, "Queued for a worker", values=values, expect={S.PENDING}) is None:
            return None
        return s.execute(select(Run.dispatch_attempt).where(Run.id == run_id)).scalar_one()

    return in_transaction(write, session)


def start(run_id: uuid.UUID, dispatch_attempt: int, worker: str, lease_seconds: float) -> bool:
    """submitted → running, only for the run's current dispatch attempt."""
    return start_and_load(run_id, dispatch_attempt, worker, lease_seconds) is not None


def start_and_load(run_id: uuid.UUID, dispatch_attempt: int, worker: str, lease_seconds: float) -> Run | None:
    """:func:`start`, returning the started run read in the same transaction (None if it did not start):
    a worker has nothing more to read before its heartbeat takes over."""
    values = {"worker_hostname": worker[:200], "lease_expires_at": utcnow() + timedelta(seconds=lease_seconds)}
    # The usual case, submitted for this very dispatch attempt, in one statement of its own (PostgreSQL).
    started = _move_alone(run_id, S.SUBMITTED, S.RUNNING, f"Started on {worker}", values=values,
                          guard=("dispatch_attempt", dispatch_attempt), entity=True)
    if started is not None:
        return started

    def write(s: Session) -> Run | None:
        # The usual case in one compare-and-set (on PostgreSQL tried above, alone: here only on SQLite or when it
        # matched nothing, to tell why).
        started = _move(s, run_id, S.SUBMITTED, S.RUNNING, f"Started on {worker}", values=values,
                        guard=Run.dispatch_attempt == dispatch_attempt, entity=True)
        if started is not None:
            return started
        current = s.execute(select(Run.dispatch_attempt).where(Run.id == run_id)).scalar_one_or_none()
        if current is None:
            raise RunNotFound(f"No run with id {run_id}.")
        if current != dispatch_attempt:
            _add_log(
                s, run_id, LogLevel.WARN, "duplicate_delivery",
                f"Ignored a delivery for dispatch {dispatch_attempt}; the current one is {current}", {"worker": worker},
            )
            return None
        status = _status_in(s, run_id)
        if status is not S.SUBMITTED:  # the broker delivered it again (its worker process died, say)
            _add_log(s, run_id, LogLevel.WARN, "duplicate_delivery",
                     f"Ignored a repeated delivery of dispatch {dispatch_attempt}: the run is already {status.value}",
                     {"worker": worker, "status": status.value})
            return None
        if transition(s, run_id, S.RUNNING, f"Started on {worker}", values=values, expect={S.SUBMITTED}) is None:
            return None
        return s.execute(select(Run).where(Run.id == run_id).execution_options(populate_existing=True)).scalar_one()

    return in_transaction(write)


def set_priority(run_id: uuid.UUID, priority: int, by: str, session: Session | None = None) -> int:
    """Change a queued run's priority (a boost), with a ``boost`` log line."""

    def write(s: Session) -> int:
        old = s.execute(select(Run.priority).where(Run.id == run_id)).scalar_one()
        s.execute(update(Run).where(Run.id == run_id).values(priority=priority))
        _record(s, run_id, LogLevel.INFO, "boost", f"Priority {old} → {priority} (boosted by {by})",
                {"from": old, "to": priority, "by": by}, "log", {"priority": priority})
        return priority

    return in_transaction(write, session)


def claim(run_id: uuid.UUID, observed: RunStatus, dispatch_attempt: int, to: RunStatus, message: str, *,
          level: LogLevel = LogLevel.WARN, event_type: str | None = None, context: dict[str, Any] | None = None,
          values: dict[str, Any] | None = None, also: Any = None, session: Session | None = None) -> bool:
    """``observed`` → ``to``, only while the run is still ``observed`` for dispatch ``dispatch_attempt`` (and
    ``also``, an extra condition, holds): what recovery decided from a read is applied at most once, by one
    node. A run someone else moved meanwhile (another sweep, a heartbeat, a new dispatch) is left alone, and
    nothing is written: that is not a refusal, the run was taken care of."""
    if not allowed(observed, to):
        raise InvalidTransition(f"No transition from {observed.value} to {to.value}.")
    guard = Run.dispatch_attempt == dispatch_attempt
    if also is not None:
        guard = guard & also
    return in_transaction(lambda s: _move(s, run_id, observed, to, message, level=level, event_type=event_type,
                                          context=context, values=values, guard=guard) is not None, session)


HANDED_BACK = "handed_back"  # the log event of a run its stopping worker gave back to the queue
REDELIVERED = "redelivered"  # the log event of a run re-queued after its worker was lost (counted: the budget)
_UNASSIGNED = {"celery_task_id": None, "worker_hostname": None}


def hand_back(run_id: uuid.UUID, dispatch_attempt: int, message: str, session: Session | None = None) -> bool:
    """Running (or stale) → pending, for dispatch ``dispatch_attempt`` only: its worker is stopping, and
    another worker (or this one, restarted) continues the run without waiting for its lease. This is not
    a worker loss: it does not count against the redelivery budget."""

    def write(s: Session) -> bool:
        for observed in (S.RUNNING, S.STALE):
            if _move(s, run_id, observed, S.PENDING, message, level=LogLevel.WARN, event_type=HANDED_BACK,
                     values=_UNASSIGNED, guard=Run.dispatch_attempt == dispatch_attempt) is not None:
                return True
        return False

    return in_transaction(write, session)


def redeliveries(run_id: uuid.UUID, session: Session | None = None) -> int:
    """How many times the run was re-queued after losing its worker (its ``redelivered`` log lines)."""
    stmt = select(func.count()).select_from(RunLogEvent).where(RunLogEvent.run_id == run_id,
                                                               RunLogEvent.event_type == REDELIVERED)
    return int(in_transaction(lambda s: s.execute(stmt).scalar_one(), session, read_only=True))


def mark_stale(run_id: uuid.UUID, message: str) -> bool:
    return _change(run_id, S.STALE, message, level=LogLevel.WARN, expect={S.RUNNING}) is not None


def requeue(run_id: uuid.UUID, message: str, session: Session | None = None, *,
            expect: set[RunStatus] | None = None) -> bool:
    """Back to pending (its worker was lost, or its publish failed); the dispatcher sends it again."""
    return _change(run_id, S.PENDING, message, session, level=LogLevel.WARN,
                   values={"celery_task_id": None, "worker_hostname": None}, expect=expect) is not None


def resend(run_id: uuid.UUID, task_id: str | None, message: str) -> bool:
    """submitted → pending for a run whose message the broker lost (task ``task_id`` reached no worker); the
    dispatcher sends it again with a new dispatch attempt. Nothing happens (and nothing is logged) when the run
    moved on meanwhile: started, or sent again already."""
    return in_transaction(lambda s: _move(
        s, run_id, S.SUBMITTED, S.PENDING, message, level=LogLevel.WARN, context={"cause": "message_lost"},
        values={"celery_task_id": None, "worker_hostname": None}, guard=Run.celery_task_id == task_id,
    ) is not None)


def force_kill(run_id: uuid.UUID, by: str) -> bool:
    """Admin only: mark the run failed now; the process running it kills itself at its next heartbeat
    (``backend.worker.base.Heartbeat``), so only that run's work is hit. A run not started yet is revoked."""

    def write(s: Session) -> bool:
        task_id = s.execute(select(Run.celery_task_id).where(Run.id == run_id)).scalar_one_or_none()
        message = f"Force-killed by {by}"
        done = transition(s, run_id, S.FAILED, message, level=LogLevel.ERROR,
                          values={"error_message": message}, context={"by": by, "stage": "killed"}) is not None
        if done and task_id:
            _drop_task_after_commit(s, task_id)
        return done

    return in_transaction(write)


def complete(run_id: uuid.UUID, results: dict[str, Any] | None = None, message: str = "Completed",
             session: Session | None = None) -> bool:
    return _change(run_id, S.COMPLETED, message, session, values={"results_summary": _json_safe(results or {})},
                   likely=S.RUNNING) is not None


def complete_alone(run_id: uuid.UUID, results: dict[str, Any] | None = None, message: str = "Completed") -> bool | None:
    """:func:`complete` for a running run in no run group, in one statement of its own (PostgreSQL): returns
    whether runs wait for a slot in its queue, or None when it was not completed this way (it is in a group or
    not running, or on SQLite: call :func:`complete`)."""
    ended = _move_alone(run_id, S.RUNNING, S.COMPLETED, message,
                        values={"results_summary": _json_safe(results or {})})
    return None if ended is None else bool(ended.queue_waiting)


def fail(
    run_id: uuid.UUID,
    error: str,
    *,
    traceback: str | None = None,
    results: dict[str, Any] | None = None,
    session: Session | None = None,
) -> bool:
    values: dict[str, Any] = {"error_message": error[:MAX_MESSAGE]}
    if results is not None:
        values["results_summary"] = _json_safe(results)
    context = {"traceback": traceback} if traceback else None
    return (
        _change(run_id, S.FAILED, error, session, level=LogLevel.ERROR, values=values, context=context,
                likely=S.RUNNING) is not None
    )


def time_out(run_id: uuid.UUID, message: str, *, expect: set[RunStatus] | None = None) -> bool:
    return _change(run_id, S.TIMED_OUT, message, level=LogLevel.ERROR, values={"error_message": message},
                   expect=expect, likely=S.RUNNING) is not None


def mark_cancelled(
    run_id: uuid.UUID, message: str = "Cancelled", session: Session | None = None, *, stage: str | None = None
) -> bool:
    """The run ends cancelled; ``stage`` says how: acknowledged (the job stopped itself) or forced."""
    context = {"stage": stage} if stage else None
    return _change(run_id, S.CANCELLED, message, session, level=LogLevel.WARN, context=context) is not None


def request_cancel(run_id: uuid.UUID, by: str | None = None, reason: str | None = None) -> RunStatus:
    """Cancel a run: queued runs end at once; running ones move to cancelling until the worker stops.

    Returns the run's status afterwards. Cancelling a finished run is an error.
    """
    who = f" by {by}" if by else ""
    note = f": {reason}" if reason else ""

    def write(s: Session) -> RunStatus:
        for _ in range(20):
            current = _status_in(s, run_id)
            if current.is_terminal:
                raise InvalidTransition(f"Run {run_id} already ended ({current.value}); it cannot be cancelled.")
            if current is S.CANCELLING:
                return current
            # Decided from the status just read; if a worker started the run meanwhile, the compare-and-set
            # finds it running and the cancel is decided again (cancelling), never dropped.
            target = S.CANCELLED if current in (S.PENDING, S.SUBMITTED) else S.CANCELLING
            message = ("Cancelled before it started" if target is S.CANCELLED else "Cancel requested") + who + note
            if _move(s, run_id, current, target, message, level=LogLevel.WARN,
                     context={"by": by, "stage": "requested"}) is None:
                continue
            if target is S.CANCELLED:
                task_id = s.execute(select(Run.celery_task_id).where(Run.id == run_id)).scalar_one()
                if task_id:
                    _drop_task_after_commit(s, task_id)
            return target
        raise InvalidTransition(f"Run {run_id} kept changing; gave up cancelling it.")

    return in_transaction(write)


def _status_in(session: Session, run_id: uuid.UUID) -> RunStatus:
    raw = session.execute(select(Run.status).where(Run.id == run_id)).scalar_one_or_none()
    if raw is None:
        raise RunNotFound(f"No run with id {run_id}.")
    return RunStatus(raw)


# --------------------------------------------------------------------------- activity


def add_log(
    run_id: uuid.UUID,
    level: LogLevel | str,
    event_type: str,
    message: str,
    context: dict[str, Any] | None = None,
    session: Session | None = None,
) -> None:
    level = LogLevel(level)

    def write(s: Session) -> None:
        route = _touch(s, run_id)
        _record(s, run_id, level, event_type, message, context, "log", {}, route=route)
        _revive_if_stale(s, run_id, route.status)

    in_transaction(write, session)


def set_progress(run_id: uuid.UUID, progress: dict[str, Any], session: Session | None = None) -> None:
    """Write the run's progress (callers coalesce: see ``backend.runs.progress``)."""

    def write(s: Session) -> None:
        safe = _json_safe(progress)
        route = _touch(s, run_id, progress=safe)
        outbox.append(s, run_id, "progress", {"progress": safe}, route=route)
        _revive_if_stale(s, run_id, route.status)

    in_transaction(write, session)


def log_phase(run_id: uuid.UUID, phase: str, previous: str | None, session: Session | None = None) -> None:
    add_log(run_id, LogLevel.INFO, "phase", f"Phase: {phase}", {"phase": phase, "previous": previous}, session)


def heartbeat(run_id: uuid.UUID, lease_seconds: float) -> RunStatus:
    """Renew the run's lease; returns its status so the worker learns of a cancel.

    Only a run a worker holds (running, cancelling, stale) has a lease: a late beat
    after the run ended or was re-queued must not lease it again.
    """
    return renew_lease(run_id, lease_seconds)[0]


def renew_lease(run_id: uuid.UUID, lease_seconds: float, dispatch_attempt: int | None = None) -> tuple[RunStatus, bool]:
    """The heartbeat of the process running dispatch ``dispatch_attempt`` (any, when None): renew the lease
    while that dispatch is still the run's current one. Returns the run's status and whether the caller still
    holds the run (its dispatch is current and the run running, cancelling or stale): the lease is ownership,
    and a process that lost it must stop before its next unit of work."""
    held_statuses = [S.RUNNING, S.CANCELLING, S.STALE]

    def write(s: Session) -> tuple[RunStatus, bool]:
        now = utcnow()
        mine = [Run.dispatch_attempt == dispatch_attempt] if dispatch_attempt is not None else []
        held = s.execute(
            update(Run)
            .where(Run.id == run_id, Run.status.in_(held_statuses), *mine)
            .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
            .execution_options(synchronize_session=False)
        ).rowcount
        if held:
            _revive_if_stale(s, run_id)
        return _status_in(s, run_id), bool(held)

    return in_transaction(write)


def _touch(session: Session, run_id: uuid.UUID, **values: Any) -> Any:
    """Record activity on the run (and ``values``); returns its routing columns and status."""
    route = session.execute(
        update(Run).where(Run.id == run_id).values(last_activity_at=utcnow(), **values)
        .returning(*outbox.ROUTE_COLUMNS, Run.status).execution_options(synchronize_session=False)
    ).first()
    if route is None:
        raise RunNotFound(f"No run with id {run_id}.")
    return route


def _revive_if_stale(session: Session, run_id: uuid.UUID, status: Any = None) -> None:
    if status is None:
        status = session.execute(select(Run.status).where(Run.id == run_id)).scalar_one()
    if status == S.STALE:
        transition(session, run_id, S.RUNNING, "Activity resumed", expect={S.STALE})


def set_results(run_id: uuid.UUID, results: dict[str, Any], session: Session | None = None) -> None:
    in_transaction(
        lambda s: s.execute(update(Run).where(Run.id == run_id).values(results_summary=_json_safe(results))), session
    )
