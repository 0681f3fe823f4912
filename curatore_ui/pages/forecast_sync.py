"""A forecast sync's page, `/orgs/[slug]/forecasts/[forecast_sync_id]`: the jobs working on it (a progress panel) and its runs."""

from __future__ import annotations

from typing import ClassVar

import reflex as rx

from curatore_ui.components.layout import layout
from curatore_ui.components.resource_page import resource_body
from curatore_ui.state.resource_runs import ResourceRunsState

JOB_TYPES = ("forecast_sync",)


class ForecastSyncState(ResourceRunsState):
    resource_type: ClassVar[str] = "forecast_sync"
    with_assets: ClassVar[bool] = False


def page() -> rx.Component:
    return layout("Forecast sync", resource_body(ForecastSyncState, "forecast_sync", JOB_TYPES, "Forecast sync", files=False))
