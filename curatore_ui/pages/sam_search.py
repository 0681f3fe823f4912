"""A SAM.gov search's page, `/orgs/[slug]/sam/[search_id]`: the jobs working on it (a progress panel) and its runs."""

from __future__ import annotations

from typing import ClassVar

import reflex as rx

from curatore_ui.components.layout import layout
from curatore_ui.components.resource_page import resource_body
from curatore_ui.state.resource_runs import ResourceRunsState

JOB_TYPES = ("sam_pull", "sam_refresh")


class SamSearchState(ResourceRunsState):
    resource_type: ClassVar[str] = "sam_search"
    with_assets: ClassVar[bool] = False


def page() -> rx.Component:
    return layout("SAM.gov search", resource_body(SamSearchState, "sam_search", JOB_TYPES, "Search", files=False))
