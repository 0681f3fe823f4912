"""The event outbox: one row per change to a run, written in the change's transaction.

Writers take no lock: a row's ``seq`` is handed out when it is inserted, and on PostgreSQL a row with a lower
``seq`` may commit after one with a higher. So readers do not follow ``seq``: :func:`relay` gives committed
rows their ``pos``, in order, after every row numbered before (one relay at a time: an advisory lock on
PostgreSQL, the write lock on SQLite), and a reader following ``pos > cursor`` (:func:`read_after`) never
skips a row that commits late: it has no ``pos`` until it has committed, and then gets a higher one. Rows of
one run keep their order (a change of a run waits for the previous one to commit: the run's row is locked).
After commit, :func:`notify` wakes listeners through Redis.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from typing import Any

from sqlalchemy import Text, bindparam, func, insert, literal, literal_column, select, union_all, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Session

from backend.config import get_settings
from backend.db.engine import after_commit, in_transaction
from backend.db.models import OutboxEvent, Run, RunLogEvent
from backend.db.types import utcnow

log = logging.getLogger(__name__)

RELAY_LOCK_KEY = 0x43555241  # "CURA"
RELAY_BATCH = 5000
NOTIFY_CHANNEL = "curatore:outbox"
_EVENT_ID = literal_column("'{event,id}'::text[]")  # the path of a payload's line id (written out: no parameter)


ROUTE_COLUMNS = (Run.organization_id, Run.run_type, Run.display_name, Run.parent_run_id, Run.resource_type,
                 Run.resource_id)


def append(session: Session, run_id: uuid.UUID, kind: str, payload: dict[str, Any], route: Any = None,
           log_row: dict[str, Any] | None = None) -> None:
    """Record a change of ``run_id``; the payload also names the run's type, parent and resource, so listeners
    can route it without reading the run. ``route``: those columns (:data:`ROUTE_COLUMNS`), when the caller
    has them already (read from the run otherwise). ``log_row``: an activity-log line to insert with it, whose
    id the payload's ``event`` then carries (on PostgreSQL both rows in one statement). Listeners are woken
    once the transaction commits."""
    append_many(session, run_id, [(kind, payload, log_row)], route)


def append_many(session: Session, run_id: uuid.UUID, changes: list[tuple[str, dict[str, Any], dict[str, Any] | None]],
                route: Any = None, new_run: dict[str, Any] | None = None) -> None:
    """:func:`append` for several changes of one run, in this order: ``(kind, payload, log_row)`` each. On
    PostgreSQL every log line and outbox row goes in one statement (a log line's insert is a CTE read by its
    outbox row's branch of a ``UNION ALL``, so lines and rows are numbered in the given order). ``new_run``: the
    run's row, to be inserted first (on PostgreSQL in the same statement)."""
    pg = session.get_bind().dialect.name == "postgresql"
    if new_run is not None and not (pg and all(log_row is not None for *_, log_row in changes)):
        session.execute(_INSERT_RUN, new_run)
        new_run = None
    if route is None:
        route = session.execute(select(*ROUTE_COLUMNS).where(Run.id == run_id)).one()
    if pg and all(log_row is not None for *_, log_row in changes):
        # The run's NULL columns are left out (their default is NULL): fewer parameters, and a statement psycopg
        # converts once and keeps (it does not keep one of more than 50 parameters).
        run = None if new_run is None else {k: v for k, v in new_run.items() if v is not None or k in DEFAULTED}
        params = {f"r_{k}": v for k, v in (run or {}).items()} | changes_params(run_id, changes, route)
        session.execute(_logged_changes(len(changes), None if run is None else tuple(run)), params)
    else:
        for (kind, payload, log_row), row in zip(changes, _rows(run_id, changes, route)):
            payload = row.pop("payload")
            if log_row is not None:
                payload["event"]["id"] = session.execute(
                    insert(RunLogEvent).values(**log_row).returning(RunLogEvent.id)).scalar_one()
            session.execute(insert(OutboxEvent).values(payload=payload, **row))
    notify_after_commit(session)


def notify_after_commit(session: Session) -> None:
    """Wake the listeners once ``session``'s transaction commits (once per transaction)."""
    if not session.info.get("outbox_notify"):
        session.info["outbox_notify"] = True
        after_commit(session, notify)


def logged_update(update_run: Any, returning: Any) -> Any:
    """PostgreSQL, built once per shape (the caller caches it): ``update_run`` (an UPDATE of one run), and, only
    if it changed the row, a log line and an outbox row, in one statement that returns the ``returning`` columns
    of the updated row (no row: nothing matched, nothing was written). Its parameters are ``update_run``'s and
    :func:`logged_update_params`'. The outbox payload's ``run`` part is read from the updated row."""
    keys = {c.key for c in returning}
    moved = update_run.returning(*returning, *(c for c in ROUTE_COLUMNS if c.key not in keys)).cte("moved")
    lines, columns = RunLogEvent.__table__.c, OutboxEvent.__table__.c
    line = (insert(RunLogEvent.__table__)
            .from_select(list(_LOG_KEYS), select(*(bindparam(f"l_{k}", type_=lines[k].type) for k in _LOG_KEYS))
                         .select_from(moved))
            .returning(lines.id).cte("line"))
    about = func.jsonb_build_object("run_type", moved.c.run_type, "display_name", moved.c.display_name,
                                    "parent_run_id", func.cast(moved.c.parent_run_id, Text),
                                    "resource_type", moved.c.resource_type, "resource_id", moved.c.resource_id)
    payload = func.jsonb_set(bindparam("o_payload", type_=JSONB).op("||")(func.jsonb_build_object("run", about)),
                             _EVENT_ID, func.to_jsonb(line.c.id))
    row = insert(OutboxEvent.__table__).from_select(
        [*_OUTBOX_KEYS, "payload"],
        select(moved.c.organization_id, *(bindparam(f"o_{k}", type_=columns[k].type) for k in _OUTBOX_KEYS[1:]),
               payload).select_from(moved.join(line, literal(True))),
    ).returning(columns.seq).cte("row")
    return select(*(moved.c[c.key] for c in returning)).add_cte(row)


def logged_update_params(run_id: uuid.UUID, change: tuple[str, dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    """The log line's and outbox row's parameters of a :func:`logged_update` statement (``change``: ``(kind,
    payload, log_row)``, as :func:`append_many` takes). The caller wakes the listeners once it has committed
    (:func:`notify_after_commit`, :func:`notify`)."""
    kind, payload, log_row = change
    return ({"o_run_id": run_id, "o_kind": kind, "o_created_at": utcnow(), "o_payload": payload}
            | {f"l_{k}": log_row[k] for k in _LOG_KEYS})


_OUTBOX_KEYS = ("organization_id", "run_id", "kind", "created_at")
_LOG_KEYS = ("run_id", "level", "event_type", "message", "context", "created_at")


_INSERT_RUN = insert(Run.__table__)


DEFAULTED = {c.key for c in Run.__table__.c if c.default is not None or c.server_default is not None}


def _rows(run_id: uuid.UUID, changes: list[tuple[str, dict[str, Any], Any]], route: Any) -> list[dict[str, Any]]:
    """The outbox rows of ``changes`` (``payload`` with the run's routing part, ``run``)."""
    about = {
        "run_type": route.run_type,
        "display_name": route.display_name,
        "parent_run_id": str(route.parent_run_id) if route.parent_run_id else None,
        "resource_type": route.resource_type,
        "resource_id": route.resource_id,
    }
    now = utcnow()
    return [{"organization_id": route.organization_id, "run_id": run_id, "kind": kind, "created_at": now,
             "payload": payload | {"run": about}} for kind, payload, _ in changes]


def changes_params(run_id: uuid.UUID, changes: list[tuple[str, dict[str, Any], Any]], route: Any) -> dict[str, Any]:
    """The parameters (``l{i}_*``, ``o{i}_*``) of the ``changes`` of :func:`logged_changes` (``route``: the run's
    :data:`ROUTE_COLUMNS`)."""
    params: dict[str, Any] = {}
    for n, ((*_, log_row), row) in enumerate(zip(changes, _rows(run_id, changes, route))):
        params |= {f"o{n}_{k}": v for k, v in row.items()} | {f"l{n}_{k}": v for k, v in log_row.items()}
    return params


def logged_changes(sources: list[Any]) -> Any:
    """PostgreSQL: log lines and their outbox rows in one INSERT, as a CTE (parameters ``l{i}_*`` and ``o{i}_*``):
    line ``i`` is inserted once per row of ``sources[i]`` (None: once), as a CTE read by its outbox row's branch of
    a ``UNION ALL``, and the row's payload gets the line's id, so lines and rows are numbered in order."""
    outbox, lines = OutboxEvent.__table__.c, RunLogEvent.__table__.c
    branches: list[Any] = []
    for i, source in enumerate(sources):
        values = {k: bindparam(f"l{i}_{k}", type_=lines[k].type) for k in _LOG_KEYS}
        line = (insert(RunLogEvent.__table__).values(values) if source is None else
                insert(RunLogEvent.__table__).from_select(list(values), select(*values.values()).select_from(source)))
        line = line.returning(lines.id).cte(f"line{i}")
        payload = func.jsonb_set(bindparam(f"o{i}_payload", type_=JSONB), _EVENT_ID, func.to_jsonb(line.c.id))
        branches.append(select(*(bindparam(f"o{i}_{k}", type_=outbox[k].type) for k in _OUTBOX_KEYS), payload))
    return (insert(OutboxEvent.__table__).from_select([*_OUTBOX_KEYS, "payload"],
                                                      branches[0] if len(branches) == 1 else union_all(*branches))
            .returning(outbox.seq).cte("rows"))


@functools.cache
def _logged_changes(n: int, run_keys: tuple[str, ...] | None = None) -> Any:
    """PostgreSQL: ``n`` log lines and their outbox rows in one statement, built once (:func:`logged_changes`).
    ``run_keys``: the run's own INSERT of these columns (parameters ``r_*``) too, as one more CTE (the lines'
    foreign key is checked at the end of the statement)."""
    rows = logged_changes([None] * n)
    statement = select(func.count()).select_from(rows)
    if run_keys is not None:
        runs = Run.__table__.c
        statement = statement.add_cte(insert(Run.__table__).values(
            {k: bindparam(f"r_{k}", type_=runs[k].type) for k in run_keys}).returning(runs.id).cte("new_run"))
    return statement


NOTIFY_INTERVAL_SECONDS = 0.02


class _Notifier(threading.Thread):
    """Publishes the wake-ups of one process, off the writers' path: a commit only sets an event. The first commit
    after a quiet spell is published at once; the commits that follow within ``NOTIFY_INTERVAL_SECONDS`` of a
    publish share the next one (a worker ending a short run every few milliseconds publishes at most 50 times a
    second; a listener learns of a commit at most that much later)."""

    def __init__(self, url: str) -> None:
        super().__init__(name="outbox-notify", daemon=True)
        self.url = url
        self.pending = threading.Event()
        self.client: Any = None

    def run(self) -> None:
        published = 0.0
        while True:
            self.pending.wait()
            wait = published + NOTIFY_INTERVAL_SECONDS - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.pending.clear()
            try:
                if self.client is None:
                    import redis

                    self.client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
                self.client.publish(NOTIFY_CHANNEL, b"1")
            except Exception as exc:  # noqa: BLE001 - listeners fall back to polling
                log.debug("outbox notify failed: %s", exc)
                self.client = None
            published = time.monotonic()


_notifiers: dict[tuple[int, str], _Notifier] = {}
_notifiers_lock = threading.Lock()


def notify() -> None:
    """Wake the live listeners (Redis pub/sub), from a thread of this process's own. Best effort: they also
    poll."""
    url = get_settings().redis_url
    if not url:
        return
    key = (os.getpid(), url)  # a forked worker process starts its own thread
    notifier = _notifiers.get(key)
    if notifier is None:
        with _notifiers_lock:
            notifier = _notifiers.get(key)
            if notifier is None:
                notifier = _notifiers[key] = _Notifier(url)
                notifier.start()
    if not notifier.pending.is_set():  # already due: its publish is still to come (and costs no lock to know)
        notifier.pending.set()


def relay(session: Session) -> int:
    """Give the committed rows without a position theirs, in ``seq`` order, after the highest one given;
    returns how many. Does nothing while another relay runs (PostgreSQL), which numbers them instead."""
    if session.get_bind().dialect.name == "postgresql":
        if not session.execute(select(func.pg_try_advisory_xact_lock(RELAY_LOCK_KEY))).scalar_one():
            return 0
    waiting = session.execute(select(OutboxEvent.seq).where(OutboxEvent.pos.is_(None))
                              .order_by(OutboxEvent.seq).limit(RELAY_BATCH)).scalars().all()
    if not waiting:
        return 0
    top = session.execute(select(func.coalesce(func.max(OutboxEvent.pos), 0))).scalar_one()
    session.execute(update(OutboxEvent), [{"seq": seq, "pos": top + n} for n, seq in enumerate(waiting, 1)])
    return len(waiting)


def _relay_if_waiting() -> None:
    unnumbered = select(OutboxEvent.seq).where(OutboxEvent.pos.is_(None)).limit(1)
    while in_transaction(lambda s: s.execute(unnumbered).first(), read_only=True) is not None:
        if in_transaction(relay) < RELAY_BATCH:
            return


def last_seq() -> int:
    """The newest outbox position (0 when empty)."""
    _relay_if_waiting()
    return in_transaction(lambda s: s.execute(select(func.coalesce(func.max(OutboxEvent.pos), 0))).scalar_one(),
                          read_only=True)


def read_after(seq: int, limit: int = 1000) -> list[dict[str, Any]]:
    """Outbox rows after position ``seq``, in commit order, as plain dicts (``seq``: the row's position)."""
    _relay_if_waiting()
    stmt = select(OutboxEvent).where(OutboxEvent.pos > seq).order_by(OutboxEvent.pos).limit(limit)
    rows = in_transaction(lambda s: s.execute(stmt).scalars().all(), read_only=True)
    return [
        {
            "seq": r.pos,
            "organization_id": str(r.organization_id),
            "run_id": str(r.run_id),
            "kind": r.kind,
            "payload": r.payload,
            "created_at": r.created_at.isoformat(),
        }
        for r in rows
    ]
