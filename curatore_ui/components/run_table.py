"""Tables of runs: the jobs list, a parent's children, a resource's runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import reflex as rx

from curatore_ui.components.live_time import ticking_duration, time_ago
from curatore_ui.components.progress_bar import bar
from curatore_ui.components.status_badge import status_badge
from curatore_ui.state.views import RunRow

WIDE_ONLY = rx.breakpoints(initial="none", lg="table-cell")  # Org and Origin: from 1280 px
# header -> the sort column it sets (the jobs list sorts by these)
SORTABLE = {"Job": "type", "Status": "status", "Created": "created", "Duration": "duration"}


def _name_cell(row: rx.Var[RunRow]) -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.icon(row.icon, size=16, color=f"var(--{row.color}-9)", flex_shrink="0"),
            rx.link(row.name, href=row.href, weight="medium", size="2", data_testid="run-link",
                    overflow_wrap="break-word", min_width="0"),
            rx.cond(row.is_parent, rx.badge(rx.icon("git-fork", size=12), f"{row.children_done}/{row.children_total}",
                                            variant="outline", size="1", title="children completed / total",
                                            data_testid="child-count")),
            rx.cond(row.parent_id != "", rx.badge("child", variant="outline", size="1", color_scheme="gray")),
            align="center", spacing="2",
        ),
        rx.text(row.label, " · ", row.short_id, size="1", color_scheme="gray"),
        spacing="0", min_width="13rem",
    )


def _progress_cell(row: rx.Var[RunRow]) -> rx.Component:
    queued = (row.status == "pending") | (row.status == "submitted")
    active = queued | (row.status == "running") | (row.status == "cancelling") | (row.status == "stale")
    return rx.cond(
        queued,
        rx.cond(row.queue_position > 0,
                rx.text(f"#{row.queue_position} in queue ", row.eta, size="1", color_scheme="gray",
                        data_testid="queue-position"),
                rx.text("queued", size="1", color_scheme="gray")),
        rx.vstack(
            rx.cond(active, rx.box(bar(row.percent, row.has_percent, row.color, "1"), width="8rem")),
            rx.text(row.phase_label, rx.cond((row.phase_label != "") & (row.counter != ""), " · ", ""), row.counter,
                    size="1", color_scheme="gray", data_testid="row-progress-text"),
            spacing="1",
        ),
    )


def _header(label: str, sort: Any, direction: Any, on_sort: Any) -> rx.Component:
    column = SORTABLE.get(label)
    if on_sort is None or column is None:
        return rx.table.column_header_cell(rx.text(label, size="1", weight="medium"),
                                           display=WIDE_ONLY if label in ("Org", "Origin") else None)
    active = sort == column
    arrow = rx.cond(active, rx.cond(direction == "asc", rx.icon("arrow-up", size=12), rx.icon("arrow-down", size=12)),
                    rx.icon("arrow-up-down", size=12, color="var(--gray-8)"))
    return rx.table.column_header_cell(
        rx.button(label, arrow, variant="ghost", size="1", color_scheme=rx.cond(active, "indigo", "gray"),
                  high_contrast=True, on_click=on_sort(column), data_testid=f"sort-{column}",
                  title=f"Sort by {label.lower()}"),
        aria_sort=rx.cond(active, rx.cond(direction == "asc", "ascending", "descending"), "none"),
    )


def run_table(
    rows: rx.Var[list[RunRow]],
    *,
    selectable: bool | rx.Var[bool] = False,
    selected: rx.Var[list[str]] | None = None,
    on_toggle: Callable[[rx.Var[str]], rx.EventSpec] | None = None,
    actions: Callable[[rx.Var[RunRow]], rx.Component] | None = None,
    compact: bool = False,
    sort: Any = None,
    direction: Any = None,
    on_sort: Any = None,
) -> rx.Component:
    """``selectable`` may be a Var (a viewer gets no checkboxes); ``sort``/``direction``/``on_sort`` make the
    Job, Status, Created and Duration headers sort the list."""
    with_select = selectable is not False and selected is not None and on_toggle is not None

    def maybe(component: rx.Component) -> rx.Component:
        return rx.cond(selectable, component) if isinstance(selectable, rx.Var) else component

    def row(r: rx.Var[RunRow]) -> rx.Component:
        cells = []
        if with_select:
            cells.append(maybe(rx.table.cell(rx.checkbox(checked=selected.contains(r.id),  # type: ignore[union-attr]
                                                         on_change=lambda _: on_toggle(r.id),  # type: ignore[misc]
                                                         data_testid="row-select"))))
        cells += [
            rx.table.cell(_name_cell(r)),
            rx.table.cell(status_badge(r.status)),
            rx.table.cell(_progress_cell(r)),
        ]
        if not compact:
            cells += [rx.table.cell(rx.text(r.org_slug, size="1"), display=WIDE_ONLY),
                      rx.table.cell(rx.text(r.origin, size="1"), display=WIDE_ONLY),
                      rx.table.cell(rx.text(time_ago(r.created_iso), size="1", title=r.created,
                                            data_testid="row-created", white_space="nowrap"))]
        cells.append(rx.table.cell(rx.text(ticking_duration(r.started_iso, r.completed_iso, r.duration), size="1",
                                           data_testid="row-duration", white_space="nowrap")))
        if actions is not None:
            cells.append(rx.table.cell(actions(r)))
        return rx.table.row(*cells, data_testid="run-row", data_run_id=r.id, data_status=r.status,
                            align="center")

    heads: list[rx.Component] = []
    if with_select:
        heads.append(maybe(rx.table.column_header_cell("", width="2rem")))
    names = ["Job", "Status", "Progress"] + ([] if compact else ["Org", "Origin", "Created"]) + ["Duration"]
    heads += [_header(h, sort, direction, on_sort) for h in names]
    if actions is not None:
        heads.append(rx.table.column_header_cell("", width="4rem"))
    return rx.box(
        rx.table.root(
            rx.table.header(rx.table.row(*heads)),
            rx.table.body(rx.foreach(rows, row)),
            width="100%",
            variant="surface",
            size="1",
        ),
        width="100%", overflow_x="auto",
    )


def child_table(rows: rx.Var[list[RunRow]]) -> rx.Component:
    return run_table(rows, compact=True)
