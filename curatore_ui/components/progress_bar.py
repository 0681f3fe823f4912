"""Progress: a bar with percent, phase and current/total."""

from __future__ import annotations

import reflex as rx


def progress_bar(
    percent: rx.Var[float],
    has_percent: rx.Var[bool],
    phase: rx.Var[str],
    counter: rx.Var[str],
    color: rx.Var[str] | str = "blue",
    size: str = "2",
) -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.cond(phase != "", rx.badge(phase.replace("_", " "), variant="outline", size="1",
                                          data_testid="progress-phase"), rx.fragment()),
            rx.spacer(),
            rx.text(counter, size="1", color_scheme="gray", data_testid="progress-counter"),
            rx.cond(has_percent, rx.text(f"{percent}%", size="1", weight="medium",
                                         data_testid="progress-percent"), rx.fragment()),
            width="100%",
            align="center",
        ),
        rx.cond(
            has_percent,
            rx.progress(value=percent.to(int), max=100, color_scheme=color, size=size, width="100%",
                        data_testid="progress-bar"),
            rx.progress(color_scheme=color, size=size, width="100%", duration="2s"),
        ),
        spacing="1",
        width="100%",
    )
