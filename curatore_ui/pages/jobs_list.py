"""Jobs list: `/system/jobs` (every organization) and `/orgs/[slug]/jobs`."""

from __future__ import annotations

import reflex as rx

from curatore_ui.components.layout import layout
from curatore_ui.components.run_table import run_table
from curatore_ui.pages.jobs_list_state import JobsListState as S
from curatore_ui.pages.jobs_list_state import TypeTab
from curatore_ui.state.views import RunRow

CARDS = (
    ("pending", "Pending", "clock", "gray"),
    ("running", "Running", "loader", "blue"),
    ("done_24h", "Done · 24 h", "circle-check", "green"),
    ("failed_24h", "Failed · 24 h", "circle-x", "red"),
)
STATUS_OPTIONS = ["all", "pending", "running", "completed", "failed", "cancelled", "stale"]
ORIGIN_OPTIONS = ["all", "user", "system", "scheduled", "group", "event", "webhook"]


def _card(key: str, label: str, icon: str, color: str) -> rx.Component:
    return rx.card(
        rx.hstack(
            rx.icon(icon, size=20, color=f"var(--{color}-9)"),
            rx.vstack(rx.text(label, size="1", color_scheme="gray"),
                      rx.heading(S.cards[key].to_string(), size="6", data_testid=f"card-{key}"), spacing="0"),
            align="center", spacing="3",
        ),
        flex="1", min_width="10rem",
    )


def _cards() -> rx.Component:
    return rx.hstack(
        *[_card(*c) for c in CARDS],
        rx.cond(S.cards["stale"] > 0, _card("stale", "Stale", "triangle-alert", "amber")),
        spacing="3", width="100%", wrap="wrap",
    )


def _tab(tab: rx.Var[TypeTab]) -> rx.Component:
    active = S.filters["type"] == tab.key
    return rx.button(
        rx.icon(tab.icon, size=14), tab.label,
        rx.badge(tab.count.to_string(), variant="soft", color_scheme=rx.cond(active, "indigo", "gray"), size="1"),
        variant=rx.cond(active, "soft", "ghost"), color_scheme=rx.cond(active, "indigo", "gray"), size="2",
        on_click=S.set_filter("type", tab.key), data_testid="type-tab",
    )


def _select(key: str, options: list[str], placeholder: str) -> rx.Component:
    return rx.select(options, value=S.filters[key], on_change=lambda v: S.set_filter(key, v), size="2",
                     placeholder=placeholder, data_testid=f"filter-{key}")


def _filters() -> rx.Component:
    return rx.hstack(
        rx.input(rx.input.slot(rx.icon("search", size=14)), placeholder="Search name, id or config…",
                 default_value=S.filters["search"], on_blur=lambda v: S.set_filter("search", v),
                 size="2", width="18rem", data_testid="search"),
        rx.text("Status", size="1", color_scheme="gray"), _select("status", STATUS_OPTIONS, "Status"),
        rx.text("Origin", size="1", color_scheme="gray"), _select("origin", ORIGIN_OPTIONS, "Origin"),
        rx.text("From", size="1", color_scheme="gray"),
        rx.input(type="date", value=S.filters["from"], on_change=lambda v: S.set_filter("from", v), size="2"),
        rx.text("to", size="1", color_scheme="gray"),
        rx.input(type="date", value=S.filters["to"], on_change=lambda v: S.set_filter("to", v), size="2"),
        rx.spacer(),
        rx.text("Sort", size="1", color_scheme="gray"),
        rx.segmented_control.root(
            rx.segmented_control.item("Newest", value="created"),
            rx.segmented_control.item("Priority", value="priority"),
            value=S.filters["sort"], on_change=lambda v: S.set_filter("sort", v), size="1",
        ),
        align="center", spacing="2", width="100%", wrap="wrap",
    )


def _bulk_bar() -> rx.Component:
    return rx.hstack(
        rx.checkbox("Select page", on_change=S.toggle_page, size="1"),
        rx.cond(
            S.selected.length() > 0,
            rx.hstack(
                rx.text(f"{S.selected.length()} selected", size="2", data_testid="selected-count"),
                rx.button("Cancel selected", size="1", color_scheme="red", variant="soft", on_click=S.bulk_cancel,
                          data_testid="bulk-cancel"),
                rx.button("Retry selected", size="1", variant="soft", on_click=S.bulk_retry,
                          data_testid="bulk-retry"),
                align="center",
            ),
        ),
        rx.spacer(),
        rx.cond(S.notice != "", rx.text(S.notice, size="1", color_scheme="gray")),
        align="center", width="100%",
    )


def _row_actions(row: rx.Var[RunRow]) -> rx.Component:
    return rx.hstack(
        rx.cond(row.can_cancel, rx.icon_button(rx.icon("circle-stop", size=14), size="1", variant="ghost",
                                               color_scheme="red", title="Cancel", on_click=S.cancel_one(row.id))),
        rx.cond(row.can_retry, rx.icon_button(rx.icon("rotate-ccw", size=14), size="1", variant="ghost",
                                              title="Retry", on_click=S.retry_one(row.id))),
        spacing="1",
    )


def _pager() -> rx.Component:
    return rx.hstack(
        rx.button("← Newer", on_click=S.prev_page, disabled=S.prev_cursors.length() == 0, variant="soft", size="1"),
        rx.text(f"Page {S.page_number}", size="1", color_scheme="gray"),
        rx.button("Older →", on_click=S.next_page, disabled=S.next_cursor == "", variant="soft", size="1"),
        justify="end", align="center", width="100%",
    )


def page() -> rx.Component:
    return layout(
        "Jobs",
        _cards(),
        rx.hstack(rx.foreach(S.tabs, _tab), spacing="1", wrap="wrap", width="100%"),
        _filters(),
        rx.cond(S.error != "", rx.callout(S.error, color_scheme="red", icon="triangle-alert")),
        _bulk_bar(),
        rx.cond(
            S.rows.length() > 0,
            run_table(S.rows, selectable=True, selected=S.selected, on_toggle=S.toggle, actions=_row_actions),
            rx.card(rx.vstack(rx.icon("inbox", size=28, color="var(--gray-8)"),
                              rx.text("No jobs match.", color_scheme="gray"),
                              rx.button(rx.icon("play", size=14), "Start sample jobs", on_click=S.start_samples),
                              rx.text("or submit one: curatore submit extraction --config '{\"path\": \"README.md\"}'",
                                      size="1", color_scheme="gray", font_family="var(--code-font-family)"),
                              align="center", padding="2rem"), width="100%"),
        ),
        _pager(),
        actions=rx.button(rx.icon("play", size=14), "Start sample jobs", variant="soft", size="2",
                          on_click=S.start_samples, data_testid="start-samples"),
    )
