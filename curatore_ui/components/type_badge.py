"""A job type's icon and label in its registry color."""

from __future__ import annotations

import reflex as rx


def type_badge(label: rx.Var[str], icon: rx.Var[str], color: rx.Var[str]) -> rx.Component:
    return rx.badge(
        rx.icon(icon, size=14),
        label,
        color_scheme=color,
        variant="surface",
        size="2",
    )
