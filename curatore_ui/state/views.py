"""Plain data the pages show, built from engine records by pure functions.

States hold these (small windows of them), never ORM objects. Every builder passes what it takes from a stored
record through :func:`backend.validation.displayable`, so a row written before the input checks (a lone
surrogate, say) is shown with U+FFFD instead of breaking the page's state update for everyone.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from typing import Any

from backend.actions import shown_log_context
from backend.db.models import Run, RunLogEvent
from backend.jobtypes.registry import get_registry
from backend.db.states import RunStatus
from backend.validation import displayable, size_text

SHOW_JSON_CHARS = 64 * 1024  # of a config or results shown as raw JSON: more is cut, with a note


@dataclasses.dataclass
class RunRow:
    id: str = ""
    short_id: str = ""
    run_type: str = ""
    label: str = ""
    icon: str = "box"
    color: str = "gray"
    name: str = ""
    status: str = ""
    origin: str = ""
    priority: int = 2
    percent: float = 0.0
    has_percent: bool = False
    phase: str = ""
    phase_label: str = ""  # "Detecting deletions": for people; phase stays the registry's name
    current_item: str = ""
    counter: str = ""
    created: str = ""
    created_ago: str = ""
    created_iso: str = ""  # ISO timestamps: the browser computes "ago" and running durations from these
    started_iso: str = ""
    completed_iso: str = ""
    duration: str = ""
    org_slug: str = ""
    href: str = ""
    parent_id: str = ""
    is_parent: bool = False
    children_total: int = 0
    children_done: int = 0
    children_failed: int = 0
    queue_position: int = 0
    eta: str = ""
    error: str = ""
    can_cancel: bool = False
    can_retry: bool = False
    can_boost: bool = False
    can_kill: bool = False
    # what the signed-in person's role allows on this run (backend.auth.access decides; see permissions.py)
    may_cancel: bool = False
    may_retry: bool = False
    may_boost: bool = False
    may_kill: bool = False
    retry_refused: str = ""  # the role allows retries, but not of this type: why (a disabled button's tooltip)


@dataclasses.dataclass
class LogLine:
    id: int = 0
    time: str = ""
    level: str = "INFO"
    event_type: str = ""
    message: str = ""
    context: str = ""
    has_context: bool = False


@dataclasses.dataclass
class LinkItem:
    label: str = ""
    name: str = ""
    href: str = ""
    icon: str = "link"
    color: str = "gray"


def ts(value: datetime | str | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return ""
    seconds = int(((now or datetime.now(timezone.utc)) - value).total_seconds())
    if seconds < 5:
        return "just now"
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def duration(start: datetime | None, end: datetime | None, now: datetime | None = None) -> str:
    if start is None:
        return ""
    seconds = max(0.0, ((end or now or datetime.now(timezone.utc)) - start).total_seconds())
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def pretty_json(value: Any, limit: int | None = None) -> str:
    """Indented JSON of a stored value (``""`` for none), cut after ``limit`` characters with a note that
    says how much there was: a huge stored config must not be pushed whole to every browser that opens it."""
    if value in (None, {}):
        return ""
    text = json.dumps(displayable(value), indent=2, sort_keys=True, default=str)
    if limit is None or len(text) <= limit:
        return text
    return (f"{text[:limit]}\n\u2026 (cut: {size_text(len(text.encode()))} in all; "
            f"the first {size_text(limit)} are shown)")


def iso(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).isoformat() if value else ""


def phase_label(phase: str) -> str:
    """A registry phase name for people: ``detecting_deletions`` -> ``Detecting deletions``."""
    text = phase.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def counter_text(progress: dict[str, Any]) -> str:
    current, total = progress.get("current"), progress.get("total")
    if total is None:
        return ""
    unit = progress.get("unit") or ""
    return f"{_num(current)} / {_num(total)} {unit}".strip()


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def run_href(run_id: Any, org_slug: str | None = None) -> str:
    return f"/orgs/{org_slug}/jobs/{run_id}" if org_slug else f"/system/jobs/{run_id}"


def run_row(
    run: Run,
    *,
    org_slug: str = "",
    children: dict[str, int] | None = None,
    queue_position: int = 0,
    eta_seconds: float | None = None,
    scoped_slug: str | None = None,
    principal: Any = None,
) -> RunRow:
    from curatore_ui.state.permissions import run_permissions

    job_type = get_registry().find(run.run_type)
    status = RunStatus(run.status)
    progress = run.progress or {}
    percent = progress.get("percent")
    children = children or {}
    caps = job_type.capabilities if job_type else None
    return RunRow(**displayable(dict(
        id=str(run.id),
        short_id=str(run.id)[:8],
        run_type=run.run_type,
        label=job_type.label if job_type else run.run_type,
        icon=job_type.icon if job_type else "box",
        color=job_type.color if job_type else "gray",
        name=run.display_name or (job_type.label if job_type else run.run_type),
        status=status.value,
        origin=run.origin.value if hasattr(run.origin, "value") else str(run.origin),
        priority=run.priority,
        percent=float(100.0 if status is RunStatus.COMPLETED else (percent or 0.0)),
        has_percent=percent is not None or status is RunStatus.COMPLETED,
        phase=progress.get("phase") or "",
        phase_label=phase_label(progress.get("phase") or "") if status.is_active else "",
        current_item=progress.get("current_item") or "",
        counter=counter_text(progress) if status.is_active or progress.get("total") else "",
        created=ts(run.created_at),
        created_ago=ago(run.created_at),
        created_iso=iso(run.created_at),
        started_iso=iso(run.started_at),
        completed_iso=iso(run.completed_at) or ("" if status.is_active else iso(run.last_activity_at or run.created_at)),
        duration=duration(run.started_at, run.completed_at),
        org_slug=org_slug,
        href=run_href(run.id, scoped_slug),
        parent_id=str(run.parent_run_id) if run.parent_run_id else "",
        is_parent=run.is_group_parent,
        children_total=children.get("total", 0),
        children_done=children.get("completed", 0),
        children_failed=children.get("failed", 0) + children.get("cancelled", 0),
        queue_position=queue_position,
        eta=f"~{duration_text(eta_seconds)}" if eta_seconds is not None else "",
        error=run.error_message or "",
        can_cancel=bool(caps and caps.cancel and status.is_active and status is not RunStatus.CANCELLING),
        can_retry=bool(caps and caps.retry and status in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.CANCELLED)),
        can_boost=bool(caps and caps.boost and status in (RunStatus.PENDING, RunStatus.SUBMITTED) and run.priority < 4),
        can_kill=status in (RunStatus.RUNNING, RunStatus.CANCELLING, RunStatus.STALE),
        **run_permissions(principal, run.organization_id, job_type),
    )))


def log_line(event: RunLogEvent | dict[str, Any], system_admin: bool = False) -> LogLine:
    """One line of the job page's log; the traceback in its context only for a system admin."""
    if isinstance(event, dict):
        event = displayable(event)
        context = shown_log_context(event.get("context"), system_admin=system_admin)
        created = event.get("created_at")
        return LogLine(
            id=int(event["id"]),
            time=(ts(created)[11:19] if created else ""),
            level=event.get("level", "INFO"),
            event_type=event.get("event_type", ""),
            message=event.get("message", ""),
            context=pretty_json(context),
            has_context=bool(context),
        )
    return log_line({
        "id": event.id, "level": event.level.value, "event_type": event.event_type, "message": event.message,
        "context": event.context, "created_at": event.created_at.isoformat(),
    }, system_admin)


def route_params(path: str) -> dict[str, str]:
    """``slug``, ``section`` and ``id`` (and ``run_id`` on job pages) from a page's URL path:
    ``/orgs/<slug>/<section>/<id>`` or ``/system/<section>/<id>``."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    params: dict[str, str] = {}
    if len(parts) >= 2 and parts[0] == "orgs":
        params["slug"] = parts[1]
        parts = parts[2:]
    elif parts and parts[0] == "system":
        parts = parts[1:]
    if parts:
        params["section"] = parts[0]
    if len(parts) >= 2:
        params["id"] = parts[1]
        if parts[0] == "jobs":
            params["run_id"] = parts[1]
    return params
