"""`/login`: email and password, posted as a plain form to ``/auth/login`` (``backend/api/signin.py``), which
sets the HttpOnly session cookie and redirects; a refusal comes back here as ``?error=<code>``."""

from __future__ import annotations

import reflex as rx

from backend.api.signin import LOGIN_PATH
from curatore_ui.components.native_form import native_form
from curatore_ui.state.session import backend_path, safe_next

# Only these words are ever shown: a link cannot make the page say something of its own.
MESSAGES = {
    "invalid": "That email and password do not match.",
    "missing": "Enter your email and password.",
    "locked": "Too many failed sign-ins; try again in {wait} s.",
}


def error_message(code: str, wait: str) -> str:
    """The words for an error code of ``/auth/login`` ('' for none or an unknown one)."""
    message = MESSAGES.get(code, "")
    if "{wait}" in message:
        message = message.format(wait=int(wait) if wait.isdigit() and len(wait) < 7 else "a few")
    return message


class LoginState(rx.State):
    error: str = ""
    next_path: str = "/"

    @rx.event
    def load(self):  # type: ignore[no-untyped-def]
        query = self.router.url.query_parameters
        self.error = error_message(str(query.get("error", "")), str(query.get("wait", "")))
        self.next_path = safe_next(str(query.get("next", "/")))


def _field(label: str, **props: object) -> rx.Component:
    return rx.vstack(rx.text(label, size="2", weight="medium"), rx.input(width="100%", size="3", **props),
                     spacing="1", width="100%")


def page() -> rx.Component:
    return rx.center(
        rx.card(
            native_form(
                rx.vstack(
                    rx.hstack(rx.icon("layers", size=22, color="var(--indigo-9)"), rx.heading("Curatore", size="6"),
                              align="center"),
                    rx.text("Sign in to watch and steer background jobs.", size="2", color_scheme="gray"),
                    _field("Email", name="email", type="email", placeholder="you@example.com", required=True,
                           data_testid="login-email", auto_focus=True, auto_complete="username"),
                    _field("Password", name="password", type="password", required=True,
                           data_testid="login-password", auto_complete="current-password"),
                    rx.el.input(type="hidden", name="next", value=LoginState.next_path),
                    rx.cond(LoginState.error != "",
                            rx.callout(LoginState.error, color_scheme="red", icon="triangle-alert",
                                       size="1", width="100%", data_testid="login-error")),
                    rx.button("Sign in", type="submit", width="100%", size="3", data_testid="login-submit"),
                    spacing="4", width="100%",
                ),
                method="post",
                action=backend_path(LOGIN_PATH),
            ),
            width="24rem", size="4",
        ),
        min_height="100vh",
        background="var(--gray-a2)",
    )
