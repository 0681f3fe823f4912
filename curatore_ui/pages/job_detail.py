"""Job detail: `/system/jobs/[run_id]` and `/orgs/[slug]/jobs/[run_id]`."""

from __future__ import annotations

import reflex as rx

from curatore_ui.components.json_viewer import json_viewer
from curatore_ui.components.layout import layout
from curatore_ui.components.live_time import ticking_duration, time_ago
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


def _value(f: rx.Var[LinkItem]) -> rx.Component:
    return rx.cond(f.href != "", rx.link(f.name, href=f.href, size="2", data_testid="fact-link"),
                   rx.text(f.name, size="2", overflow_wrap="anywhere"))


def _facts(items: rx.Var[list[LinkItem]], *extra: rx.Component) -> rx.Component:
    return rx.data_list.root(
        rx.foreach(items, lambda f: rx.data_list.item(
            rx.data_list.label(f.label, min_width="7rem"), rx.data_list.value(_value(f)), data_label=f.label)),
        *extra,
        size="1",
    )


def _fact(label: str, value: rx.Component) -> rx.Component:
    return rx.data_list.item(rx.data_list.label(label, min_width="7rem"), rx.data_list.value(value))


def _timestamps() -> rx.Component:
    return _facts(
        S.timestamps,
        rx.cond(S.run.started_iso != "", _fact("Duration", rx.text(
            ticking_duration(S.run.started_iso, S.run.completed_iso, S.run.duration), size="2",
            data_testid="detail-duration"))),
        rx.cond(S.last_activity_iso != "", _fact("Last activity", rx.text(time_ago(S.last_activity_iso), size="2",
                                                                          data_testid="detail-last-activity"))),
    )


def _disabled(label: str, icon: str, why: rx.Var[str], **props) -> rx.Component:  # type: ignore[no-untyped-def]
    """A button the role allows in general but not here: drawn disabled, its tooltip says why."""
    return rx.tooltip(rx.box(rx.button(rx.icon(icon, size=16), label, variant="soft", disabled=True, **props)),
                      content=why)


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


def _actions() -> rx.Component:
    """Only what the role allows (backend.auth.access): a viewer sees none of these, a member no Force kill."""
    run = S.run
    return rx.hstack(
        rx.cond(run.may_cancel, rx.cond(
            run.can_cancel,
            rx.button(rx.icon("circle-stop", size=16), "Cancel", color_scheme="red", variant="soft",
                      on_click=S.cancel, data_testid="cancel-button"),
            rx.cond(run.status == "cancelling",
                    _disabled("Cancel", "circle-stop", "Cancel requested: waiting for the job to stop.",
                              color_scheme="red", data_testid="cancel-button-disabled")))),
        rx.cond(run.may_retry & run.can_retry, rx.cond(
            run.retry_refused == "",
            rx.button(rx.icon("rotate-ccw", size=16), "Retry", variant="soft", on_click=S.retry,
                      data_testid="retry-button"),
            _disabled("Retry", "rotate-ccw", run.retry_refused, data_testid="retry-button-disabled"))),
        rx.cond(run.may_boost & run.can_boost, rx.button(rx.icon("chevrons-up", size=16), "Boost", variant="soft",
                                                         on_click=S.boost, data_testid="boost-button")),
        rx.cond(run.may_kill & run.can_kill, _kill_button()),
        spacing="2", wrap="wrap",
    )


def _queue_callout() -> rx.Component:
    queued = (S.run.status == "pending") | (S.run.status == "submitted")
    return rx.cond(queued & (S.run.queue_position > 0), rx.callout(
        rx.text("Position ", rx.text.strong(S.run.queue_position, data_testid="detail-queue-position"),
                " in its queue", rx.cond(S.run.eta != "", rx.text(", expected to start in ", S.run.eta, as_="span")),
                "."),
        icon="hourglass", color_scheme="gray", width="100%", data_testid="queue-callout"))


def _header() -> rx.Component:
    return rx.vstack(
        rx.link("← All jobs", href=rx.cond(S.scoped_slug != "", f"/orgs/{S.scoped_slug}/jobs", "/system/jobs"),
                size="2"),
        rx.hstack(
            type_badge(S.run.label, S.run.icon, S.run.color),
            rx.heading(S.run.name, size="6", data_testid="run-name"),
            status_badge(S.run.status, size="3"),
            rx.spacer(),
            _actions(),
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
        _queue_callout(),
        _card("Progress",
              progress_bar(S.run.percent, S.run.has_percent, S.run.phase, S.run.counter, S.run.color, size="3",
                           active=S.is_active),
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
        _card("Timestamps", _timestamps()),
        rx.cond(S.related.length() > 0, _card("Related", rx.foreach(S.related, lambda r: rx.link(
            rx.hstack(rx.icon(r.icon, size=14, flex_shrink="0"), rx.text(r.label, size="2", color_scheme="gray"),
                      rx.text(r.name, size="2", overflow_wrap="anywhere"), align="center"),
            href=r.href, data_testid="related-link")))),
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
            rx.callout(S.not_found, icon="circle-help", color_scheme="gray", data_testid="not-found"),
            rx.vstack(
                _header(),
                rx.grid(_main_column(), _side_column(), spacing="4", width="100%",
                        grid_template_columns=rx.breakpoints(initial="minmax(0, 1fr)",
                                                             md="minmax(0, 2fr) minmax(0, 1fr)")),
                spacing="4", width="100%",
            ),
        ),
    )
