"""Schemathesis against the ops API's own OpenAPI description, in-process, on a seeded SQLite database, with a
system admin's token: for every operation, generated valid and invalid requests never get a 5xx and every
response matches the schema documented for its status code (errors included).

``CURATORE_TEST_SCHEMA_BACKEND=postgres`` runs the same against PostgreSQL (by hand; CI runs SQLite).
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from backend.api.app import create_api
from tests.conftest import _make_backend

pytestmark = pytest.mark.integration

APP = create_api()
schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", APP)
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
calls: Counter[str] = Counter()
statuses: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One SQLite database for the whole module, seeded with queued runs in two organizations, a group with a
    child, the default schedules and a system admin's token."""
    saved = os.environ.get("CURATORE_JOB_MODULES")
    os.environ.pop("CURATORE_JOB_MODULES", None)
    kind = os.environ.get("CURATORE_TEST_SCHEMA_BACKEND", "sqlite")
    gen = _make_backend(kind, Path(tmp_path_factory.mktemp("schema")), request)
    next(gen)
    from backend import schedules
    from backend.auth import users
    from backend.auth.orgs import ensure_org
    from backend.runs import groups, service

    org = ensure_org("acme", "Acme")
    other = ensure_org("beta", "Beta")
    runs = [service.create_run("system_maintenance", {"handlers": ["health"]}, organization_id=org.id,
                               display_name=f"health {n}") for n in range(3)]
    parent = service.create_run("pipeline", {"name": "p1", "stages": [{"run_type": "system_maintenance"}]},
                                organization_id=other.id)
    group = groups.create_group(parent.id)
    child = groups.add_child(group.id, "system_maintenance", {"handlers": ["health"]})
    schedules.ensure_defaults()
    user = users.create_user("root@example.com", "correct horse battery", system_admin=True)
    _, secret = users.create_token(user.id, "schemathesis")
    yield {"headers": {"Authorization": f"Bearer {secret}"}, "run_ids": [str(r.id) for r in (*runs, parent, child)]}
    total = sum(calls.values())
    print(f"\nschemathesis: {len(calls)} operations, {total} requests")
    for label in sorted(calls):
        codes = ", ".join(f"{code}: {n}" for (op, code), n in sorted(statuses.items()) if op == label)
        print(f"  {label}: {calls[label]} ({codes})")
    try:
        next(gen)
    except StopIteration:
        pass
    if saved is not None:
        os.environ["CURATORE_JOB_MODULES"] = saved


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
          print_blob=True)
def test_every_operation_conforms_to_the_schema(case, seeded):  # type: ignore[no-untyped-def]
    label = case.operation.label
    # Half the time, a generated run id that is a valid UUID names a seeded run instead, so the success
    # responses (and 409s) of the per-run operations are checked too, not only their 404s.
    params = case.path_parameters or {}
    if _is_uuid(params.get("run_id")) and calls[label] % 2 == 0:
        params["run_id"] = seeded["run_ids"][calls[label] // 2 % len(seeded["run_ids"])]
    response = case.call_and_validate(headers=seeded["headers"], checks=CHECKS)
    calls[label] += 1
    statuses[(label, response.status_code)] += 1


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
        return isinstance(value, str)
    except ValueError:
        return False
