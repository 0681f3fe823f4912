"""FastAPI app mounted into the Reflex backend through ``api_transformer``: the ops REST API under
``/api/v1/ops`` (OpenAPI at ``/api/v1/openapi.json``, docs at ``/api/v1/docs``), ``/api/v1/health`` and the
Prometheus ``/metrics`` (see ``backend/api``)."""

from backend.api.app import create_api

api = create_api()
