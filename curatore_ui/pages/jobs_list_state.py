"""State of the jobs list: filters, one keyset page, counts, selection; live."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import reflex as rx

from backend.auth.orgs import get_org
from backend.errors import CuratoreError, NotFound
from backend.jobtypes.registry import get_registry
from backend import actions
from backend.auth.access import Forbidden
from backend.runs import listing
from backend.db.states import RunOrigin, RunStatus
from curatore_ui.live import Watch, bridge, current_seq
from curatore_ui.state.session import SessionState, principal_or_redirect
from curatore_ui.state.toasts import end_toast
from curatore_ui.state.views import RunRow, counter_text, route_params, run_row

PAGE_SIZE = 25
S = RunStatus
STATUS_GROUPS: dict[str, tuple[RunStatus, ...]] = {
    "pending": (S.PENDING, S.SUBMITTED),
    "running": (S.RUNNING, S.CANCELLING),
    "completed": (S.COMPLETED,),
    "failed": (S.FAILED, S.TIMED_OUT),
    "cancelled": (S.CANCELLED,),
    "stale": (S.STALE,),
}


@dataclasses.dataclass
class TypeTab:
    key: str = ""
    label: str = ""
    count: int = 0
    icon: str = "box"
    color: str = "gray"


def _date(value: str, end: bool = False) -> datetime | None:
    if not value:
        return None
    day = datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
    return day + timedelta(days=1) if end else day


def build_query(org_id: uuid.UUID | None, f: dict[str, str]) -> listing.ListQuery:
    return listing.ListQuery(
        organization_id=org_id,
        run_types=(f["type"],) if f.get("type", "all") != "all" else (),
        statuses=STATUS_GROUPS.get(f.get("status", "all"), ()),
        origins=(RunOrigin(f["origin"]),) if f.get("origin", "all") != "all" else (),
        created_from=_date(f.get("from", "")),
        created_to=_date(f.get("to", ""), end=True),
        search=f.get("search", ""),
        sort="priority" if f.get("sort") == "priority" else "created",
    )


def visible_org_id(org_slug: str, principal: Any) -> uuid.UUID:
    """The organization's id, if the principal sees it; a slug that does not exist gets the same answer as one
    the principal may not see (and is never created here: only system admins create organizations, with
    ``curatore orgs create``)."""
    try:
        org_id = get_org(org_slug).id
    except NotFound:
        raise NotFound("That organization does not exist.") from None
    principal.require("view", org_id, "That organization")
    return org_id


def _read(org_slug: str, filters: dict[str, str], cursor: str | None, scoped: bool, principal: Any) -> dict[str, Any]:
    if org_slug:
        org_id = visible_org_id(org_slug, principal)
    elif principal.is_system_admin:
        org_id = None
    else:
        raise Forbidden("Only system admins see every organization's jobs.")
    q = build_query(org_id, filters)
    pg = listing.page(q, cursor, PAGE_SIZE)
    rows = [
        run_row(r, org_slug=pg.org_slugs.get(r.organization_id, ""), children=pg.child_counts.get(r.id),
                queue_position=pg.queue_positions.get(r.id, 0), eta_seconds=pg.etas.get(r.id),
                scoped_slug=org_slug if scoped else None)
        for r in pg.runs
    ]
    counts = listing.type_counts(q)
    registry = get_registry()
    tabs = [TypeTab("all", "All", sum(counts.values()), "layers", "gray")] + [
        TypeTab(t.key, t.label, counts.get(t.key, 0), t.icon, t.color) for t in registry.types.values()
    ]
    return {"rows": rows, "next": pg.next_cursor or "", "tabs": tabs, "cards": listing.status_cards(org_id),
            "org_id": str(org_id) if org_id else ""}


class JobsListState(rx.State):
    live_seq: int = 0
    org_slug: str = ""
    filters: dict[str, str] = {"type": "all", "status": "all", "origin": "all", "from": "", "to": "",
                               "search": "", "sort": "created"}
    rows: list[RunRow] = []
    tabs: list[TypeTab] = []
    cards: dict[str, int] = {}
    cursor: str = ""
    prev_cursors: list[str] = []
    next_cursor: str = ""
    selected: list[str] = []
    started: list[str] = []  # runs this client started here (retries, samples): toasted when they end
    toasted: list[str] = []
    notice: str = ""
    error: str = ""

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        self.org_slug = route_params(self.router.url.path).get("slug", "")
        if not self.org_slug and not principal.is_system_admin:
            orgs = (await self.get_state(SessionState)).orgs
            if orgs:
                return rx.redirect(f"/orgs/{orgs[0]['slug']}/jobs")
        self.cursor, self.prev_cursors, self.selected = "", [], []
        await self._refresh(watch=True, principal=principal)
        return None

    async def _refresh(self, watch: bool = False, principal: Any = None) -> None:
        principal = principal or await self._principal()
        if principal is None:
            return
        seq = await asyncio.to_thread(current_seq)
        try:
            data = await asyncio.to_thread(_read, self.org_slug, dict(self.filters), self.cursor or None,
                                           bool(self.org_slug), principal)
        except CuratoreError as exc:
            self.error = exc.message
            self.rows, self.tabs, self.cards = [], [], {}
            return
        self.error = ""
        self.rows, self.tabs, self.cards, self.next_cursor = data["rows"], data["tabs"], data["cards"], data["next"]
        if watch:
            self.live_seq = seq
            scope = Watch(JobsListState, organization_id=data["org_id"] or None,
                          all_organizations=not data["org_id"], since_seq=seq, visible_orgs=bridge.scope(principal))
            bridge.watch(self.router.session.client_token, scope)

    async def apply_live(self, events: list[dict[str, Any]]) -> list[Any] | None:
        toasts = self._toasts(events)
        if any(e["kind"] in ("created", "status") for e in events):
            await self._refresh()
            return toasts
        by_id = {row.id: i for i, row in enumerate(self.rows)}
        for event in events:
            if event["kind"] == "progress" and event["run_id"] in by_id:
                i = by_id[event["run_id"]]
                progress = event["payload"]["progress"]
                self.rows[i] = dataclasses.replace(
                    self.rows[i],
                    percent=float(progress.get("percent") or 0.0),
                    has_percent=progress.get("percent") is not None,
                    phase=progress.get("phase") or "",
                    counter=counter_text(progress),
                )
        return toasts

    def _toasts(self, events: list[dict[str, Any]]) -> list[Any]:
        out = []
        for event in events:
            if event["kind"] == "status" and event["run_id"] in self.started and event["run_id"] not in self.toasted:
                run = event["payload"]["run"]
                toast = end_toast(event["run_id"], run["run_type"], event["payload"]["status"],
                                  event["payload"].get("event", {}).get("message", ""), name=run.get("display_name"))
                if toast is not None:
                    self.toasted.append(event["run_id"])
                    out.append(toast)
        return out

    # ------------------------------------------------------------------ filters and paging
    @rx.event
    async def set_filter(self, key: str, value: str) -> None:
        self.filters[key] = value
        self.cursor, self.prev_cursors = "", []
        await self._refresh()

    @rx.event
    async def next_page(self) -> None:
        if self.next_cursor:
            self.prev_cursors.append(self.cursor)
            self.cursor = self.next_cursor
            await self._refresh()

    @rx.event
    async def prev_page(self) -> None:
        if self.prev_cursors:
            self.cursor = self.prev_cursors.pop()
            await self._refresh()

    # ------------------------------------------------------------------ selection and bulk actions
    @rx.event
    def toggle(self, run_id: str) -> None:
        if run_id in self.selected:
            self.selected.remove(run_id)
        else:
            self.selected.append(run_id)

    @rx.event
    def toggle_page(self, checked: bool) -> None:
        ids = [r.id for r in self.rows]
        self.selected = sorted(set(self.selected) | set(ids)) if checked else [i for i in self.selected if i not in ids]

    async def _principal(self) -> Any:
        return (await principal_or_redirect(self))[0]

    async def _cancel(self, ids: list[str]) -> tuple[int, list[str]]:
        principal = await self._principal()
        return await asyncio.to_thread(_each, ids, lambda rid: actions.cancel(principal, rid))

    async def _retry(self, ids: list[str]) -> tuple[int, list[str]]:
        principal = await self._principal()
        return await asyncio.to_thread(
            _each, ids, lambda rid: self.started.append(str(actions.retry(principal, rid).id)))

    @rx.event
    async def bulk_cancel(self) -> None:
        done, errors = await self._cancel(list(self.selected))
        self.notice = f"Cancel requested for {done} run(s)" + (f"; not cancelled: {errors[0]}" if errors else "")
        self.selected = []

    @rx.event
    async def bulk_retry(self) -> None:
        done, errors = await self._retry(list(self.selected))
        self.notice = f"Retried {done} run(s)" + (f"; not retried: {errors[0]}" if errors else "")
        self.selected = []
        await self._refresh()

    @rx.event
    async def cancel_one(self, run_id: str) -> None:
        done, errors = await self._cancel([run_id])
        self.notice = "Cancel requested" if done else errors[0]

    @rx.event
    async def retry_one(self, run_id: str) -> None:
        done, errors = await self._retry([run_id])
        self.notice = "Retry started" if done else errors[0]

    @rx.event
    async def start_samples(self) -> None:
        principal = await self._principal()
        if principal is None:  # signed out meanwhile: the redirect to the login page follows
            return
        try:
            runs = await asyncio.to_thread(_start_samples, self.org_slug, principal)
        except CuratoreError as exc:
            self.notice = exc.message
            return
        self.started.extend(str(r.id) for r in runs)
        self.notice = f"Started {len(runs)} sample jobs on the bundled sample files"

    @rx.var
    def page_number(self) -> int:
        return len(self.prev_cursors) + 1


def _start_samples(org_slug: str, principal: Any) -> list[Any]:
    """Sample runs in an existing organization, checked before anything is written; the system-only health
    check only for a system admin."""
    from backend.config import get_settings
    from backend.demo.samples import start_samples

    org_id = visible_org_id(org_slug or get_settings().default_org_slug, principal)
    principal.require("submit", org_id, "That organization")
    return start_samples(org_id, created_by=principal.name, system_admin=principal.is_system_admin)


def _each(ids: list[str], action: Any) -> tuple[int, list[str]]:
    done, errors = 0, []
    for rid in ids:
        try:
            action(uuid.UUID(rid))
            done += 1
        except CuratoreError as exc:
            errors.append(exc.message)
    return done, errors
