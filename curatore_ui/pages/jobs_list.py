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
    ("stale", "Stale", "triangle-alert", "amber"),
)
STATUS_OPTIONS = ["all", "pending", "running", "completed", "failed", "cancelled", "stale"]
ORIGIN_OPTIONS = ["all", "user", "system", "scheduled", "group", "event", "webhook"]
SORT_OPTIONS = (("created:desc", "Newest first"), ("created:asc", "Oldest first"), ("priority:desc", "Priority"),
                ("duration:desc", "Longest first"), ("duration:asc", "Shortest first"), ("status:asc", "Status"),
                ("type:asc", "Type"))


def _card(key: str, label: str, icon: str, color: str) -> rx.Component:
    active = S.active_card == key
    return rx.card(
        rx.hstack(
            rx.icon(icon, size=20, color=f"var(--{color}-9)"),
            rx.vstack(rx.text(label, size="1", color_scheme="gray"),
                      rx.heading(S.cards[key].to_string(), size="6", data_testid=f"card-{key}"), spacing="0"),
            rx.spacer(),
            rx.cond(active, rx.icon("filter", size=14, color=f"var(--{color}-9)")),
            align="center", spacing="3", width="100%",
        ),
        as_child=False, flex="1", min_width="9rem", cursor="pointer", role="button",
        title=rx.cond(active, "Showing only these runs: click to show all", f"Show only: {label}"),
        on_click=S.pick_card(key), data_testid=f"card-button-{key}", data_active=active,
        border=rx.cond(active, f"2px solid var(--{color}-8)", "2px solid transparent"),
        _hover={"background": "var(--gray-a3)"},
    )


def _cards() -> rx.Component:
    return rx.hstack(*[_card(*c) for c in CARDS], spacing="3", width="100%", wrap="wrap")


def _tab(tab: rx.Var[TypeTab]) -> rx.Component:
    active = S.filters["type"] == tab.key
    return rx.button(
        rx.icon(tab.icon, size=14), tab.label,
        rx.badge(tab.count.to_string(), variant="soft", color_scheme=rx.cond(active, "indigo", "gray"), size="1"),
        variant=rx.cond(active, "soft", "ghost"), color_scheme=rx.cond(active, "indigo", "gray"), size="2",
        on_click=S.set_filter("type", tab.key), data_testid="type-tab", data_key=tab.key, data_active=active,
    )


def _select(key: str, options: list[str], placeholder: str) -> rx.Component:
    return rx.select(options, value=S.filters[key], on_change=lambda v: S.set_filter(key, v), size="2",
                     placeholder=placeholder, data_testid=f"filter-{key}")


def _search() -> rx.Component:
    """Enter applies it at once; typing applies it after a pause."""
    return rx.form(
        rx.input(rx.input.slot(rx.icon("search", size=14)), name="search", placeholder="Search name, id or config…",
                 value=S.filters["search"], on_change=S.search_typed, debounce_timeout=500,
                 size="2", width="100%", data_testid="search", type="search"),
        on_submit=S.search, reset_on_submit=False, width="18rem", max_width="100%",
    )


def _filters() -> rx.Component:
    return rx.hstack(
        _search(),
        rx.hstack(rx.text("Status", size="1", color_scheme="gray"), _select("status", STATUS_OPTIONS, "Status"),
                  align="center", spacing="2"),
        rx.hstack(rx.text("Origin", size="1", color_scheme="gray"), _select("origin", ORIGIN_OPTIONS, "Origin"),
                  align="center", spacing="2"),
        rx.hstack(
            rx.text("From", size="1", color_scheme="gray"),
            rx.input(type="date", value=S.filters["from"], on_change=lambda v: S.set_filter("from", v), size="2",
                     data_testid="filter-from"),
            rx.text("to", size="1", color_scheme="gray"),
            rx.input(type="date", value=S.filters["to"], on_change=lambda v: S.set_filter("to", v), size="2",
                     data_testid="filter-to"),
            align="center", spacing="2"),
        rx.spacer(),
        rx.hstack(
            rx.text("Sort", size="1", color_scheme="gray"),
            rx.select.root(
                rx.select.trigger(data_testid="sort-select"),
                rx.select.content(*[rx.select.item(label, value=value) for value, label in SORT_OPTIONS]),
                value=S.filters["sort"] + ":" + S.filters["dir"], size="2",
                on_change=S.sort_choice,
            ),
            align="center", spacing="2"),
        align="center", spacing="3", width="100%", wrap="wrap",
    )


def _bulk_bar() -> rx.Component:
    return rx.hstack(
        rx.cond(S.can_act, rx.hstack(
            rx.checkbox("Select page", on_change=S.toggle_page, size="1", data_testid="select-page"),
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
            align="center")),
        rx.spacer(),
        rx.cond(S.notice != "", rx.text(S.notice, size="1", color_scheme="gray", data_testid="list-notice")),
        align="center", width="100%",
    )


def _row_actions(row: rx.Var[RunRow]) -> rx.Component:
    return rx.hstack(
        rx.cond(row.can_cancel & row.may_cancel,
                rx.icon_button(rx.icon("circle-stop", size=14), size="1", variant="ghost", color_scheme="red",
                               title="Cancel", aria_label="Cancel", on_click=S.cancel_one(row.id),
                               data_testid="row-cancel")),
        rx.cond(row.can_retry & row.may_retry,
                rx.cond(row.retry_refused == "",
                        rx.icon_button(rx.icon("rotate-ccw", size=14), size="1", variant="ghost", title="Retry",
                                       aria_label="Retry", on_click=S.retry_one(row.id), data_testid="row-retry"),
                        rx.tooltip(rx.box(rx.icon_button(rx.icon("rotate-ccw", size=14), size="1", variant="ghost",
                                                         disabled=True, aria_label="Retry (not allowed)")),
                                   content=row.retry_refused))),
        spacing="1", min_width="3.5rem",
    )


def _pager() -> rx.Component:
    return rx.hstack(
        rx.button("← Newer", on_click=S.prev_page, disabled=S.prev_cursors.length() == 0, variant="soft", size="1",
                  data_testid="page-prev"),
        rx.text(f"Page {S.page_number}", size="1", color_scheme="gray", data_testid="page-number"),
        rx.button("Older →", on_click=S.next_page, disabled=S.next_cursor == "", variant="soft", size="1",
                  data_testid="page-next"),
        justify="end", align="center", width="100%",
    )


def _empty() -> rx.Component:
    return rx.card(rx.vstack(
        rx.icon("inbox", size=28, color="var(--gray-8)"),
        rx.text("No jobs match.", color_scheme="gray"),
        rx.cond(S.can_submit, rx.vstack(
            rx.button(rx.icon("play", size=14), "Start sample jobs", on_click=S.start_samples),
            rx.text("or submit one: curatore submit extraction --config '{\"path\": \"README.md\"}'",
                    size="1", color_scheme="gray", font_family="var(--code-font-family)"),
            align="center")),
        align="center", padding="2rem"), width="100%")


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
            run_table(S.rows, selectable=S.can_act, selected=S.selected, on_toggle=S.toggle,
                      actions=_row_actions, sort=S.filters["sort"], direction=S.filters["dir"], on_sort=S.sort_by),
            _empty(),
        ),
        _pager(),
        actions=rx.cond(S.can_submit, rx.button(rx.icon("play", size=14), "Start sample jobs", variant="soft",
                                                size="2", on_click=S.start_samples, data_testid="start-samples")),
    )
