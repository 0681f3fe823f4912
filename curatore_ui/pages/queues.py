"""Queue admin: `/system/queues` — depth and limits, recent throughput and durations, workers online."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import reflex as rx

from backend.queues import stats, workers
from curatore_ui.components.layout import layout
from curatore_ui.live import Watch, bridge, current_seq
from curatore_ui.state.session import principal_or_redirect
from curatore_ui.state.views import ago


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


def _read() -> dict[str, Any]:
    queues = [QueueRow(**q, load=min(100, int(100 * q["running"] / q["limit"])) if q["limit"] else 0)
              for q in stats.queue_depths()]
    nodes = [WorkerRow(w["hostname"], ", ".join(w["queues"]), w["concurrency"], w["active_runs"],
                       ago(w["last_seen_at"]), ago(w["started_at"])) for w in workers.online()]
    return {"queues": queues, "workers": nodes, "history": stats.history(12)}


class QueuesState(rx.State):
    live_seq: int = 0
    queues: list[QueueRow] = []
    workers: list[WorkerRow] = []
    history: list[dict[str, Any]] = []

    denied: bool = False

    @rx.event
    async def load(self):  # type: ignore[no-untyped-def]
        principal, redirect = await principal_or_redirect(self)
        if redirect:
            return redirect
        self.denied = not principal.is_system_admin
        if self.denied:  # queue administration is for system admins
            return None
        seq = await asyncio.to_thread(current_seq)
        await self._refresh()
        self.live_seq = seq
        bridge.watch(self.router.session.client_token, Watch(QueuesState, all_organizations=True, since_seq=seq))
        return None

    async def _refresh(self) -> None:
        data = await asyncio.to_thread(_read)
        self.queues, self.workers, self.history = data["queues"], data["workers"], data["history"]

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


def page() -> rx.Component:
    return layout(
        "Queues",
        rx.cond(QueuesState.denied, rx.callout("Queue administration is for system admins.", icon="lock",
                                               color_scheme="gray")),
        rx.grid(rx.foreach(QueuesState.queues, _queue_card), columns=rx.breakpoints(initial="1", sm="2", lg="3"),
                spacing="4", width="100%"),
        _charts(),
        _workers(),
    )
