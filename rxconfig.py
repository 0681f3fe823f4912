"""Reflex configuration for the Curatore Jobs UI."""

import reflex as rx

config = rx.Config(
    app_name="curatore_ui",
    # No sitemap.xml: the UI is an authenticated ops console, not a public site.
    disable_plugins=[rx.plugins.SitemapPlugin],
    # Self-hosted ops console: no floating badge over the content in prod builds.
    show_built_with_reflex=False,
    plugins=[
        rx.plugins.RadixThemesPlugin(
            theme=rx.theme(accent_color="indigo", radius="medium"),
        ),
    ],
)
