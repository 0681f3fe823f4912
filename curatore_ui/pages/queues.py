"""Queue admin: `/system/queues` — depth and limits, recent throughput and durations, workers online."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import reflex as rx

from backend import actions, schedules
from backend.errors import CuratoreError
from backend.queues import stats, workers
from curatore_ui.components.status_badge import status_badge
from curatore_ui.components.layout import layout
from curatore_ui.live import Watch, bridge, current_seq
from curatore_ui.state.session import principal_or_redirect
from curatore_ui.state.views import ago, duration_text, run_href, ts


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


def _read() -> dict[str, Any]:
    queues = [QueueRow(**q, load=min(100, int(100 * q["running"] / q["limit"])) if q["limit"] else 0)
              for q in stats.queue_depths()]
    nodes = [WorkerRow(w["hostname"], ", ".join(w["queues"]), w["concurrency"], w["active_runs"],
                       ago(w["last_seen_at"]), ago(w["started_at"])) for w in workers.online()]
    plans = [_schedule_row(schedules.describe(t)) for t in schedules.list_schedules()]
    return {"queues": queues, "workers": nodes, "history": stats.history(12), "schedules": plans}


DENIED = "Queue administration is for system admins."


def schedule_event(principal: Any, action: Any, *args: Any) -> dict[str, Any]:
    """A schedule button of this page: ``action(principal, *args)`` and the page's data afterwards, for a system
    admin only. Anyone else (the page already shows them "denied") changes nothing and gets nothing back, not
    even a notice: the page's data is every organization's queues, history and schedules."""
    if principal is None or not principal.is_system_admin:
        return {"notice": None, "data": None}
    try:
        action(principal, *args)
        notice = ""
    except CuratoreError as exc:
        notice = exc.message
    return {"notice": notice, "data": _read()}


class QueuesState(rx.State):
    live_seq: int = 0
    queues: list[QueueRow] = []
    workers: list[WorkerRow] = []
    history: list[dict[str, Any]] = []
    schedules: list[ScheduleRow] = []
    notice: str = ""

    denied: bool = False

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        self.denied = not principal.is_system_admin
        if self.denied:  # queue administration is for system admins: nothing shown from an earlier sign-in either
            self._show({"queues": [], "workers": [], "history": [], "schedules": []})
            return None
        seq = await asyncio.to_thread(current_seq)
        await self._refresh()
        self.live_seq = seq
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

    def _show(self, data: dict[str, Any]) -> None:
        self.queues, self.workers, self.history = data["queues"], data["workers"], data["history"]
        self.schedules = data["schedules"]

    @rx.event
    async def toggle_schedule(self, name: str, enabled: bool) -> None:
        await self._schedule_action(actions.set_schedule_enabled, name, enabled)

    @rx.event
    async def trigger_schedule(self, name: str) -> None:
        await self._schedule_action(actions.trigger_schedule, name)

    async def apply_live(self, events: list[dict[str, Any]]) -> list[Any] | None:
        if any(e["kind"] in ("created", "status") for e in events):
            await self._refresh()
        return None


def _queue_card(q: rx.Var[QueueRow]) -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.hstack(rx.heading(q.label, size="3"), rx.spacer(), rx.code(q.name, size="1"), width="100%"),
            rx.text(q.description, size="1", color_scheme="gray"),
            rx.hstack(
                rx.vstack(rx.text("Pending", size="1", color_scheme="gray"), rx.heading(q.pending, size="5"),
                          spacing="0"),
                rx.vstack(rx.text("Running", size="1", color_scheme="gray"),
                          rx.heading(f"{q.running} / {q.limit}", size="5"), spacing="0"),
                rx.cond(q.stale > 0, rx.vstack(rx.text("Stale", size="1", color_scheme="amber"),
                                               rx.heading(q.stale, size="5"), spacing="0")),
                spacing="6",
            ),
            rx.progress(value=q.load, max=100, size="1", width="100%"),
            spacing="2", width="100%",
        ),
        data_testid="queue-card",
    )


def _charts() -> rx.Component:
    throughput = rx.recharts.bar_chart(
        rx.recharts.cartesian_grid(stroke_dasharray="3 3"),
        rx.recharts.bar(data_key="completed", fill="var(--green-9)", stack_id="a", name="completed"),
        rx.recharts.bar(data_key="failed", fill="var(--red-9)", stack_id="a", name="failed"),
        rx.recharts.x_axis(data_key="hour"), rx.recharts.y_axis(allow_decimals=False),
        rx.recharts.legend(), rx.recharts.graphing_tooltip(),
        data=QueuesState.history, height=240, width="100%",
    )
    durations = rx.recharts.line_chart(
        rx.recharts.cartesian_grid(stroke_dasharray="3 3"),
        rx.recharts.line(data_key="mean_s", stroke="var(--indigo-9)", name="mean (s)"),
        rx.recharts.line(data_key="p95_s", stroke="var(--orange-9)", name="p95 (s)"),
        rx.recharts.x_axis(data_key="hour"), rx.recharts.y_axis(),
        rx.recharts.legend(), rx.recharts.graphing_tooltip(),
        data=QueuesState.history, height=240, width="100%",
    )
    return rx.grid(
        rx.card(rx.heading("Finished runs per hour", size="3"), throughput),
        rx.card(rx.heading("Run duration per hour", size="3"), durations),
        columns=rx.breakpoints(initial="1", md="2"), spacing="4", width="100%",
    )


def _workers() -> rx.Component:
    return rx.card(
        rx.heading("Workers online", size="3"),
        rx.cond(
            QueuesState.workers.length() > 0,
            rx.table.root(
                rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in
                                               ("Node", "Queues", "Processes", "Running", "Last heartbeat", "Up since")])),
                rx.table.body(rx.foreach(QueuesState.workers, lambda w: rx.table.row(
                    rx.table.cell(rx.hstack(rx.box(width="8px", height="8px", border_radius="50%",
                                                   background="var(--green-9)"), rx.text(w.hostname), align="center")),
                    rx.table.cell(rx.text(w.queues, size="1")), rx.table.cell(w.concurrency),
                    rx.table.cell(w.active_runs), rx.table.cell(w.last_seen), rx.table.cell(w.started),
                    data_testid="worker-row"))),
                width="100%", size="1",
            ),
            rx.text("No worker has reported in the last 20 seconds. Start one: curatore worker", size="2",
                    color_scheme="gray"),
        ),
        width="100%",
    )


def _schedules() -> rx.Component:
    def row(t: rx.Var[ScheduleRow]) -> rx.Component:
        return rx.table.row(
            rx.table.cell(rx.vstack(rx.text(t.name, weight="medium", size="2"),
                                    rx.text(t.description, size="1", color_scheme="gray"), spacing="0")),
            rx.table.cell(rx.code(t.run_type, size="1")),
            rx.table.cell(rx.text(t.every, size="1")),
            rx.table.cell(rx.cond(t.last_run_href != "",
                                  rx.link(status_badge(t.last_status, size="1"), " ", t.last_run, href=t.last_run_href,
                                          size="1"),
                                  rx.text(t.last_run, size="1", color_scheme="gray"))),
            rx.table.cell(rx.text(t.next_run, size="1")),
            rx.table.cell(rx.hstack(
                rx.switch(checked=t.enabled, on_change=lambda v: QueuesState.toggle_schedule(t.name, v), size="1",
                          data_testid="schedule-enabled"),
                rx.button("Run now", size="1", variant="soft", on_click=QueuesState.trigger_schedule(t.name),
                          data_testid="schedule-trigger"),
                align="center")),
            data_testid="schedule-row", data_name=t.name,
        )

    return rx.card(
        rx.heading("Scheduled tasks", size="3"),
        rx.cond(QueuesState.notice != "", rx.text(QueuesState.notice, size="1", color_scheme="red")),
        rx.table.root(
            rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in
                                           ("Task", "Runs", "Cadence", "Last run", "Next run", "")])),
            rx.table.body(rx.foreach(QueuesState.schedules, row)),
            width="100%", size="1",
        ),
        width="100%",
    )


def page() -> rx.Component:
    return layout(
        "Queues",
        rx.cond(QueuesState.denied, rx.callout(DENIED, icon="lock",
                                               color_scheme="gray")),
        rx.grid(rx.foreach(QueuesState.queues, _queue_card), columns=rx.breakpoints(initial="1", sm="2", lg="3"),
                spacing="4", width="100%"),
        _charts(),
        _workers(),
        _schedules(),
    )
