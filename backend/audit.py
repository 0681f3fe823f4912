"""The audit log: who submitted, cancelled, retried, boosted or force-killed what."""

from __future__ import annotations

import uuid
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
