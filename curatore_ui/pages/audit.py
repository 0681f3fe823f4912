"""`/orgs/[slug]/audit` (the organization's admins) and `/system/audit` (system admins: the whole log, with
sign-ins and refusals against things out of sight): who did what, filterable by action, actor and date,
newest first, paged by keyset (``actions.audit_page``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import reflex as rx

from backend import actions
from backend.errors import CuratoreError
from curatore_ui.components.layout import layout
from curatore_ui.state.admin import administered_org
from curatore_ui.state.session import principal_or_redirect
from curatore_ui.state.views import route_params, run_href, ts

ACTIONS = ("submit", "cancel", "retry", "boost", "force_kill", "schedule_enable", "schedule_disable",
           "schedule_trigger", "user_create", "user_disable", "user_enable", "user_role", "membership_remove",
           "password_reset", "password_change", "sessions_end", "token_create", "token_revoke", "login", "logout",
           "login_lockout", "login_refused", "retention")


@dataclasses.dataclass
class AuditRow:
    id: int = 0
    at: str = ""
    actor: str = ""
    action: str = ""
    refused: bool = False
    run_href: str = ""
    details: str = ""


def _day(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc) if text else None
    except ValueError:
        raise CuratoreError(f"{text!r} is not a date (YYYY-MM-DD).") from None


def _read(slug: str, filters: dict[str, str], before: int | None, principal: Any) -> dict[str, Any]:
    org_id, name = administered_org(slug, principal) if slug else (None, "All organizations")
    until = _day(filters.get("until", ""))
    entries, next_id = actions.audit_page(principal, org_id, action=filters.get("action", ""),
                                          actor=filters.get("actor", "")[:320], since=_day(filters.get("since", "")),
                                          until=until + timedelta(days=1) if until else None, before_id=before)
    rows = [AuditRow(e.id or 0, ts(e.at), e.actor, e.action, e.action.endswith("_refused"),
                     run_href(str(e.run_id), slug or None) if e.run_id else "",
                     json.dumps(e.details, ensure_ascii=False, default=str)[:400]) for e in entries]
    return {"name": name, "rows": rows, "next": next_id or 0}


class AuditState(rx.State):
    slug: str = ""
    scope_name: str = ""
    filters: dict[str, str] = {}
    rows: list[AuditRow] = []
    error: str = ""
    before: int = 0  # 0: the newest page
    previous: list[int] = []
    next_before: int = 0

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        self.slug = route_params(self.router.url.path).get("slug", "")
        self.filters, self.before, self.previous = {}, 0, []
        await self._refresh(principal)
        return None

    async def _refresh(self, principal: Any = None) -> None:
        principal = principal or (await principal_or_redirect(self))[0]
        if principal is None:
            return
        try:
            data = await asyncio.to_thread(_read, self.slug, dict(self.filters), self.before or None, principal)
        except CuratoreError as exc:
            self.error, self.rows, self.next_before = exc.message, [], 0
            return
        self.error, self.scope_name, self.rows, self.next_before = "", data["name"], data["rows"], data["next"]

    @rx.event
    async def set_filter(self, key: str, value: str) -> None:
        self.filters[key] = "" if value == "all" else value
        self.before, self.previous = 0, []
        await self._refresh()

    @rx.event
    async def next_page(self) -> None:
        if self.next_before:
            self.previous.append(self.before)
            self.before = self.next_before
            await self._refresh()

    @rx.event
    async def prev_page(self) -> None:
        if self.previous:
            self.before = self.previous.pop()
            await self._refresh()


# --------------------------------------------------------------------------- layout

S = AuditState


def _row(r: AuditRow) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.text(r.at, size="1", color_scheme="gray", white_space="nowrap")),
        rx.table.cell(rx.text(r.actor, size="2")),
        rx.table.cell(rx.badge(r.action, color_scheme=rx.cond(r.refused, "red", "indigo"), variant="soft")),
        rx.table.cell(rx.cond(r.run_href != "", rx.link("run", href=r.run_href, size="2"))),
        rx.table.cell(rx.code(r.details, size="1", variant="ghost", white_space="pre-wrap", word_break="break-all")),
        data_testid="audit-row", data_action=r.action,
    )


def _filters() -> rx.Component:
    return rx.hstack(
        rx.select(["all", *ACTIONS], placeholder="Any action", value=S.filters.get("action", "all"), size="2",
                  on_change=lambda v: S.set_filter("action", v), data_testid="audit-action"),
        rx.input(placeholder="Actor contains…", size="2", width="16rem", data_testid="audit-actor",
                 on_blur=lambda v: S.set_filter("actor", v)),
        rx.text("from", size="2", color_scheme="gray"),
        rx.input(type="date", size="2", on_change=lambda v: S.set_filter("since", v), data_testid="audit-since"),
        rx.text("to", size="2", color_scheme="gray"),
        rx.input(type="date", size="2", on_change=lambda v: S.set_filter("until", v), data_testid="audit-until"),
        spacing="2", align="center", wrap="wrap",
    )


def page() -> rx.Component:
    return layout(
        "Audit log",
        rx.cond(S.error != "", rx.callout(S.error, color_scheme="red", icon="triangle-alert", data_testid="page-error")),
        rx.text(S.scope_name, size="2", color_scheme="gray"),
        _filters(),
        rx.card(rx.table.root(
            rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in
                                           ("When", "Actor", "Action", "Run", "Details")])),
            rx.table.body(rx.foreach(S.rows, _row)), width="100%", variant="ghost"), width="100%"),
        rx.cond(S.rows.length() == 0, rx.text("No entries.", size="2", color_scheme="gray")),
        rx.hstack(rx.button("Newer", on_click=S.prev_page, disabled=S.previous.length() == 0, variant="soft",
                            data_testid="audit-newer"),
                  rx.button("Older", on_click=S.next_page, disabled=S.next_before == 0, variant="soft",
                            data_testid="audit-older"), spacing="2"),
    )
