"""The event outbox: one row per change to a run, written in the change's transaction.

On PostgreSQL a transaction-scoped advisory lock is taken before the row is
inserted, so sequence numbers become visible in commit order: a reader that
follows ``seq > cursor`` never skips a row that commits late. (SQLite already
serializes writers.) After commit, :func:`notify` wakes listeners through Redis.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import func, select, text
from sqlmodel import Session

from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import OutboxEvent, Run

log = logging.getLogger(__name__)

OUTBOX_LOCK_KEY = 0x43555241  # "CURA"
NOTIFY_CHANNEL = "curatore:outbox"


def append(session: Session, run_id: uuid.UUID, kind: str, payload: dict[str, Any]) -> None:
    """Record a change of ``run_id``; the payload also names the run's type, parent and resource,
    so listeners can route it without reading the run."""
    row = session.execute(
        select(Run.organization_id, Run.run_type, Run.display_name, Run.parent_run_id, Run.resource_type,
               Run.resource_id).where(
            Run.id == run_id
        )
    ).one()
    payload = payload | {
        "run": {
            "run_type": row.run_type,
            "display_name": row.display_name,
            "parent_run_id": str(row.parent_run_id) if row.parent_run_id else None,
            "resource_type": row.resource_type,
            "resource_id": row.resource_id,
        }
    }
    organization_id = row.organization_id
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": OUTBOX_LOCK_KEY})
    session.add(OutboxEvent(organization_id=organization_id, run_id=run_id, kind=kind, payload=payload))
    session.flush()
    session.info["outbox_dirty"] = True


_redis_client = None


def notify() -> None:
    """Wake the live listeners (Redis pub/sub). Best effort: they also poll."""
    global _redis_client
    url = get_settings().redis_url
    if not url:
        return
    try:
        if _redis_client is None:
            import redis

            _redis_client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        _redis_client.publish(NOTIFY_CHANNEL, b"1")
    except Exception as exc:  # listeners fall back to polling
        log.debug("outbox notify failed: %s", exc)
        _redis_client = None


def last_seq() -> int:
    """The newest outbox sequence number (0 when empty)."""
    return in_transaction(lambda s: s.execute(select(func.coalesce(func.max(OutboxEvent.seq), 0))).scalar_one())


def read_after(seq: int, limit: int = 1000) -> list[dict[str, Any]]:
    """Outbox rows after ``seq``, oldest first, as plain dicts."""
    stmt = select(OutboxEvent).where(OutboxEvent.seq > seq).order_by(OutboxEvent.seq).limit(limit)
    rows = in_transaction(lambda s: s.execute(stmt).scalars().all())
    return [
        {
            "seq": r.seq,
            "organization_id": str(r.organization_id),
            "run_id": str(r.run_id),
            "kind": r.kind,
            "payload": r.payload,
            "created_at": r.created_at.isoformat(),
        }
        for r in rows
    ]
