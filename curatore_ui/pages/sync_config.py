"""A SharePoint sync configuration's page, `/orgs/[slug]/syncs/[sync_config_id]`: start a sync, watch it
(a panel with its child extractions), see past syncs and the files it keeps. The sync names one of the
SharePoint connections the organization may use: they are configured on the server, and the page shows
only their names."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

import reflex as rx
from sqlalchemy import select

from backend.auth.orgs import get_org
from backend.connectors.connections import available
from backend.db.engine import in_transaction
from backend.db.models import Asset, ConnectorState
from backend.errors import CuratoreError
from backend import actions
from backend.jobtypes.registry import get_registry
from backend.runs import listing
from backend.runs.queries import RunFilter, list_runs
from curatore_ui.components.job_progress_panel import is_resource_busy, job_progress_panel_by_type
from curatore_ui.components.layout import layout
from curatore_ui.components.run_table import run_table
from curatore_ui.live import Watch, bridge, current_seq
from curatore_ui.state.permissions import submit_refusal
from curatore_ui.state.session import principal_or_redirect
from curatore_ui.state.toasts import follow_my_runs
from curatore_ui.state.views import LinkItem, RunRow, route_params, run_row

def _read(slug: str, config_id: str, principal: Any) -> dict[str, Any]:
    org = get_org(slug)
    principal.require("view", org.id, "That sync configuration")
    runs = list_runs(RunFilter(organization_id=org.id, resource_type="sharepoint_config", resource_id=config_id),
                     limit=10)

    def files(s: Any) -> list[Asset]:
        return list(s.execute(select(Asset).where(Asset.organization_id == org.id, Asset.collection_id == config_id,
                                                  Asset.deleted_at.is_(None)).order_by(Asset.filename).limit(200))
                    .scalars().all())

    def state(s: Any) -> dict[str, Any]:
        row = s.execute(select(ConnectorState).where(ConnectorState.organization_id == org.id,
                                                     ConnectorState.connector == "sharepoint",
                                                     ConnectorState.resource_id == config_id)).scalar_one_or_none()
        return row.state if row else {}

    last = runs[0].config if runs else {}
    extra = listing.annotate(runs)
    return {
        "history": [run_row(r, org_slug=slug, scoped_slug=slug, principal=principal,
                            children=extra.child_counts.get(r.id), queue_position=extra.queue_positions.get(r.id, 0),
                            eta_seconds=extra.etas.get(r.id)) for r in runs],
        "can_sync": submit_refusal(principal, get_registry().find("sharepoint_sync"), org.id) == "",
        "files": [LinkItem(a.filename, f"{a.size_bytes:,} bytes", f"/orgs/{slug}/assets/{a.id}", "file", "blue")
                  for a in in_transaction(files)],
        "drive_id": last.get("drive_id", ""),
        "connection": last.get("connection") or "default",
        "connections": available("sharepoint", org.id),
        "has_delta": bool(in_transaction(state).get("delta_link")),
    }


class SyncConfigState(rx.State):
    live_seq: int = 0
    slug: str = ""
    config_id: str = ""
    drive_id: str = ""
    connection: str = "default"
    connections: list[str] = []
    full_resync: bool = False
    has_delta: bool = False
    history: list[RunRow] = []
    files: list[LinkItem] = []
    can_sync: bool = False
    error: str = ""

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        params = route_params(self.router.url.path)
        self.slug, self.config_id = params.get("slug", ""), unquote(params.get("id", ""))
        self.drive_id, self.history, self.files, self.error, self.can_sync = "", [], [], "", False
        self.full_resync, self.has_delta = False, False
        seq = await asyncio.to_thread(current_seq)
        await follow_my_runs(self, principal)
        await self._refresh(first=True)
        self.live_seq = seq
        bridge.watch(self.router.session.client_token,
                     Watch(SyncConfigState, resources=(("sharepoint_config", self.config_id),), since_seq=seq,
                           visible_orgs=bridge.scope(principal)))
        return None

    async def _refresh(self, first: bool = False) -> None:
        principal = (await principal_or_redirect(self))[0]
        if principal is None:
            return
        try:
            data = await asyncio.to_thread(_read, self.slug, self.config_id, principal)
        except CuratoreError as exc:
            self.error = exc.message
            return
        self.history, self.files, self.has_delta = data["history"], data["files"], data["has_delta"]
        self.can_sync = data["can_sync"]
        if first:
            self.drive_id = self.drive_id or data["drive_id"]
            self.connection, self.connections = data["connection"], data["connections"]

    async def apply_live(self, events: list[dict[str, Any]]) -> list[Any] | None:
        if any(e["kind"] == "status" for e in events):
            await self._refresh()
        return None

    @rx.event
    def set_drive_id(self, value: str) -> None:
        self.drive_id = value

    @rx.event
    def set_connection(self, value: str) -> None:
        self.connection = value

    @rx.event
    def set_full_resync(self, value: bool) -> None:
        self.full_resync = value

    @rx.event
    async def start_sync(self) -> None:
        principal = (await principal_or_redirect(self))[0]
        config = {"sync_config_id": self.config_id, "drive_id": self.drive_id.strip(),
                  "connection": self.connection, "full_resync": self.full_resync}

        def start() -> None:
            actions.submit(principal, "sharepoint_sync", config, get_org(self.slug).id,
                           display_name=f"Sync {self.config_id}")

        try:
            await asyncio.to_thread(start)
            self.error = ""
        except CuratoreError as exc:
            self.error = exc.message


def _form() -> rx.Component:
    S = SyncConfigState
    return rx.card(rx.vstack(
        rx.heading("Source", size="3"),
        rx.hstack(rx.text("Drive id", size="2", width="7rem"),
                  rx.input(value=S.drive_id, on_change=S.set_drive_id, width="100%", data_testid="drive-id"),
                  width="100%", align="center"),
        rx.hstack(rx.text("Connection", size="2", width="7rem"),
                  rx.select(S.connections, value=S.connection, on_change=S.set_connection,
                            placeholder="No SharePoint connection"),
                  width="100%", align="center"),
        rx.hstack(
            rx.checkbox("Full resync (ignore the delta link)", checked=S.full_resync, on_change=S.set_full_resync),
            rx.spacer(),
            rx.cond(S.has_delta, rx.badge("delta link kept", color_scheme="green", variant="soft")),
            rx.cond(S.can_sync, rx.button(rx.icon("folder-sync", size=14), "Start sync", on_click=S.start_sync,
                                          disabled=is_resource_busy("sharepoint_config", S.config_id,
                                                                    "sharepoint_sync"),
                                          data_testid="start-sync")),
            width="100%", align="center",
        ),
        spacing="3", width="100%",
    ), width="100%")


def page() -> rx.Component:
    S = SyncConfigState
    return layout(
        "SharePoint sync",
        rx.text("Configuration ", rx.code(S.config_id), size="2", color_scheme="gray"),
        rx.cond(S.error != "", rx.callout(S.error, color_scheme="red", icon="triangle-alert")),
        _form(),
        job_progress_panel_by_type(S.config_id, "sharepoint_config", "sharepoint_sync"),
        rx.card(rx.heading("Recent syncs", size="3"), run_table(S.history, compact=True), width="100%"),
        rx.card(rx.heading("Files", size="3"), rx.foreach(S.files, lambda f: rx.hstack(
            rx.icon("file", size=14), rx.link(f.label, href=f.href, size="2"),
            rx.text(f.name, size="1", color_scheme="gray"), align="center")), width="100%"),
    )
