"""`/account`: the signed-in user changes their own password (``actions.change_password``: the current one is
required and its wrong guesses count towards the lockout). Every session ends, this one too: the page then posts
the sign-out form and the user signs in again with the new password."""

from __future__ import annotations

import asyncio
from typing import Any

import reflex as rx

from backend import actions
from backend.errors import CuratoreError
from curatore_ui.components.layout import layout
from curatore_ui.state.session import SessionState, principal_or_redirect


class AccountState(rx.State):
    error: str = ""

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        self.error = ""
        return (await principal_or_redirect(self))[1]

    @rx.event
    async def change_password(self, form: dict[str, Any]):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        new, again = str(form.get("new_password", "")), str(form.get("again", ""))
        if new != again:
            self.error = "The new password and its repetition differ."
            return None
        try:
            await asyncio.to_thread(actions.change_password, principal, str(form.get("old_password", "")), new)
        except CuratoreError as exc:
            self.error = exc.message
            return None
        return SessionState.log_out  # its session has ended: sign in again with the new password


def _field(label: str, name: str, testid: str) -> rx.Component:
    return rx.vstack(rx.text(label, size="2", weight="medium"),
                     rx.input(name=name, type="password", required=True, width="100%", data_testid=testid),
                     spacing="1", width="100%")


def page() -> rx.Component:
    return layout(
        "Account",
        rx.card(rx.form(rx.vstack(
            rx.heading("Change your password", size="4"),
            rx.text("Signed in as ", rx.text.strong(SessionState.email), ". Every session of yours ends; "
                    "you sign in again with the new password. API tokens stay.", size="2", color_scheme="gray"),
            _field("Current password", "old_password", "old-password"),
            _field("New password (8 characters or more)", "new_password", "new-password"),
            _field("New password, again", "again", "new-password-again"),
            rx.cond(AccountState.error != "", rx.callout(AccountState.error, color_scheme="red", icon="triangle-alert",
                                                         size="1", width="100%", data_testid="account-error")),
            rx.button("Change password", type="submit", data_testid="change-password"),
            spacing="4", width="100%"), on_submit=AccountState.change_password, reset_on_submit=True),
            max_width="28rem", size="3"),
    )
