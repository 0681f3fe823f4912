"""The status badge: one color per run status, used everywhere a status shows."""

from __future__ import annotations

import reflex as rx

STATUS_COLORS: dict[str, str] = {
    "pending": "gray",
    "submitted": "indigo",
    "running": "blue",
    "cancelling": "orange",
    "stale": "amber",
    "completed": "green",
    "failed": "red",
    "timed_out": "crimson",
    "cancelled": "gray",
}


def status_color(status: rx.Var[str]) -> rx.Var[str]:
    return rx.match(status, *STATUS_COLORS.items(), "gray")


def status_badge(status: rx.Var[str], size: str = "2") -> rx.Component:
    return rx.badge(
        rx.cond(status == "running", rx.spinner(size="1"), rx.fragment()),
        status.replace("_", " "),
        color_scheme=status_color(status),
        variant="soft",
        size=size,
        radius="full",
        data_testid="status-badge",
        data_status=status,
    )
