"""The Reflex app: creation, page registration and the live bridge only."""

import reflex as rx

from backend.api.edges import origin_allowed
from backend.config import get_settings
from curatore_ui.api_mount import api
from curatore_ui.live import bridge
from curatore_ui.pages import (
    account, asset, audit, collection, forecast_sync, home, job_detail, jobs_list, login, members, not_found, queues,
    sam_search, sync_config,
)
from curatore_ui.pages.job_detail_state import JobDetailState
from curatore_ui.pages.jobs_list_state import JobsListState
from curatore_ui.state.session import SessionGuard, SessionState

app = rx.App(api_transformer=api, stylesheets=["/curatore.css"])
if app.sio is not None:
    # The websocket (python-engineio checks this on every handshake): a page of a public URL, or of the host
    # the server was reached at; a cross-site page is refused, CURATORE_CORS_ORIGINS or not.
    app.sio.eio.cors_allowed_origins = lambda origin, environ: origin_allowed(
        origin, environ.get("HTTP_HOST"), get_settings().public_urls)
app.register_lifespan_task(bridge.run)
app.add_middleware(SessionGuard())  # the session from the socket's cookie, before every event

app.add_page(home.index, route="/", title="Curatore Jobs", on_load=SessionState.home)
app.add_page(login.page, route="/login", title="Sign in · Curatore", on_load=login.LoginState.load)
for route in ("/system/jobs", "/orgs/[slug]/jobs"):
    app.add_page(jobs_list.page, route=route, title="Jobs · Curatore", on_load=JobsListState.load)
for route in ("/system/jobs/[run_id]", "/orgs/[slug]/jobs/[run_id]"):
    app.add_page(job_detail.page, route=route, title="Job · Curatore", on_load=JobDetailState.load)
app.add_page(queues.page, route="/system/queues", title="Queues · Curatore", on_load=queues.QueuesState.load)
app.add_page(asset.page, route="/orgs/[slug]/assets/[asset_id]", title="Asset · Curatore", on_load=asset.AssetState.load)
app.add_page(sync_config.page, route="/orgs/[slug]/syncs/[sync_config_id]", title="SharePoint sync · Curatore",
             on_load=sync_config.SyncConfigState.load)
# Accounts (issue 15): members and audit per organization (its admins), the whole audit log (system admins).
app.add_page(members.page, route="/orgs/[slug]/members", title="Members · Curatore", on_load=members.MembersState.load)
for route in ("/orgs/[slug]/audit", "/system/audit"):
    app.add_page(audit.page, route=route, title="Audit log · Curatore", on_load=audit.AuditState.load)
app.add_page(account.page, route="/account", title="Account · Curatore", on_load=account.AccountState.load)
# The pages a job's Related links name (registry.resource_link): every one lands inside the layout.
app.add_page(sam_search.page, route="/orgs/[slug]/sam/[search_id]", title="SAM.gov search · Curatore",
             on_load=sam_search.SamSearchState.load)
app.add_page(forecast_sync.page, route="/orgs/[slug]/forecasts/[forecast_sync_id]", title="Forecast sync · Curatore",
             on_load=forecast_sync.ForecastSyncState.load)
app.add_page(collection.page, route="/orgs/[slug]/collections/[collection_id]", title="Collection · Curatore",
             on_load=collection.CollectionState.load)
app.add_page(not_found.page, route="404", title="Not found · Curatore", on_load=not_found.NotFoundState.load)
