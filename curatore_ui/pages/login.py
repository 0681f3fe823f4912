"""`/login`: email and password."""

from __future__ import annotations

import reflex as rx

from curatore_ui.state.session import SessionState


def page() -> rx.Component:
    return rx.center(
        rx.card(
            rx.form(
                rx.vstack(
                    rx.hstack(rx.icon("layers", size=22, color="var(--indigo-9)"), rx.heading("Curatore", size="6"),
                              align="center"),
                    rx.text("Sign in to watch and steer background jobs.", size="2", color_scheme="gray"),
                    rx.text("Email", size="2", weight="medium"),
                    rx.input(name="email", type="email", placeholder="you@example.com", required=True,
                             width="100%", data_testid="login-email", auto_focus=True),
                    rx.text("Password", size="2", weight="medium"),
                    rx.input(name="password", type="password", required=True, width="100%",
                             data_testid="login-password"),
                    rx.cond(SessionState.login_error != "",
                            rx.callout(SessionState.login_error, color_scheme="red", icon="triangle-alert",
                                       size="1", width="100%", data_testid="login-error")),
                    rx.button("Sign in", type="submit", width="100%", data_testid="login-submit"),
                    spacing="3", width="100%",
                ),
                on_submit=SessionState.log_in,
                reset_on_submit=False,
            ),
            width="24rem", size="3",
        ),
        min_height="100vh",
        background="var(--gray-a2)",
    )
