"""`/orgs/[slug]/members`: an organization's users, for its admins (and system admins). Every change goes
through the audited account actions of ``backend/actions.py``, which decide who may do what."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import reflex as rx

from backend import actions
from backend.auth.users import ROLES
from backend.errors import CuratoreError
from curatore_ui.components.layout import layout
from curatore_ui.state.admin import administered_org, administered_orgs
from curatore_ui.state.session import principal_or_redirect
from curatore_ui.state.views import route_params


@dataclasses.dataclass
class MemberRow:
    email: str = ""
    name: str = ""
    role: str = ""
    disabled: bool = False
    system_admin: bool = False
    me: bool = False


def _read(slug: str, principal: Any) -> dict[str, Any]:
    org_id, name = administered_org(slug, principal)
    rows = [MemberRow(u.email, u.name, role, u.disabled, u.is_system_admin, u.id == principal.user_id)
            for u, role in actions.members(principal, org_id)]
    return {"org_id": str(org_id), "org_name": name, "rows": rows, "orgs": administered_orgs(principal)}


class MembersState(rx.State):
    slug: str = ""
    org_name: str = ""
    orgs: list[dict[str, str]] = []
    rows: list[MemberRow] = []
    error: str = ""  # the page cannot be shown
    notice: str = ""
    failed: bool = False  # the notice is a refusal
    reset_email: str = ""  # the reset-password dialog is open for this user
    adding: bool = False
    _org_id: str = ""

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        self.slug, self.notice, self.reset_email, self.adding = route_params(self.router.url.path).get("slug", ""), "", "", False
        await self._refresh(principal)
        return None

    async def _refresh(self, principal: Any) -> None:
        try:
            data = await asyncio.to_thread(_read, self.slug, principal)
        except CuratoreError as exc:
            self.error, self.rows, self.org_name = exc.message, [], ""
            return
        self.error, self._org_id = "", data["org_id"]
        self.org_name, self.rows, self.orgs = data["org_name"], data["rows"], data["orgs"]

    async def _do(self, done: str, action: Any, *args: Any) -> bool:
        """Run an account action as the signed-in user; a notice either way; the list again."""
        principal = (await principal_or_redirect(self))[0]
        if principal is None:
            return False
        try:
            await asyncio.to_thread(action, principal, *args)
            self.notice, self.failed = done, False
        except CuratoreError as exc:
            self.notice, self.failed = exc.message, True
        await self._refresh(principal)
        return not self.failed

    @rx.event
    async def set_role(self, email: str, role: str) -> None:
        await self._do(f"{email} is now {role}.", actions.set_role, email, uuid.UUID(self._org_id), role)

    @rx.event
    async def set_disabled(self, email: str, disabled: bool) -> None:
        await self._do(f"{email} is {'disabled: sessions ended, tokens revoked' if disabled else 'enabled'}.",
                       actions.set_user_disabled, email, disabled)

    @rx.event
    async def end_sessions(self, email: str) -> None:
        await self._do(f"Every session of {email} ended; their API tokens are revoked.", actions.end_user_sessions,
                       email)

    @rx.event
    async def remove(self, email: str) -> None:
        await self._do(f"{email} was removed from {self.org_name}.", actions.remove_membership, email,
                       uuid.UUID(self._org_id))

    @rx.event
    def open_reset(self, email: str) -> None:
        self.reset_email = email

    @rx.event
    def close_dialogs(self, _open: bool = False) -> None:
        self.reset_email, self.adding = "", False

    @rx.event
    async def reset_password(self, form: dict[str, Any]) -> None:
        email = self.reset_email
        if await self._do(f"{email} has a new password; their sessions ended.", actions.reset_password, email,
                          str(form.get("password", ""))):
            self.reset_email = ""

    @rx.event
    def open_add(self) -> None:
        self.adding = True

    @rx.event
    async def add(self, form: dict[str, Any]) -> None:
        """A new user with an initial password, or (no password) an existing user given a role here."""
        email, role, password = (str(form.get(k, "")).strip() for k in ("email", "role", "password"))
        org_id = uuid.UUID(self._org_id)
        if password:
            ok = await self._do(f"{email} was created as {role}.", _create, email, password, org_id, role or "member")
        else:
            ok = await self._do(f"{email} is now {role or 'member'}.", actions.set_role, email, org_id,
                                role or "member")
        if ok:
            self.adding = False


def _create(principal: Any, email: str, password: str, org_id: Any, role: str) -> None:
    actions.create_user(principal, email, password, organization_id=org_id, role=role)


# --------------------------------------------------------------------------- layout

S = MembersState


def _row(m: MemberRow) -> rx.Component:
    menu = rx.menu.root(
        rx.menu.trigger(rx.icon_button(rx.icon("ellipsis", size=16), variant="ghost", color_scheme="gray",
                                       size="1", data_testid="member-menu")),
        rx.menu.content(
            rx.menu.item("Reset password…", on_click=S.open_reset(m.email), data_testid="member-reset"),
            rx.menu.item("End sessions and revoke tokens", on_click=S.end_sessions(m.email),
                         data_testid="member-end-sessions"),
            rx.cond(m.disabled,
                    rx.menu.item("Enable", on_click=S.set_disabled(m.email, False), data_testid="member-enable"),
                    rx.menu.item("Disable", color="red", on_click=S.set_disabled(m.email, True),
                                 data_testid="member-disable")),
            rx.menu.separator(),
            rx.menu.item("Remove from organization", color="red", on_click=S.remove(m.email),
                         data_testid="member-remove"),
        ),
    )
    return rx.table.row(
        rx.table.cell(rx.vstack(rx.text(m.email, weight="medium", size="2"),
                                rx.text(m.name, size="1", color_scheme="gray"), spacing="0")),
        rx.table.cell(rx.select(list(ROLES), value=m.role, on_change=lambda role: S.set_role(m.email, role),
                                size="1", data_testid="member-role")),
        rx.table.cell(rx.hstack(
            rx.cond(m.disabled, rx.badge("Disabled", color_scheme="red"), rx.badge("Active", color_scheme="green")),
            rx.cond(m.system_admin, rx.badge("System admin", color_scheme="indigo")),
            rx.cond(m.me, rx.badge("You", color_scheme="gray")), spacing="2")),
        rx.table.cell(menu, text_align="right"),
        data_testid="member-row", data_email=m.email, align="center",
    )


def _password_field(label: str, name: str, required: bool = True, **props: Any) -> rx.Component:
    return rx.vstack(rx.text(label, size="2", weight="medium"),
                     rx.input(name=name, type="password", required=required, min_length=8, width="100%", **props),
                     spacing="1", width="100%")


def _reset_dialog() -> rx.Component:
    return rx.dialog.root(rx.dialog.content(
        rx.dialog.title("Reset password"),
        rx.dialog.description(rx.text("A new password for ", rx.text.strong(S.reset_email),
                                      ". Their sessions end; API tokens stay."), size="2"),
        rx.form(rx.vstack(
            _password_field("New password (8 characters or more)", "password", data_testid="reset-password"),
            rx.hstack(rx.dialog.close(rx.button("Cancel", variant="soft", color_scheme="gray", type="button")),
                      rx.button("Set password", type="submit", data_testid="reset-submit"),
                      justify="end", width="100%"),
            spacing="4", padding_top="1rem"), on_submit=S.reset_password, reset_on_submit=True),
        max_width="28rem"), open=S.reset_email != "", on_open_change=S.close_dialogs)


def _add_dialog() -> rx.Component:
    return rx.dialog.root(rx.dialog.content(
        rx.dialog.title("Add a member"),
        rx.dialog.description("A new user, with an initial password they change after signing in; or, "
                              "without a password, an existing user given a role here.", size="2"),
        rx.form(rx.vstack(
            rx.vstack(rx.text("Email", size="2", weight="medium"),
                      rx.input(name="email", type="email", required=True, width="100%", data_testid="add-email"),
                      spacing="1", width="100%"),
            rx.vstack(rx.text("Role", size="2", weight="medium"),
                      rx.select(list(ROLES), name="role", default_value="member", data_testid="add-role"),
                      spacing="1", width="100%"),
            _password_field("Initial password (new users)", "password", required=False, data_testid="add-password"),
            rx.hstack(rx.dialog.close(rx.button("Cancel", variant="soft", color_scheme="gray", type="button")),
                      rx.button("Add", type="submit", data_testid="add-submit"), justify="end", width="100%"),
            spacing="4", padding_top="1rem"), on_submit=S.add, reset_on_submit=True),
        max_width="28rem"), open=S.adding, on_open_change=S.close_dialogs)


def _org_picker() -> rx.Component:
    return rx.cond(S.orgs.length() > 1, rx.select.root(
        rx.select.trigger(placeholder="Organization"),
        rx.select.content(rx.foreach(S.orgs, lambda o: rx.select.item(o["name"], value=o["slug"]))),
        value=S.slug, on_change=lambda slug: rx.redirect("/orgs/" + slug + "/members"), size="2"))


def page() -> rx.Component:
    actions_bar = rx.hstack(_org_picker(), rx.button(rx.icon("user-plus", size=16), "Add member",
                                                     on_click=S.open_add, data_testid="add-member"), spacing="3")
    return layout(
        "Members",
        rx.cond(S.error != "", rx.callout(S.error, color_scheme="red", icon="triangle-alert", data_testid="page-error"),
                rx.vstack(
                    rx.text(S.org_name, " · ", S.rows.length(), " members", size="2", color_scheme="gray"),
                    rx.cond(S.notice != "", rx.callout(S.notice, color_scheme=rx.cond(S.failed, "red", "green"),
                                                       icon=rx.cond(S.failed, "triangle-alert", "check"), size="1",
                                                       data_testid="members-notice")),
                    rx.card(rx.table.root(
                        rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in
                                                       ("User", "Role", "Status", "")])),
                        rx.table.body(rx.foreach(S.rows, _row)), width="100%", variant="ghost"), width="100%"),
                    spacing="3", width="100%")),
        _reset_dialog(), _add_dialog(),
        actions=rx.cond(S.error == "", actions_bar),
    )
