"""Run groups: a parent run and its children, counted atomically, finalized exactly once.

A group is *sealed* when its parent has finished spawning children. It ends when
it is sealed and every expected child has ended; the single UPDATE that sets
``finalized_at`` where it was NULL decides which transaction finalizes it, and
that transaction also ends the parent run and fires the completion hook. So
both happen exactly once, however many workers finish children at once.

A group's ``completion_hook`` names a :class:`GroupKind`: what the group does beyond
counting. A kind can act on each child's end (in that child's terminal transaction,
before the group may end: a pipeline spawns its next stage there), end the parent its
own way, and run a hook once the group has ended.
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from backend.db.engine import in_transaction
from backend.db.models import Run, RunGroup
from backend.db.states import LogLevel, RunOrigin, RunStatus
from backend.db.types import utcnow
from backend.runs import service

S = RunStatus
GroupHook = Callable[[Session, RunGroup], None]
ChildHook = Callable[[Session, RunGroup, uuid.UUID, RunStatus], None]


@dataclass(frozen=True)
class GroupKind:
    on_finalized: GroupHook | None = None  # once, in the finalizing transaction, after the parent ended
    on_child_ended: ChildHook | None = None  # in each child's terminal transaction, before the group may end
    end_parent: GroupHook | None = None  # instead of the default ending of the parent (by the counts)


_kinds: dict[str, GroupKind] = {}


def group_hook(name: str) -> Callable[[GroupHook], GroupHook]:
    """Register a completion hook: ``fn(session, group)`` runs in the finalizing transaction."""

    def decorate(fn: GroupHook) -> GroupHook:
        _kinds[name] = GroupKind(on_finalized=fn)
        return fn

    return decorate


def kind_of(name: str | None) -> GroupKind | None:
    """The kind a ``completion_hook`` names: a name given to :func:`group_hook` in this process, or
    ``"module:attribute"`` naming a GroupKind, imported on first use (any process may end a child)."""
    if name is None:
        return None
    kind = _kinds.get(name)
    if kind is None and ":" in name:
        module, _, attribute = name.partition(":")
        try:
            kind = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            kind = None
        if isinstance(kind, GroupKind):
            _kinds[name] = kind
    if not isinstance(kind, GroupKind):
        raise ValueError(f"unknown group hook {name!r}")
    return kind


def create_group(
    parent_run_id: uuid.UUID,
    *,
    hook: str | None = None,
    hook_config: dict[str, Any] | None = None,
    session: Session | None = None,
) -> RunGroup:
    """The parent's group: made now, or, when the parent already has one (it is executed again after its worker
    was lost), that one, which it continues. A parent has one group (a unique index holds it)."""
    kind_of(hook)  # an unknown hook raises before anything is written

    def write(s: Session) -> RunGroup:
        existing = s.execute(select(RunGroup).where(RunGroup.parent_run_id == parent_run_id)).scalar_one_or_none()
        if existing is not None:
            return existing
        parent = s.get(Run, parent_run_id)
        if parent is None:
            raise ValueError(f"no run {parent_run_id}")
        group = RunGroup(
            organization_id=parent.organization_id,
            parent_run_id=parent_run_id,
            completion_hook=hook,
            hook_config=hook_config or {},
        )
        s.add(group)
        s.flush()
        s.execute(update(Run).where(Run.id == parent_run_id).values(is_group_parent=True))
        return group

    if session is not None:
        return write(session)
    try:
        return in_transaction(write)
    except IntegrityError:  # another execution of the same parent made it first: continue that one
        group = group_of(parent_run_id)
        if group is None:
            raise
        return group


def group_of(parent_run_id: uuid.UUID, session: Session | None = None) -> RunGroup | None:
    return in_transaction(
        lambda s: s.execute(select(RunGroup).where(RunGroup.parent_run_id == parent_run_id)).scalar_one_or_none(),
        session,
    )


def child_keys(group_id: uuid.UUID) -> dict[str, uuid.UUID]:
    """The group's children so far, by :func:`child_key` (a parent executed again spawns only what is missing)."""
    rows = in_transaction(lambda s: s.execute(select(Run.id, Run.run_type, Run.config)
                                              .where(Run.group_id == group_id)).all(), read_only=True)
    return {child_key(run_type, config): run_id for run_id, run_type, config in rows}


def child_key(run_type: str, config: dict[str, Any]) -> str:
    """What makes two children of one group the same child: their type and their (validated) config."""
    return f"{run_type}:{json.dumps(config, sort_keys=True, separators=(',', ':'), default=str)}"


def add_child(
    group_id: uuid.UUID,
    run_type: str,
    config: dict[str, Any],
    *,
    display_name: str | None = None,
    priority: int | None = None,
    session: Session | None = None,
) -> Run:
    """Create a pending child run and count it as expected, in one transaction."""

    def write(s: Session) -> Run:
        group = s.get(RunGroup, group_id)
        if group is None:
            raise ValueError(f"no run group {group_id}")
        if group.finalized_at is not None:
            raise ValueError(f"run group {group_id} has already ended")
        parent = s.get(Run, group.parent_run_id)
        child = service.create_run(  # first: a refused child (invalid config, duplicate) writes nothing
            run_type,
            config,
            organization_id=group.organization_id,
            origin=RunOrigin.GROUP,
            priority=parent.priority if priority is None and parent else priority,
            created_by=parent.created_by if parent else None,
            display_name=display_name,
            parent_run_id=group.parent_run_id,
            group_id=group_id,
            session=s,
        )
        s.execute(update(RunGroup).where(RunGroup.id == group_id).values(expected=RunGroup.expected + 1))
        return child

    return in_transaction(write, session)


_COUNTER = {S.COMPLETED: "completed", S.FAILED: "failed", S.TIMED_OUT: "failed", S.CANCELLED: "cancelled"}


@service.on_terminal
def _run_ended(session: Session, run_id: uuid.UUID, outcome: RunStatus, route: Any) -> None:
    if route.group_id is not None:
        child_finished(session, route.group_id, run_id, outcome)
    if getattr(route, "is_group_parent", False):
        _seal_when_parent_ended(session, run_id)


def _seal_when_parent_ended(session: Session, parent_run_id: uuid.UUID) -> None:
    """A parent that ended before sealing its group (failed, cancelled, timed out by recovery after its worker
    was lost, force-killed) spawns nothing more: its group is sealed in the same transaction, so it still ends,
    once, with its last child (the parent keeps its own status)."""
    group_id = session.execute(select(RunGroup.id).where(RunGroup.parent_run_id == parent_run_id,
                                                         RunGroup.sealed.is_(False))).scalar_one_or_none()
    if group_id is not None:
        seal(group_id, session)


def child_finished(session: Session, group_id: uuid.UUID, run_id: uuid.UUID, outcome: RunStatus) -> None:
    """Count one ended child (called inside the child's terminal transition)."""
    column = getattr(RunGroup, _COUNTER[outcome])
    session.execute(update(RunGroup).where(RunGroup.id == group_id).values({column: column + 1}))
    hook = session.execute(select(RunGroup.completion_hook).where(RunGroup.id == group_id)).scalar_one()
    kind = kind_of(hook)
    if kind is not None and kind.on_child_ended is not None:
        group = session.get(RunGroup, group_id)
        session.refresh(group)
        kind.on_child_ended(session, group, run_id, outcome)
    _try_finalize(session, group_id)


def seal(group_id: uuid.UUID, session: Session | None = None) -> bool:
    """The parent has spawned every child; returns True if the group ended now."""

    def write(s: Session) -> bool:
        s.execute(update(RunGroup).where(RunGroup.id == group_id).values(sealed=True))
        parent_id = s.execute(select(RunGroup.parent_run_id).where(RunGroup.id == group_id)).scalar_one()
        # The parent's task has ended: no more heartbeats. It waits on its children without a lease,
        # so the sweeper leaves it alone (parents with active children are exempt).
        s.execute(update(Run).where(Run.id == parent_id).values(lease_expires_at=None))
        return _try_finalize(s, group_id)

    return in_transaction(write, session)


def outcome_of(completed: int, failed: int, cancelled: int) -> str:
    if failed == 0 and cancelled == 0:
        return "completed"
    if completed == 0:
        return "failed"
    return "partial"


def _try_finalize(session: Session, group_id: uuid.UUID) -> bool:
    g = session.execute(
        select(RunGroup.expected, RunGroup.completed, RunGroup.failed, RunGroup.cancelled, RunGroup.sealed).where(
            RunGroup.id == group_id
        )
    ).one()
    if not g.sealed or g.completed + g.failed + g.cancelled < g.expected:
        return False
    status = outcome_of(g.completed, g.failed, g.cancelled) if g.expected else "completed"
    won = session.execute(
        update(RunGroup)
        .where(RunGroup.id == group_id, RunGroup.finalized_at.is_(None))
        .values(status=status, finalized_at=utcnow())
    ).rowcount
    if won != 1:
        return False
    group = session.get(RunGroup, group_id)
    session.refresh(group)
    kind = kind_of(group.completion_hook)
    (kind.end_parent if kind is not None and kind.end_parent is not None else _end_parent)(session, group)
    if kind is not None and kind.on_finalized is not None:
        kind.on_finalized(session, group)
        session.execute(update(RunGroup).where(RunGroup.id == group_id).values(hook_fired_at=utcnow()))
    return True


def _end_parent(session: Session, group: RunGroup) -> None:
    counts = {"children": group.expected, "completed": group.completed, "failed": group.failed,
              "cancelled": group.cancelled, "group_status": group.status}
    parent = session.get(Run, group.parent_run_id)
    session.refresh(parent)
    results = (parent.results_summary or {}) | {"children": counts}
    status = RunStatus(parent.status)
    if status is S.CANCELLING:
        service.transition(session, parent.id, S.CANCELLED, "Cancelled; its children have ended",
                           level=LogLevel.WARN, values={"results_summary": results})
    elif status.is_terminal:
        return
    elif group.status == "failed":
        message = f"All {group.expected - group.completed} child runs failed or were cancelled"
        service.transition(session, parent.id, S.FAILED, message, level=LogLevel.ERROR,
                           values={"results_summary": results, "error_message": message})
    else:
        note = "" if group.status == "completed" else f" ({group.failed} failed, {group.cancelled} cancelled)"
        level = LogLevel.INFO if group.status == "completed" else LogLevel.WARN
        service.transition(session, parent.id, S.COMPLETED, f"All {group.expected} child runs ended{note}",
                           level=level, values={"results_summary": results})
