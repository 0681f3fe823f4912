"""The audit log: who did what, carried out or refused, from whichever door (UI, API, CLI)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import AuditEntry


def record(actor: str, action: str, *, organization_id: uuid.UUID | None = None, run_id: uuid.UUID | None = None,
           **details: Any) -> None:
    in_transaction(lambda s: s.add(AuditEntry(actor=actor, action=action, organization_id=organization_id,
                                              run_id=run_id, details=details)))


def for_run(run_id: uuid.UUID, limit: int = 100) -> list[AuditEntry]:
    stmt = select(AuditEntry).where(AuditEntry.run_id == run_id).order_by(AuditEntry.id).limit(limit)
    return list(in_transaction(lambda s: s.execute(stmt).scalars().all()))


def recent(organization_ids: set[uuid.UUID] | None, limit: int = 100) -> list[AuditEntry]:
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if organization_ids is not None:
        stmt = stmt.where(AuditEntry.organization_id.in_(organization_ids))
    return list(in_transaction(lambda s: s.execute(stmt).scalars().all()))


PAGE_SIZE = 50


def page(organization_id: uuid.UUID | None, *, action: str = "", actor: str = "", since: datetime | None = None,
         until: datetime | None = None, before_id: int | None = None,
         limit: int = PAGE_SIZE) -> tuple[list[AuditEntry], int | None]:
    """One page of entries, newest first, and the id to pass as ``before_id`` for the next (None: the last page).
    ``organization_id`` None is the whole log (system admins). ``action`` matches an action and its refusal
    (``cancel`` also finds ``cancel_refused``); ``actor`` a part of the actor's name. Keyset on the id, so a page
    costs the same however deep it is."""
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit + 1)
    if organization_id is not None:
        stmt = stmt.where(AuditEntry.organization_id == organization_id)
    if action:
        stmt = stmt.where(AuditEntry.action.in_([action, f"{action}_refused"]))
    if actor:
        escaped = actor.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(AuditEntry.actor.ilike(f"%{escaped}%", escape="\\"))
    if since is not None:
        stmt = stmt.where(AuditEntry.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEntry.at < until)
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    rows = list(in_transaction(lambda s: s.execute(stmt).scalars().all(), read_only=True))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)
