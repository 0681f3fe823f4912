"""The active-jobs state any page can read (the seed's ``useActiveJobs()``): the active jobs of each
resource a panel on the page tracks, live through the bridge.

Each panel has a static key (from its arguments); ``panels[key]`` holds that panel's jobs, so several
panels on one page update independently. When a key's last active job ends, the panel's ``on_complete``
handler (registered at build time in ``CALLBACKS``) is sent to the client once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import reflex as rx

from backend.runs import listing
from curatore_ui.live import Watch, bridge, current_seq
from curatore_ui.state.session import principal_or_redirect
from curatore_ui.state.views import ago, counter_text, iso, phase_label, run_href

CALLBACKS: dict[str, Any] = {}  # panel key -> event handler fired when its last job ends


@dataclasses.dataclass
class PanelJob:
    id: str = ""
    label: str = ""
    name: str = ""
    icon: str = "box"
    color: str = "gray"
    status: str = ""
    percent: float = 0.0
    has_percent: bool = False
    phase: str = ""
    counter: str = ""
    current_item: str = ""
    started_ago: str = ""
    started_iso: str = ""  # the browser says "started 2 minutes ago" from this, ticking
    href: str = ""
    is_parent: bool = False
    children_total: int = 0
    children_completed: int = 0
    children_failed: int = 0
    children_percent: float = 0.0


def _panel_job(run: Any, counts: dict[str, int] | None, job_type: Any) -> PanelJob:
    progress = run.progress or {}
    counts = counts or {}
    total = counts.get("total", 0)
    done = counts.get("completed", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)
    return PanelJob(
        id=str(run.id), label=job_type.label if job_type else run.run_type,
        name=run.display_name or (job_type.label if job_type else run.run_type),
        icon=job_type.icon if job_type else "box", color=job_type.color if job_type else "gray",
        status=run.status.value, percent=float(progress.get("percent") or 0.0),
        has_percent=progress.get("percent") is not None, phase=phase_label(progress.get("phase") or ""),
        counter=counter_text(progress), current_item=progress.get("current_item") or "",
        started_ago=ago(run.started_at) if run.started_at else "queued", started_iso=iso(run.started_at),
        href=run_href(run.id),
        is_parent=run.is_group_parent, children_total=total, children_completed=counts.get("completed", 0),
        children_failed=counts.get("failed", 0) + counts.get("cancelled", 0),
        children_percent=round(100.0 * done / total, 1) if total else 0.0,
    )


def read_panel(resource_type: str, resource_id: str, job_type: str, orgs: list[str] | None) -> list[PanelJob]:
    from backend.jobtypes.registry import get_registry

    runs, counts = listing.active_for_resource(resource_type, resource_id, job_type or None)
    if orgs is not None:
        runs = [r for r in runs if str(r.organization_id) in orgs]
    registry = get_registry()
    return [_panel_job(r, counts.get(r.id), registry.find(r.run_type)) for r in runs]


class ActiveJobsState(rx.State):
    live_seq: int = 0
    panels: dict[str, list[PanelJob]] = {}
    specs: dict[str, list[str]] = {}  # key -> [resource_type, resource_id, job_type]
    _orgs: list[str] | None = None  # the organizations the client may see (None: all)

    @rx.event
    async def track(self, key: str, resource_type: str, resource_id: str, job_type: str = "") -> None:
        """A panel on the page asks to follow a resource (fired by the panel's on_mount)."""
        if not resource_id:
            return
        principal = (await principal_or_redirect(self))[0]
        if principal is None:
            return
        scope = bridge.scope(principal)
        self._orgs = None if scope is None else sorted(scope)
        seq = await asyncio.to_thread(current_seq)
        self.specs[key] = [resource_type, str(resource_id), job_type]
        self.panels[key] = await asyncio.to_thread(read_panel, resource_type, str(resource_id), job_type, self._orgs)
        self.live_seq = min(self.live_seq, seq) if self.live_seq else seq
        self._watch()

    def _watch(self) -> None:
        """Follow the tracked resources, and the children of the group parents the panels show."""
        resources = tuple(sorted({(t, i) for t, i, _ in self.specs.values()}))
        parents = tuple(sorted({j.id for jobs in self.panels.values() for j in jobs if j.is_parent}))
        bridge.watch(self.router.session.client_token,
                     Watch(ActiveJobsState, resources=resources, parent_run_ids=parents, since_seq=self.live_seq,
                           page=False, visible_orgs=None if self._orgs is None else frozenset(self._orgs)))

    async def apply_live(self, events: list[dict[str, Any]]) -> list[Any] | None:
        runs = [e["payload"]["run"] for e in events]
        touched = {(r.get("resource_type"), r.get("resource_id")) for r in runs}
        parents = {r.get("parent_run_id") for r in runs} - {None}
        fired = []
        for key, (resource_type, resource_id, job_type) in list(self.specs.items()):
            shown = {j.id for j in self.panels.get(key, [])}
            if (resource_type, resource_id) not in touched and not shown & parents:
                continue
            before = len(self.panels.get(key, []))
            self.panels[key] = await asyncio.to_thread(read_panel, resource_type, resource_id, job_type, self._orgs)
            if before and not self.panels[key] and key in CALLBACKS:
                fired.append(CALLBACKS[key])
        self._watch()
        return fired
