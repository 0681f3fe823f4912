"""An asset's page, `/orgs/[slug]/assets/[asset_id]`: its extraction progress (a panel) and its text."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from urllib.parse import unquote

import reflex as rx

from backend.auth.orgs import get_org
from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.errors import CuratoreError
from backend import actions
from curatore_ui.components.job_progress_panel import is_resource_busy, job_progress_panel
from curatore_ui.components.layout import layout
from backend.jobtypes.registry import get_registry
from curatore_ui.state.permissions import submit_refusal
from curatore_ui.state.session import principal_or_redirect
from curatore_ui.state.toasts import follow_my_runs
from curatore_ui.state.views import LinkItem, route_params, ts

TEXT_PREVIEW = 20_000


def _read(slug: str, asset_id: str, principal: Any) -> dict[str, Any]:
    org = get_org(slug)
    principal.require("view", org.id, "That asset")
    try:
        aid = uuid.UUID(asset_id)
    except ValueError:
        raise CuratoreError(f"{asset_id!r} is not an asset id.") from None
    asset = in_transaction(lambda s: s.get(Asset, aid))
    if asset is None or asset.organization_id != org.id:
        raise CuratoreError(f"No asset {asset_id} in {slug}.")
    text = asset.extracted_text or ""
    facts = [("File", asset.filename), ("Size", f"{asset.size_bytes:,} bytes"), ("Type", asset.content_type or ""),
             ("SHA-256", asset.sha256[:16] + "…"), ("Stored", ts(asset.created_at)),
             ("Extraction", asset.extraction_status), ("Source", asset.source or "")]
    return {"facts": [LinkItem(label=k, name=str(v)) for k, v in facts if v], "text": text[:TEXT_PREVIEW],
            "truncated": len(text) > TEXT_PREVIEW, "status": asset.extraction_status, "org_id": org.id,
            "filename": asset.filename, "collection_id": asset.collection_id or "",
            "can_extract": submit_refusal(principal, get_registry().find("extraction"), org.id) == ""}


class AssetState(rx.State):
    slug: str = ""
    asset_id: str = ""  # set only once the asset is found: the panels and Extract follow it
    filename: str = ""
    collection_id: str = ""
    facts: list[LinkItem] = []
    text: str = ""
    truncated: bool = False
    extraction_status: str = ""
    can_extract: bool = False
    error: str = ""
    completions: int = 0
    _wanted: str = ""  # the id the URL names

    def _clear(self) -> None:
        self.asset_id = self.filename = self.collection_id = self.text = self.extraction_status = ""
        self.facts, self.truncated, self.can_extract, self.completions = [], False, False, 0

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        params = route_params(self.router.url.path)
        self._clear()
        self.slug, self._wanted = params.get("slug", ""), unquote(params.get("id", ""))
        await follow_my_runs(self, principal)
        await self._refresh()
        return None

    async def _refresh(self) -> None:
        principal = (await principal_or_redirect(self))[0]
        if principal is None:
            return
        try:
            data = await asyncio.to_thread(_read, self.slug, self._wanted, principal)
        except CuratoreError as exc:
            self._clear()
            self.error = exc.message
            return
        self.error = ""
        self.asset_id = self._wanted
        self.facts, self.text, self.truncated = data["facts"], data["text"], data["truncated"]
        self.extraction_status, self.filename = data["status"], data["filename"]
        self.collection_id, self.can_extract = data["collection_id"], data["can_extract"]

    @rx.event
    async def extract(self) -> None:
        principal = (await principal_or_redirect(self))[0]
        if principal is None or not self.asset_id or self.error:  # no asset here: nothing to extract
            return

        def start() -> None:
            actions.submit(principal, "extraction", {"asset_id": self.asset_id}, get_org(self.slug).id,
                           display_name=self.filename)

        try:
            await asyncio.to_thread(start)
        except CuratoreError as exc:
            self.error = exc.message

    @rx.event
    async def extraction_done(self) -> None:
        """The panel's on_complete: the last extraction of this asset ended."""
        self.completions += 1
        await self._refresh()


def _found() -> rx.Component:
    busy = is_resource_busy("asset", AssetState.asset_id)
    return rx.vstack(
        rx.hstack(
            rx.heading(AssetState.filename, size="5", overflow_wrap="anywhere"),
            rx.badge(AssetState.extraction_status, data_testid="extraction-status"),
            rx.spacer(),
            rx.cond(AssetState.can_extract, rx.button(rx.icon("file-text", size=14), "Extract text",
                                                      on_click=AssetState.extract, disabled=busy,
                                                      data_testid="extract-button")),
            align="center", width="100%", wrap="wrap",
        ),
        job_progress_panel("asset", AssetState.asset_id, on_complete=AssetState.extraction_done),
        rx.cond(AssetState.completions > 0, rx.text("Extraction finished: the text below was reloaded.", size="1",
                                                    color_scheme="green", data_testid="panel-callbacks",
                                                    data_count=AssetState.completions)),
        rx.cond(AssetState.collection_id != "", rx.vstack(
            rx.text("Collection ", rx.link(AssetState.collection_id, href=f"/orgs/{AssetState.slug}/collections/"
                                           + AssetState.collection_id.to(str)),
                    size="2", color_scheme="gray"),
            job_progress_panel("collection", AssetState.collection_id, variant="compact"), width="100%")),
        rx.grid(
            rx.card(rx.heading("Extracted text", size="3"),
                    rx.cond(AssetState.text != "",
                            rx.el.pre(AssetState.text, white_space="pre-wrap", font_size="13px", max_height="40rem",
                                      overflow="auto", data_testid="extracted-text"),
                            rx.text("No text yet.", color_scheme="gray", size="2")),
                    rx.cond(AssetState.truncated, rx.text("(truncated)", size="1", color_scheme="gray"))),
            rx.card(rx.heading("File", size="3"), rx.data_list.root(rx.foreach(AssetState.facts, lambda f:
                    rx.data_list.item(rx.data_list.label(f.label), rx.data_list.value(f.name))), size="1")),
            grid_template_columns=rx.breakpoints(initial="minmax(0, 1fr)", md="minmax(0, 2fr) minmax(0, 1fr)"),
            spacing="4", width="100%",
        ),
        spacing="4", width="100%",
    )


def page() -> rx.Component:
    return layout(
        "Asset",
        rx.cond(AssetState.error != "",
                rx.callout(AssetState.error, color_scheme="gray", icon="circle-help", data_testid="asset-error"),
                rx.cond(AssetState.asset_id != "", _found())),
    )
