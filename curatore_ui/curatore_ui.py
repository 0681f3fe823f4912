"""The Reflex app: creation and page registration only."""

import reflex as rx

from curatore_ui.api_mount import api
from curatore_ui.pages import home

app = rx.App(api_transformer=api)

app.add_page(home.index, route="/", title="Curatore Jobs")
