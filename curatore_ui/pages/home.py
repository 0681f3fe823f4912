"""`/`: sends the browser to the jobs list its user may see (or to the login page)."""

import reflex as rx


def index() -> rx.Component:
    return rx.center(rx.spinner(size="3"), min_height="100vh")
