"""The FastAPI app: the ops REST API under ``/api/v1/ops`` (bearer token), ``/api/v1/health``, ``/metrics`` and
the browser's sign-in and sign-out (``/auth/login``, ``/auth/logout``: ``signin.py``).

The Reflex backend mounts it through ``api_transformer`` (``curatore_ui/api_mount.py``); tests call
:func:`create_api` directly.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from backend.api import errors, queues, registry, runs, schedules, signin
from backend.api.deps import current_principal
from backend.api.edges import SecurityHeaders
from backend.api.metrics import check_scraper, metrics_text
from backend.errors import CuratoreError
from backend.queues.workers import database_ok
from backend.validation import MAX_BODY_BYTES

PREFIX = "/api/v1/ops"
VERSION = "1.0.0"

DESCRIPTION = """\
Runs, queues, the job-type registry and scheduled tasks of Curatore Jobs.

Authenticate with an API token (`curatore tokens create EMAIL --name NAME`): `Authorization: Bearer <token>`.
Everything is scoped to the token's organizations: another organization's runs answer 404, as if they did not
exist. Viewers read; members also submit, cancel, retry and boost; admins also force-kill and manage schedules.

Errors are JSON: `{"error": {"code": "...", "message": "..."}}`, with a stable `code`. A request body may hold
at most 1 MiB (413 `too_large`); a job config at most 256 KiB of JSON, nested at most 32 levels, with no text
that cannot be stored (NUL, lone surrogates) and no NaN or infinity (422 `invalid_input`).
"""


def create_api() -> FastAPI:
    app = FastAPI(title="Curatore Jobs API", version=VERSION, description=DESCRIPTION,
                  openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None,
                  swagger_ui_oauth2_redirect_url="/api/v1/docs/oauth2-redirect")
    errors.install(app)
    app.add_middleware(errors.BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(errors.ApiPaths)  # JSON 404/405 for every /api path, whatever is mounted behind
    app.add_middleware(SecurityHeaders)

    ops = APIRouter(prefix=PREFIX, dependencies=[Depends(current_principal)])
    for module in (runs, queues, registry, schedules):
        ops.include_router(module.router)
    app.include_router(ops)
    app.include_router(signin.router)  # browser sign-in: /auth/login, /auth/logout (form posts, cookie)

    @app.get("/api/v1/health", tags=["health"], summary="The API process is up")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/healthz", tags=["health"], summary="Ready to serve: the database answers (503 when it does not)")
    def healthz() -> Response:
        try:
            database_ok()
        except CuratoreError as exc:
            return JSONResponse({"status": "unavailable", "database": exc.message}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        check_scraper(request)
        body, content_type = metrics_text()
        return Response(body, media_type=content_type)

    return app
