"""The tables. Nothing outside ``backend/runs`` writes a run's status."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Column, ColumnElement, Index, Text, literal_column, text
from sqlmodel import Field, SQLModel

from backend.db.states import LogLevel, RunOrigin, RunStatus
from backend.db.types import BigIntPK, JSONType, UTCDateTime, enum_column_type, utcnow


def status_is(column: Any, *statuses: RunStatus) -> ColumnElement[bool]:
    """``column`` (a run's status) is one of ``statuses``, written into the SQL rather than sent as parameters: a
    prepared statement's generic plan then still matches the partial indexes on status (``ix_runs_waiting``,
    ``ix_runs_occupying``, ``ix_runs_queued``), and is estimated from each value's own frequency. (With a
    parameter, PostgreSQL's generic plan for a run's end read the whole table to look for a waiting run.)"""
    values = [literal_column(f"'{RunStatus(status).value}'") for status in statuses]
    return column == values[0] if len(values) == 1 else column.in_(values)


def _ts(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime(), nullable=nullable, index=index)


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    slug: str = Field(max_length=64, unique=True, index=True)
    name: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


class Asset(SQLModel, table=True):
    """A stored file. Jobs work on assets, never on arbitrary server paths."""

    __tablename__ = "assets"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id", index=True)
    filename: str = Field(max_length=500)
    content_type: str | None = Field(default=None, max_length=200)
    size_bytes: int = 0
    sha256: str = Field(max_length=64)
    storage_key: str = Field(max_length=500)
    source: str | None = Field(default=None, max_length=1000)
    collection_id: str | None = Field(default=None, max_length=200, index=True)  # e.g. a scrape's collection
    external_id: str | None = Field(default=None, max_length=500)  # e.g. a SharePoint item id
    deleted_at: datetime | None = _ts()
    extracted_text: str | None = Field(default=None, sa_column=Column(Text))
    extraction_status: str = Field(default="none", max_length=16)
    extraction_meta: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


def empty_progress() -> dict[str, Any]:
    return {
        "current": 0,
        "total": None,
        "unit": None,
        "percent": None,
        "phase": None,
        "current_item": None,
        "extra": {},
    }


class Run(SQLModel, table=True):
    """One background operation."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_org_created", "organization_id", "created_at", "id"),
        Index("ix_runs_created", "created_at", "id"),
        # the dispatcher's questions; PostgreSQL: ix_runs_waiting and ix_runs_occupying instead (migration 0014)
        Index("ix_runs_status_queue", "status", "queue", "priority").ddl_if(dialect="sqlite"),
        Index("ix_runs_waiting", "queue", "id", postgresql_where=text("status = 'pending'"))
        .ddl_if(dialect="postgresql"),
        Index("ix_runs_occupying", "queue", "run_type", "id",
              postgresql_where=text("status IN ('submitted', 'running', 'cancelling', 'stale')"))
        .ddl_if(dialect="postgresql"),
        Index("ix_runs_resource", "resource_type", "resource_id"),
        Index("ix_runs_lease", "status", "lease_expires_at"),
        Index("ix_runs_created_by", "created_by", "created_at", "id"),  # a schedule's history, keyset-paged
        # migration 0012: each filter of the jobs list with its keyset order, and the 24 h cards (PostgreSQL adds
        # the run_search table, see backend.runs.listing.run_search, and the duration order's indexes,
        # ix_runs_{,org_}duration and ix_runs_{,org_}unstarted, see backend.list_sort._by_duration)
        Index("ix_runs_type_created", "run_type", text("created_at DESC"), text("id DESC")),
        Index("ix_runs_org_type_created", "organization_id", "run_type", text("created_at DESC"), text("id DESC")),
        Index("ix_runs_status_created", "status", "created_at", "id"),
        Index("ix_runs_org_status_created", "organization_id", "status", "created_at", "id"),
        Index("ix_runs_origin_created", "origin", "created_at", "id"),
        Index("ix_runs_org_origin_created", "organization_id", "origin", "created_at", "id"),
        Index("ix_runs_priority_created", "priority", "created_at", "id"),
        Index("ix_runs_org_priority_created", "organization_id", "priority", "created_at", "id"),
        Index("ix_runs_status_completed", "status", "completed_at"),
        Index("ix_runs_org_status_completed", "organization_id", "status", "completed_at"),
        Index("ix_runs_queued", "queue", text("priority DESC"), "created_at", "id",
              postgresql_where=text("status IN ('pending', 'submitted')"),
              sqlite_where=text("status IN ('pending', 'submitted')")),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id")
    run_type: str = Field(max_length=64)
    origin: RunOrigin = Field(default=RunOrigin.USER, sa_type=enum_column_type(RunOrigin), nullable=False)
    status: RunStatus = Field(default=RunStatus.PENDING, sa_type=enum_column_type(RunStatus), nullable=False)
    priority: int = Field(default=2, ge=0, le=4)
    queue: str = Field(max_length=64)
    display_name: str | None = Field(default=None, max_length=300)

    config: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    progress: dict[str, Any] = Field(default_factory=empty_progress, sa_type=JSONType)
    results_summary: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    error_message: str | None = Field(default=None, sa_column=Column(Text))
    input_asset_ids: list[str] = Field(default_factory=list, sa_type=JSONType)
    resource_type: str | None = Field(default=None, max_length=64)
    resource_id: str | None = Field(default=None, max_length=200)
    created_by: str | None = Field(default=None, max_length=200)

    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    submitted_at: datetime | None = _ts()
    submitted_to_celery_at: datetime | None = _ts()
    started_at: datetime | None = _ts()
    completed_at: datetime | None = _ts()
    last_activity_at: datetime | None = _ts()
    heartbeat_at: datetime | None = _ts()
    lease_expires_at: datetime | None = _ts()
    cancel_requested_at: datetime | None = _ts()
    not_before: datetime | None = _ts()  # not dispatched before (retry backoff)

    celery_task_id: str | None = Field(default=None, max_length=64)
    worker_hostname: str | None = Field(default=None, max_length=200)
    dispatch_attempt: int = 0
    group_id: uuid.UUID | None = Field(default=None, foreign_key="run_groups.id", index=True)
    parent_run_id: uuid.UUID | None = Field(default=None, foreign_key="runs.id", index=True)
    is_group_parent: bool = False
    attempt: int = 1
    retry_of: uuid.UUID | None = Field(default=None, foreign_key="runs.id")
    trace_id: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=64)


class RunGroup(SQLModel, table=True):
    """A parent run and the children it spawned, counted atomically."""

    __tablename__ = "run_groups"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id")
    parent_run_id: uuid.UUID = Field(index=True, unique=True)  # one group per parent (a re-run continues it)
    expected: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    sealed: bool = False
    status: str = Field(default="running", max_length=16)
    completion_hook: str | None = Field(default=None, max_length=200)
    hook_config: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    finalized_at: datetime | None = _ts()
    hook_fired_at: datetime | None = _ts()


class RunLogEvent(SQLModel, table=True):
    """One line of a run's activity log."""

    __tablename__ = "run_log_events"
    __table_args__ = (Index("ix_run_log_events_run", "run_id", "id"),)

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    run_id: uuid.UUID = Field(foreign_key="runs.id", ondelete="CASCADE")
    level: LogLevel = Field(default=LogLevel.INFO, sa_type=enum_column_type(LogLevel, 8), nullable=False)
    event_type: str = Field(max_length=40)
    message: str = Field(sa_column=Column(Text, nullable=False))
    context: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


class OutboxEvent(SQLModel, table=True):
    """A change to a run: what the live bridge pushes to browsers. ``seq`` is the order rows were written in;
    ``pos``, the order they committed in, is assigned by the relay (``backend.runs.outbox.relay``)."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        Index("uq_outbox_events_pos", "pos", unique=True),
        Index("ix_outbox_events_unnumbered", "seq", postgresql_where=text("pos IS NULL"),
              sqlite_where=text("pos IS NULL")),
    )

    seq: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    pos: int | None = Field(default=None, sa_type=BigInteger)
    organization_id: uuid.UUID = Field(index=True)
    run_id: uuid.UUID = Field(index=True)
    kind: str = Field(max_length=24)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


class WorkerHeartbeat(SQLModel, table=True):
    """A Celery worker node, as it last reported itself (the queue page's "workers online")."""

    __tablename__ = "worker_heartbeats"

    hostname: str = Field(primary_key=True, max_length=200)
    queues: list[str] = Field(default_factory=list, sa_type=JSONType)
    concurrency: int = 0
    pid: int = 0
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    active_runs: int = 0
    # Celery task ids the node has received and not finished (reported every housekeeping pass): a submitted
    # run whose task no live node holds, while one of its queue's nodes has a free slot, lost its message.
    held_task_ids: list[str] = Field(default_factory=list, sa_type=JSONType)


class ExternalRecord(SQLModel, table=True):
    """A record brought in by a connector or import: a SAM.gov opportunity, a forecast, a Salesforce row."""

    __tablename__ = "external_records"
    __table_args__ = (
        Index("uq_external_records_key", "organization_id", "source", "kind", "external_id", unique=True),
        Index("ix_external_records_resource", "organization_id", "source", "resource_id"),
    )

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id")
    source: str = Field(max_length=40)  # sam, forecast, salesforce, ...
    kind: str = Field(max_length=60)  # opportunity, forecast, Account, Contact, ...
    external_id: str = Field(max_length=300)
    resource_id: str | None = Field(default=None, max_length=200)  # the search / sync / import it came from
    title: str = Field(default="", max_length=1000)
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    asset_ids: list[str] = Field(default_factory=list, sa_type=JSONType)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    deleted_at: datetime | None = _ts()


class ConnectorState(SQLModel, table=True):
    """What a connector remembers between runs (a delta link, the items it knows)."""

    __tablename__ = "connector_states"
    __table_args__ = (Index("uq_connector_states_key", "organization_id", "connector", "resource_id", unique=True),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id")
    connector: str = Field(max_length=40)
    resource_id: str = Field(max_length=200)
    state: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


class ScheduledTask(SQLModel, table=True):
    """A run the scheduler starts on an interval (maintenance, sync triggers)."""

    __tablename__ = "scheduled_tasks"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=100, unique=True, index=True)
    description: str = Field(default="", max_length=500)
    organization_id: uuid.UUID = Field(foreign_key="organizations.id")
    run_type: str = Field(max_length=64)
    config: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    interval_seconds: int = Field(default=3600, ge=1)
    enabled: bool = True
    last_run_id: uuid.UUID | None = None
    last_run_at: datetime | None = _ts()
    next_run_at: datetime | None = _ts()
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    email: str = Field(max_length=320, unique=True, index=True)  # stored lower-case
    name: str = Field(default="", max_length=200)
    password_hash: str = Field(max_length=500)  # argon2
    is_system_admin: bool = False
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


class Membership(SQLModel, table=True):
    """A user's role in an organization: viewer, member or admin."""

    __tablename__ = "memberships"
    __table_args__ = (Index("uq_memberships_user_org", "user_id", "organization_id", unique=True),)

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE")
    organization_id: uuid.UUID = Field(foreign_key="organizations.id", ondelete="CASCADE", index=True)
    role: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


class ApiToken(SQLModel, table=True):
    """A bearer token for the REST API; only its SHA-256 is stored, the token is shown once."""

    __tablename__ = "api_tokens"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    name: str = Field(max_length=200)
    token_hash: str = Field(max_length=64, unique=True, index=True)
    prefix: str = Field(max_length=16)  # the first characters, to recognise a token in lists
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    expires_at: datetime | None = _ts()
    last_used_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()


class LoginSession(SQLModel, table=True):
    """A browser login; only HMAC-SHA256(CURATORE_SECRET_KEY, secret) is stored (``passwords.session_digest``).
    It ends at ``expires_at`` (absolute), after ``CURATORE_SESSION_IDLE_MINUTES`` without a request
    (``last_seen_at``), or when revoked (sign-out, password change, disable)."""

    __tablename__ = "login_sessions"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    user_id: uuid.UUID = Field(foreign_key="users.id", ondelete="CASCADE", index=True)
    secret_hash: str = Field(max_length=64, unique=True, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    last_seen_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()


class AuditEntry(SQLModel, table=True):
    """Who submitted, cancelled, retried, boosted or force-killed what."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_run", "run_id", "id"), Index("ix_audit_log_org", "organization_id", "id"))

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
    actor: str = Field(max_length=320)  # a user's email, "token:<prefix>", "cli", "system"
    action: str = Field(max_length=40)  # submit, cancel, retry, boost, force_kill, ...
    organization_id: uuid.UUID | None = None
    run_id: uuid.UUID | None = None
    details: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)


class LoginFailure(SQLModel, table=True):
    """One failed sign-in, counted per account and per source address (``scope``) by every process alike."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key", "scope", "key", "at"),)

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    scope: str = Field(max_length=16)  # "account" (the email tried) or "address" (the client's IP)
    key: str = Field(max_length=320)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)


# --------------------------------------------------------------------------- list counters (migration 0012)
# Written by database triggers on ``runs`` (every insert, delete, and change of status, organization, type, origin
# or end time adds delta rows in the writer's own transaction) and folded by ``backend.runs.counters.compact``.


class RunCountDelta(SQLModel, table=True):
    """+1 for a run's new key, -1 for its old one; appended by the triggers (no row is ever updated, so writers
    never wait for each other), folded into :class:`RunCount`, :class:`RunEnd` and :class:`RunTypeStat`."""

    __tablename__ = "run_count_deltas"

    id: int | None = Field(default=None, sa_type=BigIntPK, primary_key=True)
    organization_id: uuid.UUID
    run_type: str = Field(max_length=64)
    status: str = Field(max_length=16)
    origin: str = Field(max_length=16)
    ended_hour: int | None = Field(default=None, sa_type=BigInteger)  # hours since the epoch of completed_at
    seconds: float | None = None  # a run that just completed: its duration
    n: int = 0


class RunCount(SQLModel, table=True):
    """Runs per organization × type × status × origin (plus the unfolded deltas)."""

    __tablename__ = "run_counts"

    organization_id: uuid.UUID = Field(primary_key=True)
    run_type: str = Field(max_length=64, primary_key=True)
    status: str = Field(max_length=16, primary_key=True)
    origin: str = Field(max_length=16, primary_key=True)
    n: int = Field(default=0, sa_type=BigInteger)


class RunEnd(SQLModel, table=True):
    """Ended runs per organization × status × hour of their end (the "done / failed in 24 h" cards)."""

    __tablename__ = "run_ends"

    organization_id: uuid.UUID = Field(primary_key=True)
    status: str = Field(max_length=16, primary_key=True)
    hour: int = Field(sa_type=BigInteger, primary_key=True)
    n: int = Field(default=0, sa_type=BigInteger)


class RunTypeStat(SQLModel, table=True):
    """A job type's duration, as an exponentially weighted mean over its completed runs (the list's ETAs)."""

    __tablename__ = "run_type_stats"

    run_type: str = Field(primary_key=True, max_length=64)
    mean_seconds: float = 0.0
    samples: int = Field(default=0, sa_type=BigInteger)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), nullable=False)
