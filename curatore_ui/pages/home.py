"""Home page: a placeholder that points to the jobs list."""

import reflex as rx

from curatore_ui.components.layout import layout


def index() -> rx.Component:
    """The landing page."""
    return layout(
        "Curatore Jobs",
        rx.text("Background jobs: what runs, what waits, what failed."),
        rx.link("Open the jobs list", href="/system/jobs"),
    )
