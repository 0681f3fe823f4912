"""The body of a resource's page: who it is, a progress panel per job type working on it, its runs, its files."""

from __future__ import annotations

from typing import Any

import reflex as rx

from curatore_ui.components.job_progress_panel import job_progress_panel_by_type
from curatore_ui.components.run_table import run_table


def resource_body(state: Any, resource_type: str, job_types: tuple[str, ...], noun: str,
                  files: bool = False) -> rx.Component:
    return rx.vstack(
        rx.hstack(rx.text(noun, size="2", color_scheme="gray"), rx.code(state.resource_id, data_testid="resource-id"),
                  align="center", wrap="wrap"),
        rx.cond(state.error != "", rx.callout(state.error, color_scheme="gray", icon="circle-help",
                                              data_testid="resource-error")),
        *[job_progress_panel_by_type(state.resource_id, resource_type, t) for t in job_types],
        rx.card(
            rx.heading("Runs", size="3"),
            rx.cond(state.runs.length() > 0, run_table(state.runs, compact=True),
                    rx.text(f"No run has worked on this {noun.lower()} yet.", size="2", color_scheme="gray")),
            width="100%", data_testid="resource-runs",
        ),
        *([rx.card(rx.heading("Files", size="3"), rx.cond(
            state.files.length() > 0,
            rx.foreach(state.files, lambda f: rx.hstack(
                rx.icon("file", size=14), rx.link(f.label, href=f.href, size="2"),
                rx.text(f.name, size="1", color_scheme="gray"), align="center")),
            rx.text("No files kept yet.", size="2", color_scheme="gray")), width="100%")] if files else []),
        spacing="4", width="100%",
    )
