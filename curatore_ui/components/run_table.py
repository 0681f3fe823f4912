"""Tables of runs: the jobs list and a parent's children."""

from __future__ import annotations

from collections.abc import Callable

import reflex as rx

from curatore_ui.components.status_badge import status_badge
from curatore_ui.state.views import RunRow


def _name_cell(row: rx.Var[RunRow]) -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.icon(row.icon, size=16, color=f"var(--{row.color}-9)"),
            rx.link(row.name, href=row.href, weight="medium", size="2", data_testid="run-link"),
            rx.cond(row.is_parent, rx.badge(rx.icon("git-fork", size=12), f"{row.children_done}/{row.children_total}",
                                            variant="outline", size="1", title="children completed / total")),
            rx.cond(row.parent_id != "", rx.badge("child", variant="outline", size="1", color_scheme="gray")),
            align="center", spacing="2",
        ),
        rx.text(row.label, " · ", row.short_id, size="1", color_scheme="gray"),
        spacing="0",
    )


def _progress_cell(row: rx.Var[RunRow]) -> rx.Component:
    return rx.cond(
        (row.status == "pending") | (row.status == "submitted"),
        rx.cond(row.queue_position > 0,
                rx.text(f"#{row.queue_position} in queue ", row.eta, size="1", color_scheme="gray",
                        data_testid="queue-position"),
                rx.fragment()),
        rx.vstack(
            rx.cond(row.has_percent, rx.progress(value=row.percent.to(int), max=100, size="1",
                                                 color_scheme=row.color, width="8rem")),
            rx.text(rx.cond(row.phase != "", row.phase, ""), " ", row.counter, size="1", color_scheme="gray"),
            spacing="1",
        ),
    )


def run_table(
    rows: rx.Var[list[RunRow]],
    *,
    selectable: bool = False,
    selected: rx.Var[list[str]] | None = None,
    on_toggle: Callable[[rx.Var[str]], rx.EventSpec] | None = None,
    actions: Callable[[rx.Var[RunRow]], rx.Component] | None = None,
    compact: bool = False,
) -> rx.Component:
    def row(r: rx.Var[RunRow]) -> rx.Component:
        cells = []
        if selectable and selected is not None and on_toggle is not None:
            cells.append(rx.table.cell(rx.checkbox(checked=selected.contains(r.id), on_change=lambda _: on_toggle(r.id),
                                                   data_testid="row-select")))
        cells += [
            rx.table.cell(_name_cell(r)),
            rx.table.cell(status_badge(r.status)),
            rx.table.cell(_progress_cell(r)),
        ]
        if not compact:
            cells += [rx.table.cell(rx.text(r.org_slug, size="1")), rx.table.cell(rx.text(r.origin, size="1")),
                      rx.table.cell(rx.text(r.created_ago, size="1", title=r.created))]
        cells.append(rx.table.cell(rx.text(r.duration, size="1")))
        if actions is not None:
            cells.append(rx.table.cell(actions(r)))
        return rx.table.row(*cells, data_testid="run-row", data_run_id=r.id, data_status=r.status,
                            align="center")

    heads = ([""] if selectable else []) + ["Job", "Status", "Progress"]
    heads += ([] if compact else ["Org", "Origin", "Created"]) + ["Duration"]
    if actions is not None:
        heads.append("")
    return rx.table.root(
        rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in heads])),
        rx.table.body(rx.foreach(rows, row)),
        width="100%",
        variant="surface",
        size="1",
    )


def child_table(rows: rx.Var[list[RunRow]]) -> rx.Component:
    return run_table(rows, compact=True)
