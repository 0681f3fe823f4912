"""The Reflex app: creation, page registration and the live bridge only."""

import reflex as rx

from curatore_ui.api_mount import api
from curatore_ui.live import bridge
from curatore_ui.pages import home, job_detail, jobs_list, queues
from curatore_ui.pages.job_detail_state import JobDetailState
from curatore_ui.pages.jobs_list_state import JobsListState

app = rx.App(api_transformer=api)
app.register_lifespan_task(bridge.run)

app.add_page(home.index, route="/", title="Curatore Jobs")
for route in ("/system/jobs", "/orgs/[slug]/jobs"):
    app.add_page(jobs_list.page, route=route, title="Jobs · Curatore", on_load=JobsListState.load)
for route in ("/system/jobs/[run_id]", "/orgs/[slug]/jobs/[run_id]"):
    app.add_page(job_detail.page, route=route, title="Job · Curatore", on_load=JobDetailState.load)
app.add_page(queues.page, route="/system/queues", title="Queues · Curatore", on_load=queues.QueuesState.load)
