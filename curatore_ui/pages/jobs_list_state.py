"""State of the jobs list: filters, one keyset page, counts, selection; live."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import reflex as rx

from backend.auth.orgs import get_org
from backend.errors import CuratoreError, NotFound
from backend.jobtypes.registry import get_registry
from backend import actions
from backend.auth.access import Forbidden
from backend import list_sort
from backend.db.types import utcnow
from backend.runs import listing
from backend.db.states import RunOrigin, RunStatus
from backend.config import get_settings
from curatore_ui.live import SharedReads, Watch, bridge, current_seq
from curatore_ui.state.session import SessionState, principal_or_redirect
from curatore_ui.state.permissions import may
from curatore_ui.state.toasts import follow_my_runs
from curatore_ui.state.views import RunRow, counter_text, phase_label, route_params, run_row

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
# Each status card is a filter: (status group, only runs that ended in the last 24 h).
CARD_FILTERS: dict[str, tuple[str, str]] = {
    "pending": ("pending", ""), "running": ("running", ""), "done_24h": ("completed", "24h"),
    "failed_24h": ("failed", "24h"), "stale": ("stale", ""),
}
SORTS = ("created", "priority", "duration", "status", "type")
DEFAULTS: dict[str, str] = {"type": "all", "status": "all", "origin": "all", "from": "", "to": "", "search": "",
                            "sort": "created", "dir": "desc", "window": ""}
# filter key -> its name in the page's URL query
QUERY_NAMES = {"type": "type", "status": "status", "origin": "origin", "from": "from", "to": "to", "search": "q",
               "sort": "sort", "dir": "dir", "window": "ended"}


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


def _valid_date(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat() if len(value) == 10 else ""
    except ValueError:
        return ""


def filters_from_query(query: dict[str, str]) -> tuple[dict[str, str], str, list[str]]:
    """The filters, page cursor and earlier cursors a URL query names; anything unknown or malformed falls back
    to its default (a shared link never breaks the page)."""
    f = dict(DEFAULTS)
    get = {k: str(query.get(name, "")).strip() for k, name in QUERY_NAMES.items()}
    registry = get_registry()
    if get["type"] in registry.types:
        f["type"] = get["type"]
    if get["status"] in STATUS_GROUPS:
        f["status"] = get["status"]
    if get["origin"] in {o.value for o in RunOrigin}:
        f["origin"] = get["origin"]
    f["from"], f["to"] = _valid_date(get["from"]), _valid_date(get["to"])
    f["search"] = get["search"][:200]
    if get["sort"] in SORTS:
        f["sort"] = get["sort"]
    if get["dir"] == "asc" and f["sort"] != "priority":
        f["dir"] = "asc"
    if get["window"] == "24h" and f["status"] in ("completed", "failed"):
        f["window"] = "24h"
    cursor = str(query.get("cursor", ""))[:2000]
    # the earlier pages' cursors, "-" for the first page's (which has none)
    back = [("" if c == "-" else c) for c in str(query.get("back", "")).split(".") if c][:200] if cursor else []
    return f, cursor, back


def query_string(f: dict[str, str], cursor: str, back: list[str]) -> str:
    """The URL query of a list view: only what differs from the defaults."""
    pairs = [(QUERY_NAMES[k], v) for k, v in f.items() if k in QUERY_NAMES and v != DEFAULTS.get(k)]
    if cursor:
        pairs.append(("cursor", cursor))
        if back:
            pairs.append(("back", ".".join(c or "-" for c in back)))
    return urlencode(pairs)


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


def _page(q: listing.ListQuery, f: dict[str, str], cursor: str | None) -> listing.Page:
    """Newest first and priority order: the list's own keyset; the other columns, either direction, and the
    24 h cards: ``backend.list_sort``."""
    window = utcnow() - timedelta(hours=24) if f.get("window") == "24h" else None
    if f.get("sort") == "priority" or (f.get("sort", "created") == "created" and f.get("dir") != "asc"
                                       and window is None):
        return listing.page(q, cursor, PAGE_SIZE)
    return list_sort.page(q, f.get("sort", "created"), f.get("dir") != "asc", cursor, PAGE_SIZE,
                          completed_since=window)


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


def _org_id_for(org_slug: str, principal: Any) -> uuid.UUID | None:
    """The list's organization (None: all of them), if the principal may see it."""
    if org_slug:
        return visible_org_id(org_slug, principal)
    if principal.is_system_admin:
        return None
    raise Forbidden("Only system admins see every organization's jobs.")


def _scope_read(org_id: uuid.UUID | None, filters: dict[str, str], cursor: str | None) -> dict[str, Any]:
    """What a list scope shows whoever looks: one page of runs, the type counts and the status cards. Shared
    by every client watching the same scope (``SharedReads``); no principal goes in."""
    q = build_query(org_id, filters)
    return {"page": _page(q, filters, cursor), "counts": listing.type_counts(q),
            "cards": listing.status_cards(org_id), "org_id": org_id, "filters": dict(filters), "cursor": cursor or ""}


def _shape(scope: dict[str, Any], org_slug: str, scoped: bool, principal: Any,
           default_org_id: uuid.UUID | None) -> dict[str, Any]:
    """A scope's data as one principal sees it: its row actions and buttons (no database work)."""
    pg, org_id = scope["page"], scope["org_id"]
    rows = [
        run_row(r, org_slug=pg.org_slugs.get(r.organization_id, ""), children=pg.child_counts.get(r.id),
                queue_position=pg.queue_positions.get(r.id, 0), eta_seconds=pg.etas.get(r.id),
                scoped_slug=org_slug if scoped else None, principal=principal)
        for r in pg.runs
    ]
    counts = scope["counts"]
    registry = get_registry()
    tabs = [TypeTab("all", "All", sum(counts.values()), "layers", "gray")] + [
        TypeTab(t.key, t.label, counts.get(t.key, 0), t.icon, t.color) for t in registry.types.values()
    ]
    return {"rows": rows, "next": pg.next_cursor or "", "tabs": tabs, "cards": scope["cards"],
            "org_id": str(org_id) if org_id else "",
            "can_act": may(principal, "cancel", org_id) or may(principal, "retry", org_id),
            "can_submit": may(principal, "submit", org_id or default_org_id)}


def _read(org_slug: str, filters: dict[str, str], cursor: str | None, scoped: bool, principal: Any) -> dict[str, Any]:
    scope = _scope_read(_org_id_for(org_slug, principal), filters, cursor)
    return _shape(scope, org_slug, scoped, principal, _default_org_id())


def _scope_key(org_id: uuid.UUID | None, filters: dict[str, str], cursor: str) -> tuple[Any, ...]:
    return (org_id, tuple(sorted(filters.items())), cursor)


shared_lists = SharedReads(lambda: get_settings().live_list_seconds)


def _prefetch_for(org_id: uuid.UUID | None, filters: dict[str, str], cursor: str) -> Any:
    """A list watch's prefetch: after a ``created`` or ``status`` event, the scope's shared read."""
    key = _scope_key(org_id, filters, cursor)

    async def prefetch(events: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not any(e["kind"] in ("created", "status") for e in events):
            return None
        try:
            return await shared_lists.get(key, events[-1]["seq"], lambda: _scope_read(org_id, filters, cursor or None),
                                          lambda: bridge.cursor)
        except Exception:  # the state re-reads on its own, and reports what went wrong
            return None

    return prefetch


def _default_org_id() -> uuid.UUID | None:
    from backend.config import get_settings

    try:
        return get_org(get_settings().default_org_slug).id
    except NotFound:
        return None


class JobsListState(rx.State):
    live_seq: int = 0
    org_slug: str = ""
    filters: dict[str, str] = dict(DEFAULTS)
    rows: list[RunRow] = []
    tabs: list[TypeTab] = []
    cards: dict[str, int] = {}
    cursor: str = ""
    prev_cursors: list[str] = []
    next_cursor: str = ""
    selected: list[str] = []
    can_act: bool = False  # the role may cancel or retry here: row checkboxes, bulk and row actions
    can_submit: bool = False  # the role may start runs here: "Start sample jobs"
    _default_org: tuple[uuid.UUID | None, ...] = ()  # (the default organization's id or None), once read
    _watched: tuple[Any, ...] = ()  # the view the client's watch follows: (slug, filters, cursor)
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
        self.filters, self.cursor, self.prev_cursors = filters_from_query(dict(self.router.url.query_parameters))
        self.selected, self.notice = [], ""
        await follow_my_runs(self, principal)
        await self._refresh(watch=True, principal=principal)
        return None

    async def _refresh(self, watch: bool = False, principal: Any = None) -> None:
        principal = principal or await self._principal()
        if principal is None:
            return
        view = (self.org_slug, tuple(sorted(self.filters.items())), self.cursor)
        watch = watch or view != self._watched  # a new filter or page is a new shared scope to follow
        seq = await asyncio.to_thread(current_seq) if watch else 0
        try:
            data = await asyncio.to_thread(_read, self.org_slug, dict(self.filters), self.cursor or None,
                                           bool(self.org_slug), principal)
        except listing.InvalidCursor:  # a link with a broken page cursor: its first page
            self.cursor, self.prev_cursors = "", []
            self.notice = "That page link is no longer valid; showing the first page."
            data = await asyncio.to_thread(_read, self.org_slug, dict(self.filters), None, bool(self.org_slug),
                                           principal)
        except CuratoreError as exc:
            self.error = exc.message
            self.rows, self.tabs, self.cards, self.can_act, self.can_submit = [], [], {}, False, False
            return
        self._show(data)
        if watch:
            self.live_seq, self._watched = seq, (self.org_slug, tuple(sorted(self.filters.items())), self.cursor)
            org_id = uuid.UUID(data["org_id"]) if data["org_id"] else None
            scope = Watch(JobsListState, organization_id=data["org_id"] or None, all_organizations=not data["org_id"],
                          since_seq=seq, visible_orgs=bridge.scope(principal),
                          prefetch=_prefetch_for(org_id, dict(self.filters), self.cursor))
            bridge.watch(self.router.session.client_token, scope)

    def _show(self, data: dict[str, Any]) -> None:
        """Assign only what changed: a var assigned is sent to the browser again, equal or not."""
        for var, value in (("error", ""), ("rows", data["rows"]), ("tabs", data["tabs"]), ("cards", data["cards"]),
                           ("next_cursor", data["next"]), ("can_act", data["can_act"]),
                           ("can_submit", data["can_submit"])):
            if getattr(self, var) != value:
                setattr(self, var, value)

    async def apply_live(self, events: list[dict[str, Any]], prefetched: dict[str, Any] | None = None
                         ) -> list[Any] | None:
        if any(e["kind"] in ("created", "status") for e in events):
            principal = await self._principal()
            if (prefetched is not None and principal is not None and prefetched["filters"] == self.filters
                    and prefetched["cursor"] == self.cursor):
                if not self._default_org:
                    self._default_org = (await asyncio.to_thread(_default_org_id),)
                # shaped once per kind of principal (its roles) for every client watching the scope
                view = (principal.is_system_admin, frozenset(principal.roles.items()), self.org_slug,
                        self._default_org[0])
                shaped = prefetched.setdefault("shaped", {})
                if view not in shaped:
                    shaped[view] = _shape(prefetched, self.org_slug, bool(self.org_slug), principal,
                                          self._default_org[0])
                mine = shaped[view]  # copies of the containers: a state patches its own rows in place
                self._show({**mine, "rows": list(mine["rows"]), "tabs": list(mine["tabs"]), "cards": dict(mine["cards"])})
            else:
                await self._refresh()
            return None
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
                    phase_label=phase_label(progress.get("phase") or ""),
                    counter=counter_text(progress),
                )
        return None

    # ------------------------------------------------------------------ filters, sorting and paging (all in the URL)
    def _url_sync(self) -> Any:
        """The page's URL query follows the view (replaced, not pushed): a copied link shows the same list."""
        query = query_string(dict(self.filters), self.cursor, list(self.prev_cursors))
        path = self.router.url.path or "/"
        return rx.call_script(f"window.history.replaceState(window.history.state, '', {json.dumps(path + ('?' + query if query else ''))})")

    async def _apply(self, **changes: str):  # type: ignore[no-untyped-def]
        self.filters = {**self.filters, **changes}
        if self.filters.get("status") not in ("completed", "failed"):
            self.filters["window"] = ""
        self.cursor, self.prev_cursors = "", []
        await self._refresh()
        return self._url_sync()

    @rx.event
    async def set_filter(self, key: str, value: str):  # type: ignore[no-untyped-def]
        if key not in DEFAULTS or key in ("sort", "dir", "window"):
            return None
        return await self._apply(**{key: str(value)[:200]})

    @rx.event
    async def search(self, form: dict[str, Any]):  # type: ignore[no-untyped-def]
        """Enter in the search box (the form's submit)."""
        return await self._apply(search=str(form.get("search", ""))[:200])

    @rx.event
    async def search_typed(self, value: str):  # type: ignore[no-untyped-def]
        """Typing in the search box, debounced by the input."""
        if value.strip() == self.filters.get("search", "").strip():
            return None
        return await self._apply(search=str(value)[:200])

    @rx.event
    async def pick_card(self, card: str):  # type: ignore[no-untyped-def]
        """A status card: filter by it, or clear that filter if it is the one applied."""
        if card not in CARD_FILTERS:
            return None
        status, window = CARD_FILTERS[card]
        if self.filters.get("status") == status and self.filters.get("window", "") == window:
            status, window = "all", ""
        return await self._apply(status=status, window=window)

    @rx.event
    async def sort_by(self, column: str):  # type: ignore[no-untyped-def]
        """A column header: sort by it (longest, latest or last-in-order first), again for the other way."""
        if column not in SORTS:
            return None
        if self.filters.get("sort") == column and column != "priority":
            direction = "asc" if self.filters.get("dir") == "desc" else "desc"
        else:
            direction = "asc" if column in ("status", "type") else "desc"
        return await self._apply(sort=column, dir=direction)

    @rx.event
    async def sort_choice(self, value: str):  # type: ignore[no-untyped-def]
        """The sort menu: ``column:direction``."""
        column, _, direction = str(value).partition(":")
        if column not in SORTS or direction not in ("asc", "desc"):
            return None
        return await self._apply(sort=column, dir="desc" if column == "priority" else direction)

    @rx.event
    async def next_page(self):  # type: ignore[no-untyped-def]
        if self.next_cursor:
            self.prev_cursors.append(self.cursor)
            self.cursor = self.next_cursor
            await self._refresh()
            return self._url_sync()
        return None

    @rx.event
    async def prev_page(self):  # type: ignore[no-untyped-def]
        if self.prev_cursors:
            self.cursor = self.prev_cursors.pop()
            await self._refresh()
            return self._url_sync()
        return None

    @rx.var
    def active_card(self) -> str:
        for card, (status, window) in CARD_FILTERS.items():
            if self.filters.get("status") == status and self.filters.get("window", "") == window:
                return card
        return ""

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
        return await asyncio.to_thread(_each, ids, lambda rid: actions.retry(principal, rid))

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
