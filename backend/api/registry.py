"""The job-type registry as the API shows it: every type (with its config schema) and every queue."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import CurrentPrincipal
from backend.api.schemas import JobTypeOut, QueueDefOut, RegistryOut, error_responses
from backend.jobtypes.registry import get_registry

router = APIRouter(tags=["registry"], responses=error_responses(401, 503))


@router.get("/registry", response_model=RegistryOut, summary="Job types and queues")
def get_registry_info(p: CurrentPrincipal) -> RegistryOut:
    registry = get_registry()
    return RegistryOut(
        queues=[QueueDefOut(name=q.name, label=q.label, max_concurrency=q.max_concurrency, description=q.description)
                for q in registry.queues.values()],
        job_types=[JobTypeOut(**t.public()) for t in sorted(registry.types.values(), key=lambda t: t.key)],
        overrides=registry.overrides or {},
    )
