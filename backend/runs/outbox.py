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

from sqlalchemy import text
from sqlmodel import Session

from backend.config import get_settings
from backend.db.models import OutboxEvent

log = logging.getLogger(__name__)

OUTBOX_LOCK_KEY = 0x43555241  # "CURA"
NOTIFY_CHANNEL = "curatore:outbox"


def append(session: Session, organization_id: uuid.UUID, run_id: uuid.UUID, kind: str, payload: dict[str, Any]) -> None:
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
