"""The state behind a resource's page (a SAM.gov search, a forecast sync, a scrape collection): its runs, newest
first, live; each page subclasses :class:`ResourceRunsState` and names its resource type."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar
from urllib.parse import unquote

import reflex as rx
from sqlalchemy import select

from backend.auth.orgs import get_org
from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.errors import CuratoreError, NotFound
from backend.runs import listing
from backend.runs.queries import RunFilter, list_runs
from curatore_ui.live import Watch, bridge, current_seq
from curatore_ui.state.session import principal_or_redirect
from curatore_ui.state.toasts import follow_my_runs
from curatore_ui.state.views import LinkItem, RunRow, route_params, run_row

RUN_WINDOW = 25


def read_resource(slug: str, resource_type: str, resource_id: str, principal: Any,
                  with_assets: bool = False) -> dict[str, Any]:
    """The resource's latest runs (with child counts and queue positions) and, for a collection, its files."""
    try:
        org = get_org(slug)
    except NotFound:
        raise NotFound("That organization does not exist.") from None
    principal.require("view", org.id, "That organization")
    runs = list_runs(RunFilter(organization_id=org.id, resource_type=resource_type, resource_id=resource_id),
                     limit=RUN_WINDOW)
    extra = listing.annotate(runs)
    rows = [run_row(r, org_slug=slug, scoped_slug=slug, principal=principal, children=extra.child_counts.get(r.id),
                    queue_position=extra.queue_positions.get(r.id, 0), eta_seconds=extra.etas.get(r.id))
            for r in runs]
    files: list[LinkItem] = []
    if with_assets:
        def read(s: Any) -> list[Asset]:
            return list(s.execute(select(Asset).where(Asset.organization_id == org.id,
                                                      Asset.collection_id == resource_id,
                                                      Asset.deleted_at.is_(None))
                                  .order_by(Asset.filename).limit(200)).scalars().all())
        files = [LinkItem(a.filename, f"{a.size_bytes:,} bytes", f"/orgs/{slug}/assets/{a.id}", "file", "blue")
                 for a in in_transaction(read, read_only=True)]
    return {"rows": rows, "files": files, "org_id": str(org.id)}


class ResourceRunsState(rx.State):
    resource_type: ClassVar[str] = ""
    with_assets: ClassVar[bool] = False

    live_seq: int = 0
    slug: str = ""
    resource_id: str = ""
    runs: list[RunRow] = []
    files: list[LinkItem] = []
    error: str = ""

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        params = route_params(self.router.url.path)
        self.slug, self.resource_id = params.get("slug", ""), unquote(params.get("id", ""))
        self.runs, self.files, self.error = [], [], ""
        seq = await asyncio.to_thread(current_seq)
        await follow_my_runs(self, principal)
        await self._refresh(principal)
        self.live_seq = seq
        bridge.watch(self.router.session.client_token,
                     Watch(type(self), resources=((self.resource_type, self.resource_id),), since_seq=seq,
                           visible_orgs=bridge.scope(principal)))
        return None

    async def _refresh(self, principal: Any = None) -> None:
        principal = principal or (await principal_or_redirect(self))[0]
        if principal is None:
            return
        try:
            data = await asyncio.to_thread(read_resource, self.slug, self.resource_type, self.resource_id,
                                           principal, self.with_assets)
        except CuratoreError as exc:
            self.error, self.runs, self.files = exc.message, [], []
            return
        self.error, self.runs, self.files = "", data["rows"], data["files"]

    async def apply_live(self, events: list[dict[str, Any]]) -> list[Any] | None:
        if any(e["kind"] in ("created", "status") for e in events):
            await self._refresh()
        return None
