"""The run state machine, written down once.

Each status says who moves a run out of it. ``TRANSITIONS`` is the only table
of allowed changes; ``docs/state_machine.md`` draws it, and a test checks that
the drawing, this table and the service agree.
"""

from __future__ import annotations

import enum


class RunStatus(str, enum.Enum):
    PENDING = "pending"
    """Created, waiting for a queue slot. The dispatcher moves it to submitted;
    a cancel moves it to cancelled."""
    SUBMITTED = "submitted"
    """Published to Celery. The worker moves it to running; a cancel to cancelled;
    a failed publish to failed; recovery back to pending."""
    RUNNING = "running"
    """A worker executes it. The worker moves it to completed, failed or timed_out;
    a cancel to cancelling; the sweeper to stale; recovery back to pending."""
    CANCELLING = "cancelling"
    """Cancel requested, not yet acknowledged. The worker moves it to cancelled;
    a forced cancel or force-kill moves it to cancelled or failed."""
    STALE = "stale"
    """No heartbeat for a while. Activity moves it back to running; a worker that was
    alive after all to completed or failed; the sweeper to timed_out or (re-queue) pending."""
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_active(self) -> bool:
        return self not in TERMINAL


class RunOrigin(str, enum.Enum):
    USER = "user"
    SYSTEM = "system"
    SCHEDULED = "scheduled"
    GROUP = "group"
    EVENT = "event"
    WEBHOOK = "webhook"


class LogLevel(str, enum.Enum):
    INFO = "INFO"
    WARN = "WARN"
    ERROR = "ERROR"


S = RunStatus

TERMINAL: frozenset[RunStatus] = frozenset({S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLED})
ACTIVE: frozenset[RunStatus] = frozenset(set(RunStatus) - TERMINAL)

TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    S.PENDING: frozenset({S.SUBMITTED, S.CANCELLED, S.FAILED}),
    S.SUBMITTED: frozenset({S.RUNNING, S.PENDING, S.CANCELLED, S.FAILED}),
    S.RUNNING: frozenset({S.COMPLETED, S.FAILED, S.TIMED_OUT, S.CANCELLING, S.STALE, S.PENDING}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
    S.STALE: frozenset({S.RUNNING, S.COMPLETED, S.TIMED_OUT, S.FAILED, S.CANCELLING, S.CANCELLED, S.PENDING}),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.TIMED_OUT: frozenset(),
    S.CANCELLED: frozenset(),
}

# The log event type recorded for each target status.
EVENT_TYPES: dict[RunStatus, str] = {
    S.PENDING: "requeued",
    S.SUBMITTED: "queued",
    S.RUNNING: "start",
    S.CANCELLING: "cancel_requested",
    S.STALE: "stale",
    S.COMPLETED: "complete",
    S.FAILED: "error",
    S.TIMED_OUT: "timed_out",
    S.CANCELLED: "cancelled",
}


def allowed(from_status: RunStatus, to_status: RunStatus) -> bool:
    return to_status in TRANSITIONS[from_status]


def sources_of(to_status: RunStatus) -> list[RunStatus]:
    """The statuses a run may be in for a change to ``to_status`` to apply."""
    return [s for s, targets in TRANSITIONS.items() if to_status in targets]
