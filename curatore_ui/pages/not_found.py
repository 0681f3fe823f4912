"""Any address that is not a page: a 404 inside the layout, with the way back."""

from __future__ import annotations

import reflex as rx

from curatore_ui.components.layout import layout
from curatore_ui.state.session import principal_or_redirect


class NotFoundState(rx.State):
    path: str = ""

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        self.path = (self.router.url.path or "/")[:300]
        return None


def page() -> rx.Component:
    return layout("Page not found", rx.callout(
        rx.text("There is no page at ", rx.code(NotFoundState.path), "."),
        icon="map-pin-off", color_scheme="gray", data_testid="page-not-found"),
        rx.link("← Back to the jobs", href="/", size="2"))
