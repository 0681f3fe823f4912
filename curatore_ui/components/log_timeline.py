"""The activity log: one line per event, newest last, context expandable."""

from __future__ import annotations

import reflex as rx

from curatore_ui.state.views import LogLine

LEVEL_COLORS = (("ERROR", "red"), ("WARN", "amber"), "gray")


def _line(line: rx.Var[LogLine]) -> rx.Component:
    summary = rx.hstack(
        rx.cond(line.has_context, rx.icon("chevron-right", size=12, color="var(--gray-9)", flex_shrink="0"),
                rx.box(width="12px", flex_shrink="0")),
        rx.text(line.time, size="1", color_scheme="gray", font_family="var(--code-font-family)", min_width="4.5rem",
                flex_shrink="0"),
        rx.badge(line.level, color_scheme=rx.match(line.level, *LEVEL_COLORS), variant="soft", size="1",
                 flex_shrink="0"),
        rx.code(line.event_type, size="1", variant="ghost", flex_shrink="0"),
        # a long message wraps in its own column, beside the time, level and event type
        rx.text(line.message, size="2", data_testid="log-message", flex="1", min_width="0",
                overflow_wrap="anywhere"),
        align="baseline",
        spacing="2",
    )
    return rx.box(
        rx.cond(
            line.has_context,
            rx.el.details(
                rx.el.summary(summary, cursor="pointer", list_style="none"),
                rx.el.pre(line.context, font_size="11px", white_space="pre-wrap", word_break="break-word",
                          padding="0.5rem", margin="0.25rem 0 0 4.5rem", border_radius="var(--radius-2)",
                          background="var(--gray-a3)"),
            ),
            summary,
        ),
        width="100%",
        padding_y="0.35rem",
        border_bottom="1px solid var(--gray-a3)",
        data_testid="log-line",
        data_log_id=line.id,
    )


def log_timeline(lines: rx.Var[list[LogLine]], hidden_before: rx.Var[int] | None = None) -> rx.Component:
    return rx.vstack(
        rx.cond(
            hidden_before > 0 if hidden_before is not None else False,
            rx.text(f"{hidden_before} earlier events not shown", size="1", color_scheme="gray"),
            rx.fragment(),
        ),
        rx.foreach(lines, _line),
        spacing="0",
        width="100%",
        data_testid="log-timeline",
    )
