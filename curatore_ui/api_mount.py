"""FastAPI app mounted into the Reflex backend through ``api_transformer``.

Placeholder until the ops routers from ``backend/api`` are mounted here.
"""

from fastapi import FastAPI

api = FastAPI(title="Curatore Jobs API", docs_url=None, redoc_url=None, openapi_url=None)


@api.get("/api/v1/health")
async def health() -> dict[str, str]:
    """Report that the API process is up."""
    return {"status": "ok"}
