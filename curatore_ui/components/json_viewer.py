"""Raw JSON, collapsible, shown as text."""

from __future__ import annotations

import reflex as rx


def json_viewer(title: str, text: rx.Var[str], open_: bool = False) -> rx.Component:
    return rx.el.details(
        rx.el.summary(rx.text(title, size="2", weight="medium", as_="span"), cursor="pointer"),
        rx.cond(
            text != "",
            rx.el.pre(
                text,
                font_family="var(--code-font-family)",
                font_size="12px",
                white_space="pre-wrap",
                word_break="break-word",
                max_height="24rem",
                overflow="auto",
                padding="0.75rem",
                margin_top="0.5rem",
                border_radius="var(--radius-2)",
                background="var(--gray-a3)",
            ),
            rx.text("(empty)", size="1", color_scheme="gray"),
        ),
        open=open_,
    )
