"""Job detail: `/system/jobs/[run_id]` and `/orgs/[slug]/jobs/[run_id]`."""

from __future__ import annotations

import reflex as rx

from curatore_ui.components.json_viewer import json_viewer
from curatore_ui.components.layout import layout
from curatore_ui.components.log_timeline import log_timeline
from curatore_ui.components.progress_bar import progress_bar
from curatore_ui.components.run_table import child_table
from curatore_ui.components.status_badge import status_badge
from curatore_ui.components.type_badge import type_badge
from curatore_ui.pages.job_detail_state import JobDetailState as S
from curatore_ui.state.views import LinkItem


def _card(title: str, *children: rx.Component, **props) -> rx.Component:  # type: ignore[no-untyped-def]
    return rx.card(rx.vstack(rx.heading(title, size="3"), *children, spacing="3", width="100%"), width="100%",
                   **props)


def _facts(items: rx.Var[list[LinkItem]]) -> rx.Component:
    return rx.data_list.root(
        rx.foreach(items, lambda f: rx.data_list.item(
            rx.data_list.label(f.label, min_width="7rem"), rx.data_list.value(rx.text(f.name, size="2")))),
        size="1",
    )


def _kill_button() -> rx.Component:
    return rx.alert_dialog.root(
        rx.alert_dialog.trigger(rx.button(rx.icon("skull", size=16), "Force kill", color_scheme="red",
                                          variant="outline", data_testid="kill-button")),
        rx.alert_dialog.content(
            rx.alert_dialog.title("Force-kill this run?"),
            rx.alert_dialog.description("Its process is killed at once and the run is marked failed. "
                                        "Work in progress is lost."),
            rx.hstack(rx.alert_dialog.cancel(rx.button("Keep it running", variant="soft", color_scheme="gray")),
                      rx.alert_dialog.action(rx.button("Force kill", color_scheme="red", on_click=S.force_kill,
                                                       data_testid="confirm-kill")),
                      justify="end", spacing="3", margin_top="1rem"),
        ),
    )


def _header() -> rx.Component:
    return rx.vstack(
        rx.link("← All jobs", href=rx.cond(S.scoped_slug != "", f"/orgs/{S.scoped_slug}/jobs", "/system/jobs"),
                size="2"),
        rx.hstack(
            type_badge(S.run.label, S.run.icon, S.run.color),
            rx.heading(S.run.name, size="6", data_testid="run-name"),
            status_badge(S.run.status, size="3"),
            rx.spacer(),
            rx.cond(S.run.can_cancel, rx.button(rx.icon("circle-stop", size=16), "Cancel", color_scheme="red",
                                                variant="soft", on_click=S.cancel, data_testid="cancel-button")),
            rx.cond(S.run.can_retry, rx.button(rx.icon("rotate-ccw", size=16), "Retry", variant="soft",
                                               on_click=S.retry, data_testid="retry-button")),
            rx.cond(S.run.can_boost, rx.button(rx.icon("chevrons-up", size=16), "Boost", variant="soft",
                                               on_click=S.boost, data_testid="boost-button")),
            rx.cond(S.run.can_kill, _kill_button()),
            align="center", width="100%", wrap="wrap",
        ),
        rx.hstack(
            rx.code(S.run.id, size="1", data_testid="run-id"),
            rx.icon_button(rx.icon("copy", size=12), size="1", variant="ghost",
                           on_click=rx.set_clipboard(S.run.id), title="Copy id"),
            rx.cond(S.notice != "", rx.text(S.notice, size="1", color_scheme="gray")),
            align="center",
        ),
        spacing="2", width="100%",
    )


def _main_column() -> rx.Component:
    return rx.vstack(
        rx.cond(S.error_message != "", rx.callout(S.error_message, icon="triangle-alert", color_scheme="red",
                                                  width="100%", data_testid="run-error")),
        _card("Progress",
              progress_bar(S.run.percent, S.run.has_percent, S.run.phase, S.run.counter, S.run.color, size="3"),
              rx.cond(S.run.current_item != "", rx.text(S.run.current_item, size="1", color_scheme="gray",
                                                        data_testid="current-item"))),
        rx.cond(S.results.length() > 0, _card("Results", _facts(S.results))),
        rx.cond(S.run.is_parent, _card(
            "Children",
            rx.hstack(rx.badge(f"{S.run.children_total} total"), rx.badge(f"{S.run.children_done} completed",
                      color_scheme="green"), rx.badge(f"{S.run.children_failed} failed or cancelled",
                      color_scheme="red")),
            child_table(S.children))),
        _card("Activity", log_timeline(S.logs, S.hidden_logs)),
        spacing="4", width="100%",
    )


def _side_column() -> rx.Component:
    return rx.vstack(
        _card("Timestamps", _facts(S.timestamps)),
        rx.cond(S.related.length() > 0, _card("Related", rx.foreach(S.related, lambda r: rx.link(
            rx.hstack(rx.icon(r.icon, size=14), rx.text(r.label, size="2", color_scheme="gray"),
                      rx.text(r.name, size="2"), align="center"), href=r.href)))),
        _card("Metadata", _facts(S.metadata)),
        _card("Capabilities", _facts(S.capabilities)),
        rx.cond(S.audit.length() > 0, _card("Audit", _facts(S.audit))),
        _card("Raw data", json_viewer("Config", S.config_json), json_viewer("Progress", S.progress_json),
              json_viewer("Results", S.results_json)),
        spacing="4", width="100%",
    )


def page() -> rx.Component:
    return layout(
        "",
        rx.cond(
            S.not_found != "",
            rx.callout(S.not_found, icon="circle-help", color_scheme="gray"),
            rx.vstack(
                _header(),
                rx.grid(_main_column(), _side_column(), columns=rx.breakpoints(initial="1", md="3"),
                        spacing="4", width="100%", grid_template_columns=rx.breakpoints(
                            initial="1fr", md="2fr 1fr")),
                spacing="4", width="100%",
            ),
        ),
    )
