"""Reflex configuration for the Curatore Jobs UI."""

import reflex as rx

from backend.config import get_settings

_settings = get_settings()

config = rx.Config(
    app_name="curatore_ui",
    # No sitemap.xml: the UI is an authenticated ops console, not a public site.
    disable_plugins=[rx.plugins.SitemapPlugin],
    # Self-hosted ops console: no floating badge over the content in prod builds.
    show_built_with_reflex=False,
    # CORS with credentials for these origins only (never "*"): the UI's own public URLs (the dev frontend
    # calls the backend on another port) and CURATORE_CORS_ORIGINS. The websocket is narrowed further, to the
    # public URLs, in curatore_ui.py.
    cors_allowed_origins=[*_settings.public_urls, *_settings.cors_origins],
    plugins=[
        rx.plugins.RadixThemesPlugin(
            theme=rx.theme(accent_color="indigo", radius="medium"),
        ),
    ],
)
