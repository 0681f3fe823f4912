"""State of the job detail page: one run, its log window, its children; live."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any
from urllib.parse import quote

import reflex as rx

from backend.errors import CuratoreError
from backend import actions
from backend.jobtypes.registry import get_registry
from backend.runs import listing, queries
from backend.db.states import RunStatus
from backend.validation import displayable
from curatore_ui.live import Watch, bridge, current_seq
from curatore_ui.state.session import principal_or_redirect
from curatore_ui.state.toasts import follow_my_runs
from curatore_ui.state.views import (
    SHOW_JSON_CHARS, LinkItem, LogLine, RunRow, counter_text, duration, iso, log_line, phase_label, pretty_json,
    route_params, run_href, run_row, ts,
)

LOG_WINDOW = 300
CHILD_WINDOW = 100


def _facts(pairs: list[tuple[str, Any]]) -> list[LinkItem]:
    return [LinkItem(label=k, name=displayable(str(v))) for k, v in pairs if v not in (None, "")]


def resource_href(href: str, name: str) -> str:
    """The registry's resource link with its id URL-encoded (an id may hold ``/``, ``?``, ``#`` or spaces)."""
    if name and href.endswith("/" + name):
        return href[: len(href) - len(name)] + quote(name, safe="")
    return href


def _input_assets(run: Any) -> list[str]:
    """Every asset a run works on: its input assets and the ``asset_id`` / ``asset_ids`` of its config."""
    config = run.config or {}
    found: list[str] = [str(a) for a in run.input_asset_ids or []]
    if isinstance(config.get("asset_id"), str):
        found.append(config["asset_id"])
    if isinstance(config.get("asset_ids"), list):
        found += [str(a) for a in config["asset_ids"]]
    return list(dict.fromkeys(found))[:200]


def _asset_names(organization_id: Any, ids: list[str]) -> dict[str, str]:
    from sqlalchemy import select

    from backend.db.engine import in_transaction
    from backend.db.models import Asset

    uuids = []
    for a in ids:
        try:
            uuids.append(uuid.UUID(a))
        except ValueError:
            continue
    if not uuids:
        return {}
    rows = in_transaction(lambda s: s.execute(select(Asset.id, Asset.filename).where(
        Asset.id.in_(uuids), Asset.organization_id == organization_id)).all(), read_only=True)
    return {str(i): name for i, name in rows}


def _related(run: Any, job_type: Any, slug: str, scoped_slug: str | None) -> list[LinkItem]:
    related = []
    if run.parent_run_id:
        related.append(LinkItem("Parent job", str(run.parent_run_id)[:8], run_href(run.parent_run_id, scoped_slug),
                                "git-branch", "gray"))
    if run.retry_of:
        related.append(LinkItem("Retry of", str(run.retry_of)[:8], run_href(run.retry_of, scoped_slug),
                                "rotate-ccw", "gray"))
    for retry in queries.list_runs(queries.RunFilter(retry_of=run.id), limit=5):
        related.append(LinkItem("Retried as", f"attempt {retry.attempt} · {str(retry.id)[:8]}",
                                run_href(retry.id, scoped_slug), "rotate-cw", "gray"))
    assets = _input_assets(run)
    names = _asset_names(run.organization_id, assets)
    if job_type and job_type.resource_link:
        link = job_type.resource_link(run.config or {}, slug)
        if link and not (link.href.split("/")[3:4] == ["assets"] and link.name in names):
            related.append(LinkItem(link.label, displayable(link.name),
                                    displayable(resource_href(link.href, link.name)), link.icon, link.color))
    for asset_id in assets:
        if asset_id in names:  # a stored asset of this organization: its page
            related.append(LinkItem("Asset", displayable(names[asset_id]), f"/orgs/{slug}/assets/{asset_id}",
                                    "file", "blue"))
    return related


def _snapshot(run_id: str, scoped_slug: str | None, principal: Any) -> dict[str, Any]:
    """Everything the page shows, read in one go (runs in a thread)."""
    run = actions.visible_run(principal, run_id)
    job_type = get_registry().find(run.run_type)
    slug = queries.org_slug(run.organization_id)
    group = queries.group_for(run.id)
    counts = listing.group_counts(group) if group else {}
    extra = listing.annotate([run])
    row = run_row(run, org_slug=slug, children=counts, scoped_slug=scoped_slug, principal=principal,
                  queue_position=extra.queue_positions.get(run.id, 0), eta_seconds=extra.etas.get(run.id))
    logs = queries.get_logs(run.id, after_id=0, limit=100_000)
    children = queries.list_runs(queries.RunFilter(parent_run_id=run.id), limit=CHILD_WINDOW) if group else []
    child_extra = listing.annotate(children) if children else None
    from backend import audit

    trail = [LinkItem(label=ts(e.at), name=displayable(f"{e.action} by {e.actor}")) for e in audit.for_run(run.id)]
    return {
        "audit": trail,
        "row": row,
        "run": run,
        "job_type": job_type,
        "slug": slug,
        "related": _related(run, job_type, slug, scoped_slug),
        "logs": logs[-LOG_WINDOW:],
        "hidden": max(len(logs) - LOG_WINDOW, 0),
        "children": [run_row(c, org_slug=slug, scoped_slug=scoped_slug, principal=principal,
                             children=child_extra.child_counts.get(c.id) if child_extra else None,
                             queue_position=child_extra.queue_positions.get(c.id, 0) if child_extra else 0)
                     for c in children],
    }


class JobDetailState(rx.State):
    live_seq: int = 0
    loading: bool = True
    not_found: str = ""
    scoped_slug: str = ""
    run: RunRow = RunRow()
    error_message: str = ""
    results: list[LinkItem] = []
    results_json: str = ""
    config_json: str = ""
    progress_json: str = ""
    timestamps: list[LinkItem] = []
    last_activity_iso: str = ""
    metadata: list[LinkItem] = []
    capabilities: list[LinkItem] = []
    related: list[LinkItem] = []
    audit: list[LinkItem] = []
    logs: list[LogLine] = []
    hidden_logs: int = 0
    children: list[RunRow] = []
    notice: str = ""
    _system_admin: bool = False  # server-side only: whether the log shows tracebacks

    def _reset(self) -> None:
        """Nothing of the run shown before survives a new load (another run, or one not found)."""
        self.run, self.error_message, self.results, self.results_json = RunRow(), "", [], ""
        self.config_json = self.progress_json = self.last_activity_iso = self.notice = ""
        self.timestamps, self.metadata, self.capabilities, self.related, self.audit = [], [], [], [], []
        self.logs, self.hidden_logs, self.children = [], 0, []

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        params = route_params(self.router.url.path)
        run_id = params.get("run_id", "")
        self.scoped_slug = params.get("slug", "")
        self.loading = True
        self._reset()
        seq = await asyncio.to_thread(current_seq)
        try:
            snap = await asyncio.to_thread(_snapshot, run_id, self.scoped_slug or None, principal)
        except CuratoreError as exc:
            self.not_found = exc.message
            self.loading = False
            bridge.watch(self.router.session.client_token, Watch(JobDetailState, since_seq=seq))  # follow nothing
            return None
        self.not_found = ""
        self._system_admin = principal.is_system_admin
        self._apply_snapshot(snap)
        self.logs = [log_line(e, self._system_admin) for e in snap["logs"]]
        self.hidden_logs = snap["hidden"]
        self.live_seq = seq
        self.loading = False
        await follow_my_runs(self, principal, open_run_id=self.run.id)
        bridge.watch(
            self.router.session.client_token,
            Watch(JobDetailState, run_id=self.run.id, parent_run_id=self.run.id, since_seq=seq,
                  visible_orgs=bridge.scope(principal)),
        )
        return None

    def _apply_snapshot(self, snap: dict[str, Any]) -> None:
        run, job_type = snap["run"], snap["job_type"]
        self.run = snap["row"]
        self.error_message = displayable(run.error_message or "")
        summary = displayable(run.results_summary or {})
        self.results = [LinkItem(label=k.replace("_", " "), name=str(v)) for k, v in summary.items()
                        if isinstance(v, (int, float, str, bool))]
        self.results_json = pretty_json(run.results_summary, SHOW_JSON_CHARS)
        self.config_json = pretty_json(run.config, SHOW_JSON_CHARS)
        self.progress_json = pretty_json(run.progress, SHOW_JSON_CHARS)
        # Duration and Last activity are drawn by the page, ticking in the browser; these are the fixed ones.
        self.timestamps = _facts([
            ("Created", ts(run.created_at)), ("Submitted", ts(run.submitted_at)), ("Started", ts(run.started_at)),
            ("Completed", ts(run.completed_at)), ("Cancel requested", ts(run.cancel_requested_at)),
        ])
        self.last_activity_iso = iso(run.last_activity_at)
        slug = snap["slug"]
        parent = ([LinkItem("Parent", str(run.parent_run_id)[:8], run_href(run.parent_run_id, self.scoped_slug or None))]
                  if run.parent_run_id else [])
        self.metadata = [
            *_facts([("Type", job_type.label if job_type else run.run_type), ("Run type", run.run_type),
                     ("Origin", self.run.origin)]),
            LinkItem("Organization", slug, f"/orgs/{quote(slug, safe='')}/jobs"),
            *parent,
            *_facts([("Queue", run.queue), ("Priority", run.priority),
                     ("Timeout", f"{job_type.timeout_seconds} s" if job_type else ""),
                     ("Attempt", run.attempt), ("Created by", run.created_by), ("Worker", run.worker_hostname),
                     ("Celery task", run.celery_task_id), ("Trace id", run.trace_id)]),
        ]
        caps = job_type.capabilities if job_type else None
        self.capabilities = [LinkItem(label=name, name="yes" if getattr(caps, name, False) else "no")
                             for name in ("cancel", "retry", "throttle", "boost")]
        self.related = snap["related"]
        self.audit = snap["audit"]
        self.children = snap["children"]

    async def apply_live(self, events: list[dict[str, Any]]) -> list[Any] | None:
        mine = [e for e in events if e["run_id"] == self.run.id]
        for event in mine:
            payload = event["payload"]
            if event["kind"] == "progress":
                self._apply_progress(payload["progress"])
            logged = payload.get("event")
            if logged and (not self.logs or logged["id"] > self.logs[-1].id):
                self.logs.append(log_line(logged, self._system_admin))
                if logged.get("created_at"):
                    self.last_activity_iso = iso(_parse(logged["created_at"]))
        if len(self.logs) > LOG_WINDOW:
            self.hidden_logs += len(self.logs) - LOG_WINDOW
            self.logs = self.logs[-LOG_WINDOW:]
        needs_refresh = any(e["kind"] in ("status", "created") for e in events)
        if needs_refresh:
            principal = await self._principal()
            if principal is not None:
                snap = await asyncio.to_thread(_snapshot, self.run.id, self.scoped_slug or None, principal)
                self._apply_snapshot(snap)
        return None

    def _apply_progress(self, progress: dict[str, Any]) -> None:
        progress = displayable(progress)
        percent = progress.get("percent")
        self.run = dataclasses.replace(
            self.run,
            percent=float(percent or 0.0),
            has_percent=percent is not None,
            phase=progress.get("phase") or "",
            phase_label=phase_label(progress.get("phase") or ""),
            counter=counter_text(progress),
            current_item=progress.get("current_item") or "",
        )
        self.progress_json = pretty_json(progress, SHOW_JSON_CHARS)

    async def _principal(self) -> Any:
        return (await principal_or_redirect(self))[0]

    async def _act(self, action: Any, done: str) -> Any:
        principal = await self._principal()
        try:
            result = await asyncio.to_thread(action, principal, self.run.id)
        except CuratoreError as exc:
            self.notice = exc.message
            return None
        self.notice = done.format(result=getattr(result, "value", result))
        return result

    @rx.event
    async def cancel(self) -> None:
        await self._act(actions.cancel, "Cancel requested ({result})")

    @rx.event
    async def retry(self):  # type: ignore[no-untyped-def]
        """Retry, then go to the new run's page (its own URL, loaded afresh)."""
        new = await self._act(actions.retry, "Retry started")
        return rx.redirect(run_href(new.id, self.scoped_slug or None)) if new is not None else None

    @rx.event
    async def force_kill(self) -> None:
        await self._act(actions.force_kill, "Force-killed")

    @rx.event
    async def boost(self) -> None:
        await self._act(actions.boost, "Boosted to priority {result}")

    @rx.var
    def is_active(self) -> bool:
        return self.run.status not in [s.value for s in RunStatus if s.is_terminal]


def _parse(value: str) -> Any:
    from datetime import datetime

    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
