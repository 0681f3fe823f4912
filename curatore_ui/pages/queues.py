"""Queue admin: `/system/queues`, for system admins (``Principal.may_administer_queues``): each queue's depth and
limit with its own throughput and duration charts, workers online, the job-type registry with the overrides
applied, and the scheduled tasks with their runs, keyset-paged. Anyone else gets a "not allowed" inside the
layout, with links to their own organizations' waiting runs (and no sidebar link to this page)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import reflex as rx

from backend import actions, schedules
from backend.auth.access import submit_needs
from backend.errors import CuratoreError
from backend.jobtypes.registry import Registry, RetryPolicy, get_registry
from backend.queues import stats, workers
from curatore_ui.components.layout import layout
from curatore_ui.components.run_table import WIDE_ONLY, run_table
from curatore_ui.components.status_badge import status_badge
from curatore_ui.live import Watch, bridge, current_seq
from curatore_ui.state.permissions import may_administer_queues
from curatore_ui.state.session import SessionState, principal_or_redirect
from curatore_ui.state.views import RunRow, ago, duration_text, run_href, run_row, ts

HOURS = 12  # of throughput and duration history
HISTORY_PAGE = 10  # runs per page of a schedule's history


@dataclasses.dataclass
class QueueRow:
    name: str = ""
    label: str = ""
    description: str = ""
    pending: int = 0
    running: int = 0
    stale: int = 0
    limit: int = 0
    load: int = 0
    limit_builtin: str = ""  # the built-in limit when an override changed it, else ""
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # HOURS rows of stats.history
    finished: int = 0  # completed + failed in the HOURS shown
    summary: str = ""


@dataclasses.dataclass
class TypeRow:
    key: str = ""
    label: str = ""
    icon: str = "box"
    color: str = "gray"
    queue: str = ""
    limit: str = ""
    timeout: str = ""
    retries: str = ""
    submit: str = ""
    source: str = ""  # the CURATORE_JOB_MODULES module that adds it ("" for a built-in type)
    overrides: str = ""  # what the overrides file changed, in words


@dataclasses.dataclass
class OverrideRow:
    what: str = ""
    name: str = ""
    field: str = ""
    builtin: str = ""
    value: str = ""


@dataclasses.dataclass
class WorkerRow:
    hostname: str = ""
    queues: str = ""
    concurrency: int = 0
    active_runs: int = 0
    last_seen: str = ""
    started: str = ""


@dataclasses.dataclass
class ScheduleRow:
    name: str = ""
    description: str = ""
    run_type: str = ""
    every: str = ""
    enabled: bool = True
    last_run_href: str = ""
    last_status: str = ""
    last_run: str = ""
    next_run: str = ""


def _schedule_row(d: dict[str, Any]) -> ScheduleRow:
    return ScheduleRow(d["name"], d["description"], d["run_type"], f"every {duration_text(d['interval_seconds'])}",
                       d["enabled"], run_href(d["last_run_id"]) if d["last_run_id"] else "",
                       d["last_run_status"] or "", ago(d["last_run_at"]) if d["last_run_at"] else "never",
                       ts(d["next_run_at"]) if d["next_run_at"] and d["enabled"] else "")


def _field_text(field: str, value: Any) -> str:
    """An overridable registry value in words."""
    if value is None:
        return "none"
    if field == "timeout_seconds":
        return duration_text(value)
    return str(value)


FIELD_NAMES = {"max_concurrency": "max concurrency", "timeout_seconds": "timeout", "default_priority":
               "default priority", "queue": "queue", "label": "label"}


def override_rows(registry: Registry) -> list[OverrideRow]:
    """Every value the overrides file changed: queue or type, field, built-in value, value now."""
    return [OverrideRow("queue" if kind == "queues" else "job type", name, FIELD_NAMES.get(f, f),
                        _field_text(f, before), _field_text(f, after))
            for kind in ("queues", "job_types") for name, fields in registry.overridden.get(kind, {}).items()
            for f, (before, after) in fields.items()]


def retry_text(policy: RetryPolicy) -> str:
    """"3 attempts, 1 min then ×2 (max 10 min)": attempts count the first one; then the backoff."""
    if policy.max_attempts <= 1:
        return "none"
    return (f"{policy.max_attempts} attempts, {duration_text(policy.backoff_seconds)} then "
            f"×{policy.backoff_factor:g} (max {duration_text(policy.max_backoff_seconds)})")


def chart_hours(hours: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Hours as the charts draw them: no duration (a gap in the line, not a zero) where nothing finished."""
    return [h if h["completed"] or h["failed"] or h["mean_s"] else {**h, "mean_s": None, "p95_s": None}
            for h in hours]


def type_rows(registry: Registry) -> list[TypeRow]:
    """The registry's job types as the page lists them, the overrides applied to each in words."""
    changed = registry.overridden.get("job_types", {})
    rows = []
    for t in sorted(registry.types.values(), key=lambda t: (t.queue, t.key)):
        queue = registry.queues[t.queue]
        limit = (f"{t.max_concurrency} (queue {queue.max_concurrency})" if t.max_concurrency
                 else f"queue's ({queue.max_concurrency})")
        edits = "; ".join(f"{FIELD_NAMES.get(f, f)} {_field_text(f, after)} (built-in {_field_text(f, before)})"
                          for f, (before, after) in changed.get(t.key, {}).items())
        rows.append(TypeRow(t.key, t.label, t.icon, t.color, t.queue, limit, duration_text(t.timeout_seconds),
                            retry_text(t.retry_policy), submit_needs(t), registry.sources.get(t.key, ""), edits))
    return rows


def queue_rows(depths: list[dict[str, Any]], history: dict[str, list[dict[str, Any]]],
               registry: Registry) -> list[QueueRow]:
    changed = registry.overridden.get("queues", {})
    rows = []
    for q in depths:
        hours = history.get(q["name"], [])
        completed, failed = sum(h["completed"] for h in hours), sum(h["failed"] for h in hours)
        slowest = max((h["p95_s"] for h in hours), default=0)
        summary = (f"{completed} completed, {failed} failed in {HOURS} h"
                   + (f"; p95 up to {duration_text(slowest)}" if slowest else ""))
        before = changed.get(q["name"], {}).get("max_concurrency")
        rows.append(QueueRow(**q, load=min(100, int(100 * q["running"] / q["limit"])) if q["limit"] else 0,
                             limit_builtin=str(before[0]) if before else "", history=chart_hours(hours),
                             finished=completed + failed, summary=summary))
    return rows


def _read() -> dict[str, Any]:
    registry = get_registry()
    queues = queue_rows(stats.queue_depths(), stats.history_by_queue(HOURS), registry)
    nodes = [WorkerRow(w["hostname"], ", ".join(w["queues"]), w["concurrency"], w["active_runs"],
                       ago(w["last_seen_at"]), ago(w["started_at"])) for w in workers.online()]
    plans = [_schedule_row(schedules.describe(t)) for t in schedules.list_schedules()]
    return {"queues": queues, "workers": nodes, "schedules": plans, "types": type_rows(registry),
            "overrides": override_rows(registry), "overrides_source": registry.overrides_source}


def history_page(principal: Any, name: str, cursor: str) -> dict[str, Any]:
    """One page of the runs schedule ``name`` started, as rows, and the cursor of the next page ("" at the
    end). Raises NotFound for a schedule out of the principal's sight."""
    task = actions.visible_schedule(principal, name)
    pg = schedules.history_page(task, cursor or None, HISTORY_PAGE)
    rows = [run_row(r, org_slug=pg.org_slugs.get(r.organization_id, ""), children=pg.child_counts.get(r.id),
                    queue_position=pg.queue_positions.get(r.id, 0), eta_seconds=pg.etas.get(r.id),
                    principal=principal) for r in pg.runs]
    return {"rows": rows, "next": pg.next_cursor or ""}


DENIED = ("Queue administration is for system admins: it shows every organization's queues, workers, job types "
          "and schedules. Your own runs' places in the queue are on your organization's jobs list.")
EMPTY: dict[str, Any] = {"queues": [], "workers": [], "schedules": [], "types": [], "overrides": [],
                         "overrides_source": ""}


def schedule_event(principal: Any, action: Any, *args: Any) -> dict[str, Any]:
    """A schedule button of this page: ``action(principal, *args)`` and the page's data afterwards, for a system
    admin only. Anyone else (the page already shows them "denied") changes nothing and gets nothing back, not
    even a notice: the page's data is every organization's queues, history and schedules."""
    if not may_administer_queues(principal):
        return {"notice": None, "data": None}
    try:
        action(principal, *args)
        notice = ""
    except CuratoreError as exc:
        notice = exc.message
    return {"notice": notice, "data": _read()}


class QueuesState(rx.State):
    live_seq: int = 0
    loaded: bool = False
    queues: list[QueueRow] = []
    workers: list[WorkerRow] = []
    schedules: list[ScheduleRow] = []
    types: list[TypeRow] = []
    overrides: list[OverrideRow] = []
    overrides_source: str = ""
    notice: str = ""
    # a schedule's history: its name, the cursors of the pages shown so far ("" for the first), the next one's
    history_name: str = ""
    history_runs: list[RunRow] = []
    history_cursors: list[str] = []
    history_next: str = ""
    history_notice: str = ""

    denied: bool = False

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        self.denied = not may_administer_queues(principal)
        self.notice, self.history_name, self.history_runs, self.history_cursors = "", "", [], []
        self.history_next = self.history_notice = ""
        if self.denied:  # nothing shown from an earlier sign-in either
            self._show(EMPTY)
            self.loaded = True
            return None
        seq = await asyncio.to_thread(current_seq)
        await self._refresh()
        self.live_seq = seq
        self.loaded = True
        bridge.watch(self.router.session.client_token, Watch(QueuesState, all_organizations=True, since_seq=seq))
        return None

    async def _refresh(self) -> None:
        self._show(await asyncio.to_thread(_read))

    async def _schedule_action(self, action: Any, *args: Any) -> None:
        principal = (await principal_or_redirect(self))[0]
        outcome = await asyncio.to_thread(schedule_event, principal, action, *args)
        if outcome["data"] is not None:
            self.notice = outcome["notice"]
            self._show(outcome["data"])
            await self._read_history()

    def _show(self, data: dict[str, Any]) -> None:
        self.queues, self.workers, self.schedules = data["queues"], data["workers"], data["schedules"]
        self.types, self.overrides, self.overrides_source = data["types"], data["overrides"], data["overrides_source"]

    @rx.event
    async def toggle_schedule(self, name: str, enabled: bool) -> None:
        await self._schedule_action(actions.set_schedule_enabled, name, enabled)

    @rx.event
    async def trigger_schedule(self, name: str) -> None:
        await self._schedule_action(actions.trigger_schedule, name)

    @rx.event
    async def show_history(self, name: str) -> None:
        self.history_name, self.history_cursors = name, [""]
        await self._read_history()

    @rx.event
    def hide_history(self) -> None:
        self.history_name, self.history_runs, self.history_cursors, self.history_next = "", [], [], ""

    @rx.event
    async def history_older(self) -> None:
        if self.history_next:
            self.history_cursors = [*self.history_cursors, self.history_next]
            await self._read_history()

    @rx.event
    async def history_newer(self) -> None:
        if len(self.history_cursors) > 1:
            self.history_cursors = self.history_cursors[:-1]
            await self._read_history()

    async def _read_history(self) -> None:
        """The page of the open history that the last cursor names (again, after a live change)."""
        if not self.history_name or not self.history_cursors:
            return
        principal = (await principal_or_redirect(self))[0]
        if not may_administer_queues(principal):
            return
        try:
            page = await asyncio.to_thread(history_page, principal, self.history_name, self.history_cursors[-1])
        except CuratoreError as exc:
            self.history_notice, self.history_runs, self.history_next = exc.message, [], ""
            return
        self.history_notice, self.history_runs, self.history_next = "", page["rows"], page["next"]

    async def apply_live(self, events: list[dict[str, Any]]) -> list[Any] | None:
        if any(e["kind"] in ("created", "status") for e in events):
            await self._refresh()
            await self._read_history()
        return None


def _stat(label: str, value: Any, color: str = "gray", testid: str = "") -> rx.Component:
    return rx.vstack(rx.text(label, size="1", color_scheme=color), rx.heading(value, size="5", data_testid=testid),
                     spacing="0")


AXIS_TICK = {"fontSize": 10}
MARGIN = {"top": 4, "right": 4, "bottom": 0, "left": -16}


def _throughput_chart(q: rx.Var[QueueRow]) -> rx.Component:
    return rx.box(
        rx.text("Finished per hour", size="1", color_scheme="gray"),
        rx.recharts.bar_chart(
            rx.recharts.cartesian_grid(stroke_dasharray="3 3", vertical=False),
            rx.recharts.bar(data_key="completed", fill="var(--green-9)", stack_id="a", name="completed",
                            is_animation_active=False),
            rx.recharts.bar(data_key="failed", fill="var(--red-9)", stack_id="a", name="failed",
                            is_animation_active=False),
            rx.recharts.x_axis(data_key="hour", tick=AXIS_TICK, interval="preserveStartEnd"),
            rx.recharts.y_axis(allow_decimals=False, tick=AXIS_TICK),
            rx.recharts.graphing_tooltip(),
            data=q.history, height=130, width="100%", margin=MARGIN,
        ),
        width="100%", data_testid="throughput-chart",
    )


def _duration_chart(q: rx.Var[QueueRow]) -> rx.Component:
    return rx.box(
        rx.text("Duration per hour (s): mean, p95", size="1", color_scheme="gray"),
        rx.recharts.line_chart(
            rx.recharts.cartesian_grid(stroke_dasharray="3 3", vertical=False),
            rx.recharts.line(data_key="mean_s", stroke="var(--indigo-9)", name="mean (s)", dot={"r": 2},
                             is_animation_active=False),
            rx.recharts.line(data_key="p95_s", stroke="var(--orange-9)", name="p95 (s)", dot={"r": 2},
                             is_animation_active=False),
            rx.recharts.x_axis(data_key="hour", tick=AXIS_TICK, interval="preserveStartEnd"),
            rx.recharts.y_axis(tick=AXIS_TICK),
            rx.recharts.graphing_tooltip(),
            data=q.history, height=130, width="100%", margin=MARGIN,
        ),
        width="100%", data_testid="duration-chart",
    )


def _queue_card(q: rx.Var[QueueRow]) -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.hstack(rx.heading(q.label, size="3"), rx.spacer(), rx.code(q.name, size="1"), width="100%"),
            rx.text(q.description, size="1", color_scheme="gray"),
            rx.hstack(
                _stat("Pending", q.pending, testid="queue-pending"),
                rx.vstack(rx.text("Running / limit", size="1", color_scheme="gray"),
                          rx.hstack(rx.heading(f"{q.running} / {q.limit}", size="5"),
                                    rx.cond(q.limit_builtin != "",
                                            rx.badge("override", size="1", color_scheme="amber",
                                                     title="built-in limit " + q.limit_builtin,
                                                     data_testid="queue-limit-override")),
                                    align="center", spacing="2"),
                          spacing="0"),
                rx.cond(q.stale > 0, _stat("Stale", q.stale, "amber")),
                spacing="6",
            ),
            rx.progress(value=q.load, max=100, size="1", width="100%"),
            rx.text(q.summary, size="1", color_scheme="gray", data_testid="queue-summary"),
            _throughput_chart(q),
            _duration_chart(q),
            spacing="2", width="100%",
        ),
        data_testid="queue-card", data_queue=q.name, data_finished=q.finished,
    )


def _queues() -> rx.Component:
    return rx.grid(rx.foreach(QueuesState.queues, _queue_card),
                   columns=rx.breakpoints(initial="1", sm="2", lg="3"), spacing="4", width="100%")


def _workers() -> rx.Component:
    return rx.card(
        rx.heading("Workers online", size="3"),
        rx.cond(
            QueuesState.workers.length() > 0,
            rx.box(rx.table.root(
                rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in
                                               ("Node", "Queues", "Processes", "Running", "Last heartbeat", "Up since")])),
                rx.table.body(rx.foreach(QueuesState.workers, lambda w: rx.table.row(
                    rx.table.cell(rx.hstack(rx.box(width="8px", height="8px", border_radius="50%",
                                                   background="var(--green-9)", flex_shrink="0"),
                                            rx.text(w.hostname, white_space="nowrap"), align="center")),
                    rx.table.cell(rx.text(w.queues, size="1")), rx.table.cell(w.concurrency),
                    rx.table.cell(w.active_runs), rx.table.cell(w.last_seen), rx.table.cell(w.started),
                    data_testid="worker-row"))),
                width="100%", size="1",
            ), width="100%", overflow_x="auto"),
            rx.text("No worker has reported in the last 20 seconds. Start one: curatore worker", size="2",
                    color_scheme="gray"),
        ),
        width="100%",
    )


def _registry() -> rx.Component:
    def type_row(t: rx.Var[TypeRow]) -> rx.Component:
        return rx.table.row(
            rx.table.cell(rx.vstack(
                rx.hstack(rx.icon(t.icon, size=14, color=f"var(--{t.color}-9)", flex_shrink="0"),
                          rx.text(t.label, size="2", weight="medium"), align="center", spacing="2"),
                rx.hstack(rx.code(t.key, size="1"),
                          rx.cond(t.source != "", rx.text("from ", t.source, size="1", color_scheme="gray")),
                          spacing="2", wrap="wrap"),
                spacing="1")),
            rx.table.cell(rx.vstack(rx.code(t.queue, size="1"), rx.text(t.limit, size="1", data_testid="type-limit"),
                                    spacing="1")),
            rx.table.cell(rx.text(t.timeout, size="1", white_space="nowrap")),
            rx.table.cell(rx.text(t.retries, size="1")),
            rx.table.cell(rx.text(t.submit, size="1"), display=WIDE_ONLY),
            rx.table.cell(rx.cond(t.overrides != "",
                                  rx.badge(t.overrides, color_scheme="amber", size="1", white_space="normal",
                                           data_testid="type-override"),
                                  rx.text("—", size="1", color_scheme="gray"))),
            data_testid="registry-row", data_key=t.key, align="center",
        )

    overrides = rx.cond(
        QueuesState.overrides.length() > 0,
        rx.vstack(
            rx.text("Overrides applied from ", rx.code(QueuesState.overrides_source, size="1"),
                    " (CURATORE_REGISTRY_OVERRIDES):", size="2"),
            rx.foreach(QueuesState.overrides, lambda o: rx.hstack(
                rx.badge("override", color_scheme="amber", size="1"),
                rx.text(o.what, " ", rx.code(o.name, size="1"), ": ", o.field, " ", rx.text.strong(o.value),
                        " (built-in ", o.builtin, ")", size="2"),
                align="center", data_testid="override-row")),
            spacing="1"),
        rx.text("No overrides: every limit below is built in. A JSON file named by CURATORE_REGISTRY_OVERRIDES "
                "changes queue limits and job types' timeouts, limits, priorities and queues.", size="2",
                color_scheme="gray", data_testid="no-overrides"),
    )
    return rx.card(
        rx.vstack(
            rx.heading("Job types", size="3"),
            overrides,
            rx.box(rx.table.root(
                rx.table.header(rx.table.row(*[
                    rx.table.column_header_cell(h, display=WIDE_ONLY if h == "Who starts it" else None) for h in (
                        "Type", "Queue, concurrency", "Timeout", "Automatic retries", "Who starts it", "Overrides")])),
                rx.table.body(rx.foreach(QueuesState.types, type_row)),
                width="100%", size="1",
            ), width="100%", overflow_x="auto"),
            spacing="3", width="100%",
        ),
        width="100%", data_testid="registry",
    )


def _history() -> rx.Component:
    page_number = QueuesState.history_cursors.length()
    return rx.cond(QueuesState.history_name != "", rx.vstack(
        rx.hstack(rx.heading("Runs of ", rx.code(QueuesState.history_name), size="2"), rx.spacer(),
                  rx.button("Close", size="1", variant="ghost", color_scheme="gray", on_click=QueuesState.hide_history,
                            data_testid="history-close"),
                  align="center", width="100%"),
        rx.cond(QueuesState.history_notice != "", rx.text(QueuesState.history_notice, size="1", color_scheme="red")),
        rx.cond(QueuesState.history_runs.length() > 0, run_table(QueuesState.history_runs),
                rx.text("It has not started a run yet.", size="2", color_scheme="gray", data_testid="history-empty")),
        rx.hstack(
            rx.button(rx.icon("chevron-left", size=14), "Newer", size="1", variant="soft",
                      disabled=page_number <= 1, on_click=QueuesState.history_newer, data_testid="history-newer"),
            rx.text("Page ", page_number, size="1", data_testid="history-page"),
            rx.button("Older", rx.icon("chevron-right", size=14), size="1", variant="soft",
                      disabled=QueuesState.history_next == "", on_click=QueuesState.history_older,
                      data_testid="history-older"),
            align="center", spacing="3"),
        spacing="2", width="100%", padding_top="0.5rem", data_testid="schedule-history", data_name=QueuesState.history_name,
    ))


def _schedules() -> rx.Component:
    def row(t: rx.Var[ScheduleRow]) -> rx.Component:
        return rx.table.row(
            rx.table.cell(rx.vstack(rx.text(t.name, weight="medium", size="2"),
                                    rx.text(t.description, size="1", color_scheme="gray"), spacing="0")),
            rx.table.cell(rx.code(t.run_type, size="1"), display=WIDE_ONLY),
            rx.table.cell(rx.text(t.every, size="1", white_space="nowrap")),
            rx.table.cell(rx.cond(t.last_run_href != "",
                                  rx.link(status_badge(t.last_status, size="1"), " ", t.last_run, href=t.last_run_href,
                                          size="1"),
                                  rx.text(t.last_run, size="1", color_scheme="gray"))),
            rx.table.cell(rx.text(t.next_run, size="1")),
            rx.table.cell(rx.flex(
                rx.switch(checked=t.enabled, on_change=lambda v: QueuesState.toggle_schedule(t.name, v), size="1",
                          data_testid="schedule-enabled"),
                rx.button("Run now", size="1", variant="soft", on_click=QueuesState.trigger_schedule(t.name),
                          data_testid="schedule-trigger"),
                rx.button("History", size="1", variant=rx.cond(QueuesState.history_name == t.name, "solid", "outline"),
                          on_click=QueuesState.show_history(t.name), data_testid="schedule-history-open"),
                align="center", gap="2", wrap="wrap"), min_width="14rem"),
            data_testid="schedule-row", data_name=t.name,
        )

    return rx.card(
        rx.heading("Scheduled tasks", size="3"),
        rx.cond(QueuesState.notice != "", rx.text(QueuesState.notice, size="1", color_scheme="red")),
        rx.box(rx.table.root(
            rx.table.header(rx.table.row(*[rx.table.column_header_cell(h, display=WIDE_ONLY if h == "Runs" else None)
                                           for h in ("Task", "Runs", "Cadence", "Last run", "Next run", "")])),
            rx.table.body(rx.foreach(QueuesState.schedules, row)),
            width="100%", size="1",
        ), width="100%", overflow_x="auto"),
        _history(),
        width="100%",
    )


def _denied() -> rx.Component:
    """A person who may not administer queues: why, and where their own waiting runs are."""
    return rx.callout.root(
        rx.callout.icon(rx.icon("lock")),
        rx.callout.text(DENIED),
        rx.flex(rx.foreach(SessionState.orgs, lambda o: rx.link(
            o["name"], ": waiting runs", href="/orgs/" + o["slug"] + "/jobs?status=pending", size="2",
            data_testid="own-queue-link")), gap="3", wrap="wrap"),
        color_scheme="gray", data_testid="queues-denied",
    )


def page() -> rx.Component:
    return layout(
        "Queues",
        rx.cond(
            ~QueuesState.loaded,
            rx.spinner(size="3"),  # neither "no worker" nor empty charts before the page knows who is asking
            rx.cond(
                QueuesState.denied,
                _denied(),
                rx.vstack(_queues(), _workers(), _registry(), _schedules(), spacing="4", width="100%"),
            ),
        ),
    )
