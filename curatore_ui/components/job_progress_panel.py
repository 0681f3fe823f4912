"""Progress panels for resource pages (the seed's JobProgressPanel and JobProgressPanelByType).

    job_progress_panel("asset", AssetState.asset_id, on_complete=AssetState.reload)

Hidden while no active job works on the resource; otherwise one card per job with its label, name,
percent, phase, "started N ago", current/total, current item, a child grid with its own bar for group
parents, and a link to the job's page. Panels are independent: each has its own key in
``ActiveJobsState.panels``.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import reflex as rx

from curatore_ui.components.live_time import time_ago
from curatore_ui.components.progress_bar import progress_bar
from curatore_ui.components.status_badge import status_badge
from curatore_ui.state.active_jobs import CALLBACKS, ActiveJobsState, PanelJob

Variant = Literal["default", "compact"]


def panel_key(resource_type: str, resource_id: Any, job_type: str = "") -> str:
    """A key that is the same in the compiled page and in the backend process."""
    ident = resource_id._js_expr if isinstance(resource_id, rx.Var) else str(resource_id)
    return "p" + hashlib.sha1(f"{resource_type}|{ident}|{job_type}".encode()).hexdigest()[:12]


def _child_grid(job: rx.Var[PanelJob]) -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.badge(f"{job.children_total} children", variant="soft", color_scheme="gray"),
            rx.badge(f"{job.children_completed} completed", variant="soft", color_scheme="green",
                     data_testid="panel-children-completed"),
            rx.badge(f"{job.children_failed} failed", variant="soft", color_scheme="red"),
            spacing="2",
        ),
        rx.progress(value=job.children_percent.to(int), max=100, size="1", color_scheme="green", width="100%"),
        spacing="1", width="100%",
    )


def _job_card(job: rx.Var[PanelJob], variant: Variant) -> rx.Component:
    header = rx.hstack(
        rx.icon(job.icon, size=16, color=f"var(--{job.color}-9)"),
        rx.text(job.label, size="2", weight="medium"),
        rx.text(job.name, size="2", color_scheme="gray", trim="both", max_width="20rem", overflow="hidden",
                text_overflow="ellipsis", white_space="nowrap", min_width="0", flex_shrink="1"),
        rx.spacer(),
        status_badge(job.status, size="1"),
        rx.link("Details", href=job.href, size="1"),
        align="center", width="100%",
    )
    body = [progress_bar(job.percent, job.has_percent, job.phase, job.counter, job.color, size="1")]
    if variant == "default":
        body.append(rx.hstack(
            rx.text(rx.cond(job.started_iso != "", rx.fragment("started ", time_ago(job.started_iso)), "queued"),
                    size="1", color_scheme="gray"),
            rx.spacer(),
            rx.text(job.current_item, size="1", color_scheme="gray", data_testid="panel-current-item"),
            width="100%",
        ))
        body.append(rx.cond(job.is_parent, _child_grid(job)))
    return rx.box(rx.vstack(header, *body, spacing="2", width="100%"), data_testid="panel-job", data_run_id=job.id,
                  padding_y="0.25rem")


def job_progress_panel(
    resource_type: str,
    resource_id: Any,
    variant: Variant = "default",
    on_complete: Any = None,
    job_type: str = "",
) -> rx.Component:
    key = panel_key(resource_type, resource_id, job_type)
    if on_complete is not None:
        CALLBACKS[key] = on_complete
    jobs = ActiveJobsState.panels.get(key, []).to(list[PanelJob])
    panel = rx.box(
        rx.cond(
            jobs.length() > 0,
            rx.card(rx.vstack(rx.foreach(jobs, lambda j: _job_card(j, variant)), spacing="3", width="100%"),
                    width="100%", size="1" if variant == "compact" else "2"),
        ),
        on_mount=ActiveJobsState.track(key, resource_type, resource_id, job_type),
        key=resource_id,  # a new resource remounts the panel, which then tracks it
        width="100%",
        data_testid="job-progress-panel",
        data_panel_key=key,
    )
    if isinstance(resource_id, rx.Var):  # mount (and track) once the page knows its resource
        return rx.cond(resource_id.to(str) != "", panel)
    return panel


def job_progress_panel_by_type(
    resource_id: Any,
    resource_type: str,
    job_type: str,
    variant: Variant = "default",
    on_complete: Any = None,
) -> rx.Component:
    """Only the jobs of one type working on the resource."""
    return job_progress_panel(resource_type, resource_id, variant, on_complete, job_type)


def is_resource_busy(resource_type: str, resource_id: Any, job_type: str = "") -> rx.Var[bool]:
    """True while a job works on the resource (for disabling a "start" button, say)."""
    return ActiveJobsState.panels.get(panel_key(resource_type, resource_id, job_type), []).to(
        list[PanelJob]).length() > 0
