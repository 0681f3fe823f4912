"""Cancelling a run and, by its type's policy, its children (SPEC 4.2).

:func:`cancel_run` is what the API, the UI and the CLI call. It requests the cancel of the run
(``service.request_cancel``: queued runs end at once, running ones move to ``cancelling``), then
cascades to the run's children according to the registry's ``cancel_cascade`` of its type:

- ``"queued"`` (syncs, scrapes, pulls, uploads): only children still ``pending`` or ``submitted``;
  children already running finish their work.
- ``"all"`` (pipelines): every active child, running ones too.

Each child is cancelled in its own transaction, after the parent's has committed, so no lock on the
parent's row is held while the children are written. A child that is itself a parent cascades by its
own type's policy. A child that ended in the meantime is skipped. Calling it again on a run that is
already ``cancelling`` repeats the cascade (for children spawned since), which is harmless.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import Run
from backend.db.states import LogLevel, RunStatus
from backend.errors import InvalidTransition, RunNotFound
from backend.jobtypes.registry import get_registry
from backend.runs import service

log = logging.getLogger(__name__)
S = RunStatus
QUEUED = (S.PENDING, S.SUBMITTED)
ACTIVE_NOT_CANCELLING = (S.PENDING, S.SUBMITTED, S.RUNNING, S.STALE)
MAX_DEPTH = 8


def cancel_run(run_id: uuid.UUID | str, by: str | None = None, reason: str | None = None) -> RunStatus:
    """Cancel ``run_id`` and cascade to its children by its type's policy. Returns the run's status afterwards.

    Raises ``InvalidTransition`` if the run already ended and ``RunNotFound`` if there is no such run.
    """
    rid = uuid.UUID(str(run_id))
    status = service.request_cancel(rid, by, reason)
    _cascade(rid, by, depth=0)
    return status


def cascade_policy(run_type: str) -> str:
    job_type = get_registry().find(run_type)
    return job_type.cancel_cascade if job_type else "queued"


def children_to_cancel(run_id: uuid.UUID) -> list[uuid.UUID]:
    """The children of ``run_id`` that its type's cascade policy cancels, as of now."""
    run_type = in_transaction(lambda s: s.execute(select(Run.run_type).where(Run.id == run_id)).scalar_one_or_none())
    if run_type is None:
        raise RunNotFound(f"No run with id {run_id}.")
    statuses = ACTIVE_NOT_CANCELLING if cascade_policy(run_type) == "all" else QUEUED
    query = (select(Run.id).where(Run.parent_run_id == run_id, Run.status.in_(statuses))
             .order_by(Run.created_at, Run.id))
    return list(in_transaction(lambda s: s.execute(query).scalars().all()))


def _cascade(run_id: uuid.UUID, by: str | None, depth: int) -> int:
    if depth >= MAX_DEPTH:
        return 0
    cancelled = 0
    for child_id in children_to_cancel(run_id):
        try:
            service.request_cancel(child_id, by, f"its parent run {run_id} was cancelled")
        except (InvalidTransition, RunNotFound):
            continue  # it ended (or went away) since we looked: nothing to cancel
        cancelled += 1
        _cascade(child_id, by, depth + 1)
    if cancelled:
        policy = "every active child" if cascade_policy(_run_type(run_id)) == "all" else "queued children only"
        service.add_log(run_id, LogLevel.WARN, "cancel_cascade", f"Cancel passed on to {cancelled} child runs "
                        f"({policy})", {"children": cancelled, "by": by})
    return cancelled


def _run_type(run_id: uuid.UUID) -> str:
    return in_transaction(lambda s: s.execute(select(Run.run_type).where(Run.id == run_id)).scalar_one())
