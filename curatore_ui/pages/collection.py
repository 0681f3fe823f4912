"""A collection's page, `/orgs/[slug]/collections/[collection_id]`: the jobs working on it (a progress panel) and its runs."""

from __future__ import annotations

from typing import ClassVar

import reflex as rx

from curatore_ui.components.layout import layout
from curatore_ui.components.resource_page import resource_body
from curatore_ui.state.resource_runs import ResourceRunsState

JOB_TYPES = ("scrape",)


class CollectionState(ResourceRunsState):
    resource_type: ClassVar[str] = "collection"
    with_assets: ClassVar[bool] = True


def page() -> rx.Component:
    return layout("Collection", resource_body(CollectionState, "collection", JOB_TYPES, "Collection", files=True))
