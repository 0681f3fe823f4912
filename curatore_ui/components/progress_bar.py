"""Progress: a bar with percent, phase and current/total. Without a known total the bar is indeterminate
(a stripe sliding along an empty track, no percent), never a full bar."""

from __future__ import annotations

from typing import Any

import reflex as rx

def indeterminate(color: Any = "blue", size: str = "2") -> rx.Component:
    height = {"1": "4px", "2": "6px", "3": "8px"}.get(size, "6px")
    return rx.box(
        rx.box(class_name="curatore-indeterminate-stripe", background=f"var(--{color}-9)"),
        class_name="curatore-indeterminate", position="relative", overflow="hidden", width="100%", height=height, border_radius="9999px",
        background="var(--gray-a4)", role="progressbar", aria_label="in progress, total not known yet",
        data_testid="progress-indeterminate",
    )


def bar(percent: rx.Var[float], has_percent: rx.Var[bool], color: Any = "blue", size: str = "2") -> rx.Component:
    """The bar alone: determinate with a percent, indeterminate without."""
    return rx.cond(
        has_percent,
        rx.progress(value=percent.to(int), max=100, color_scheme=color, size=size, width="100%",
                    data_testid="progress-bar"),
        indeterminate(color, size),
    )


def progress_bar(
    percent: rx.Var[float],
    has_percent: rx.Var[bool],
    phase: rx.Var[str],
    counter: rx.Var[str],
    color: rx.Var[str] | str = "blue",
    size: str = "2",
    active: rx.Var[bool] | bool = True,
) -> rx.Component:
    """``active`` False (an ended run): no bar unless it has a percent."""
    label = phase.replace("_", " ")
    return rx.vstack(
        rx.hstack(
            rx.cond(phase != "", rx.badge(label, variant="outline", size="1", data_testid="progress-phase"),
                    rx.fragment()),
            rx.spacer(),
            rx.text(counter, size="1", color_scheme="gray", data_testid="progress-counter"),
            rx.cond(has_percent, rx.text(f"{percent}%", size="1", weight="medium",
                                         data_testid="progress-percent"), rx.fragment()),
            width="100%",
            align="center",
        ),
        rx.cond(has_percent | active, bar(percent, has_percent, color, size)),
        spacing="1",
        width="100%",
    )
