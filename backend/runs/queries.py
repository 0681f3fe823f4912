"""Reading runs: one run, a page of runs (keyset), a run's log, its children."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlmodel import Session

from backend.db.engine import in_transaction
from backend.db.models import Organization, Run, RunGroup, RunLogEvent
from backend.db.states import RunStatus
from backend.errors import RunNotFound
from backend.validation import displayable


def get_run(run_id: uuid.UUID | str, session: Session | None = None) -> Run:
    try:
        rid = uuid.UUID(str(run_id))
    except ValueError:
        raise RunNotFound(f"{run_id!r} is not a run id.") from None
    run = in_transaction(lambda s: s.get(Run, rid), session, read_only=True)
    if run is None:
        raise RunNotFound(f"No run with id {rid}.")
    return run


@dataclass(frozen=True)
class RunFilter:
    organization_id: uuid.UUID | None = None
    statuses: tuple[RunStatus, ...] = ()
    run_types: tuple[str, ...] = ()
    parent_run_id: uuid.UUID | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    retry_of: uuid.UUID | None = None


def list_runs(
    flt: RunFilter = RunFilter(),
    *,
    limit: int = 50,
    before: tuple[datetime, uuid.UUID] | None = None,
    session: Session | None = None,
) -> list[Run]:
    """Newest first; ``before`` is the (created_at, id) of the last row of the previous page."""
    query = select(Run)
    if flt.organization_id:
        query = query.where(Run.organization_id == flt.organization_id)
    if flt.statuses:
        query = query.where(Run.status.in_(flt.statuses))
    if flt.run_types:
        query = query.where(Run.run_type.in_(flt.run_types))
    if flt.parent_run_id:
        query = query.where(Run.parent_run_id == flt.parent_run_id)
    if flt.resource_type:
        query = query.where(Run.resource_type == flt.resource_type)
    if flt.resource_id:
        query = query.where(Run.resource_id == flt.resource_id)
    if flt.retry_of:
        query = query.where(Run.retry_of == flt.retry_of)
    if before is not None:
        created, rid = before
        query = query.where(or_(Run.created_at < created, and_(Run.created_at == created, Run.id < rid)))
    query = query.order_by(Run.created_at.desc(), Run.id.desc()).limit(limit)
    return list(in_transaction(lambda s: s.execute(query).scalars().all(), session, read_only=True))


def get_logs(
    run_id: uuid.UUID, *, after_id: int = 0, limit: int = 500, before_id: int | None = None,
    session: Session | None = None,
) -> list[RunLogEvent]:
    query = select(RunLogEvent).where(RunLogEvent.run_id == run_id, RunLogEvent.id > after_id)
    if before_id is not None:
        query = query.where(RunLogEvent.id < before_id)
    query = query.order_by(RunLogEvent.id).limit(limit)
    return list(in_transaction(lambda s: s.execute(query).scalars().all(), session, read_only=True))


def get_log_tail(
    run_id: uuid.UUID, *, limit: int = 100, before_id: int | None = None, session: Session | None = None
) -> list[RunLogEvent]:
    """The last ``limit`` events of a run (before ``before_id`` if given), oldest first."""
    query = select(RunLogEvent).where(RunLogEvent.run_id == run_id)
    if before_id is not None:
        query = query.where(RunLogEvent.id < before_id)
    query = query.order_by(RunLogEvent.id.desc()).limit(limit)
    return list(reversed(in_transaction(lambda s: s.execute(query).scalars().all(), session, read_only=True)))


def group_for(parent_run_id: uuid.UUID, session: Session | None = None) -> RunGroup | None:
    query = select(RunGroup).where(RunGroup.parent_run_id == parent_run_id)
    return in_transaction(lambda s: s.execute(query).scalar_one_or_none(), session, read_only=True)


def org_slug(organization_id: uuid.UUID, session: Session | None = None) -> str:
    query = select(Organization.slug).where(Organization.id == organization_id)
    return in_transaction(lambda s: s.execute(query).scalar_one(), session, read_only=True)


def run_dict(run: Run) -> dict[str, Any]:
    """A run as plain JSON-friendly data that always encodes (an old row's unencodable text is replaced)."""
    data = displayable(run.model_dump(mode="json"))
    data["status"] = RunStatus(run.status).value
    return data


def log_dict(event: RunLogEvent) -> dict[str, Any]:
    return displayable(event.model_dump(mode="json"))
