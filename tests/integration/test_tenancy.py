"""Issue 11, doors 1, 4, 5 and 6, tried as an attacker would: who may submit what (system-only maintenance,
a type's submit role, pipeline stages, retries), the system organization and its schedules, the audit of
cross-organization deletion, refused UI events that must return nothing, and organizations nobody but a
system admin creates."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, update

from backend import actions, audit, schedules
from backend.api.app import create_api
from backend.auth import users
from backend.auth.access import NEEDS, Forbidden, Principal
from backend.auth.orgs import ReservedOrganization, ensure_org, get_org, system_org
from backend.db.engine import in_transaction
from backend.db.models import Asset, Organization, Run, ScheduledTask, User
from backend.db.states import RunStatus
from backend.db.types import utcnow
from backend.errors import NotFound
from backend.jobtypes.registry import get_registry
from backend.runs import service
from backend.runs.queries import RunFilter, get_run, list_runs
from tests.api_client import ApiClient
from tests.integration.test_api import PASSWORD, Api, error_of
from tests.integration.test_cli import assert_one_line_error, run_cli

pytestmark = pytest.mark.integration
S = RunStatus
PEOPLE = {"a_admin": ("acme", "admin"), "a_member": ("acme", "member"), "a_viewer": ("acme", "viewer"),
          "b_admin": ("beta", "admin"), "b_member": ("beta", "member"), "demo_admin": ("demo", "admin"),
          "root": (None, None)}
MAINTENANCE = [{"handlers": ["retention"], "retention_days": 1}, {"handlers": ["health"]},
               {"handlers": ["orphans"]}, {}]


@pytest.fixture
def api(backend, org, tmp_path) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    """Organizations acme (A), beta (B) and demo; users by role, one token each; root is a system admin."""
    orgs = {"acme": org, "beta": ensure_org("beta", "Beta"), "demo": ensure_org("demo", "Demo")}
    tokens = {}
    for who, (slug, role) in PEOPLE.items():
        user = users.create_user(f"{who}@example.com", PASSWORD, system_admin=who == "root")
        if slug is not None:
            users.set_role(user.id, orgs[slug].id, role)
        tokens[who] = users.create_token(user.id, f"{who} token")[1]
    with ApiClient(create_api()) as client:
        yield Api(client, orgs["acme"], orgs["beta"], tokens, tmp_path)


def principal(who: str) -> Principal:
    return Principal.of(users.get_user(f"{who}@example.com"))


def old_run(org_id: uuid.UUID, days_ago: float = 5) -> uuid.UUID:
    """A cancelled run with a log event, finished ``days_ago`` days ago."""
    run = service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=org_id)
    service.request_cancel(run.id)
    service.add_log(run.id, "INFO", "note", "some history")
    when = utcnow() - timedelta(days=days_ago)
    in_transaction(lambda s: s.execute(update(Run).where(Run.id == run.id).values(completed_at=when)))
    return run.id


def existing(ids: list[uuid.UUID]) -> int:
    return in_transaction(lambda s: s.execute(select(func.count()).select_from(Run).where(Run.id.in_(ids)))
                          .scalar_one())


def runs_of(run_type: str) -> list[Run]:
    return list_runs(RunFilter(run_types=(run_type,)), limit=500)


def org_count() -> int:
    return in_transaction(lambda s: s.execute(select(func.count()).select_from(Organization)).scalar_one())


# --------------------------------------------------------------------------- door 1: system maintenance


def test_b_cannot_run_maintenance_and_a_system_admins_retention_is_audited_in_a(api, worker):  # type: ignore[no-untyped-def]
    a_old = [old_run(api.a.id) for _ in range(3)]
    a_recent = old_run(api.a.id, days_ago=0)
    b_recent = old_run(api.b.id, days_ago=0)
    legacy = service.create_run("system_maintenance", {"handlers": ["health"]}, organization_id=api.b.id)
    service.fail(legacy.id, "from before system-only types")

    for who in ("b_member", "b_admin"):
        for config in MAINTENANCE:
            body = {"run_type": "system_maintenance", "config": config, "organization": "beta"}
            assert "system-only" in error_of(api.post(who, "/runs", json=body), 403, "forbidden")
            error_of(api.post(who, "/runs", json={**body, "organization": "acme"}), 404, "not_found")
        stage = {"run_type": "system_maintenance", "config": {"handlers": ["retention"], "retention_days": 1}}
        pipeline = {"run_type": "pipeline", "config": {"stages": [stage]}, "organization": "beta"}
        error_of(api.post(who, "/runs", json=pipeline), 403, "forbidden")
        error_of(api.post(who, f"/runs/{legacy.id}/retry"), 403, "forbidden")  # a retry submits the type again
    assert [r.id for r in runs_of("system_maintenance")] == [legacy.id] and runs_of("pipeline") == []
    assert existing([*a_old, a_recent]) == 4

    body = {"run_type": "system_maintenance", "config": {"handlers": ["retention", "health"], "retention_days": 1},
            "organization": "beta"}  # whatever organization is named, the run is the system's
    started = api.ok("root", "POST", "/runs", 201, json=body)
    assert started["organization"] == "system" and started["organization_id"] == str(system_org().id)
    done = api.wait_status("root", started["id"], "completed", "failed")
    assert done["status"] == "completed", done["error_message"]
    assert existing(a_old) == 0 and existing([a_recent, b_recent]) == 2

    [entry] = [e for e in audit.recent({api.a.id}) if e.action == "retention"]
    assert entry.actor == "root@example.com" and entry.run_id == uuid.UUID(started["id"])
    assert entry.details["deleted_runs"] == 3 and entry.details["deleted_log_events"] >= 3
    assert entry.details["retention_days"] == 1
    assert [e for e in audit.recent({api.b.id}) if e.action == "retention"] == []  # nothing of B's went
    for who in ("b_member", "b_admin", "a_admin"):  # the system run, with its instance-wide health, is no one's
        error_of(api.get(who, f"/runs/{started['id']}"), 404, "run_not_found")
        assert started["id"] not in {r["id"] for r in api.ok(who, "GET", "/runs")["items"]}


def test_a_type_says_who_submits_it_directly_and_as_a_pipeline_stage(api):  # type: ignore[no-untyped-def]
    procedure = get_registry().resolve("procedure")
    assert procedure.submit_role == NEEDS["submit"]  # the type's rule, by default the table's
    get_registry().register(dataclasses.replace(procedure, key="admin_procedure", aliases=(), submit_role="admin"))
    get_registry().register(dataclasses.replace(procedure, key="open_procedure", aliases=(), submit_role="viewer"))
    config = {"procedure": "verify_assets"}
    body = {"run_type": "admin_procedure", "config": config, "organization": "acme"}
    stage = {"stages": [{"run_type": "admin_procedure", "config": config}]}

    message = error_of(api.post("a_member", "/runs", json=body), 403, "forbidden")
    assert "member" in message and "admin" in message
    error_of(api.post("a_member", "/runs", json={"run_type": "pipeline", "config": stage, "organization": "acme"}),
             403, "forbidden")
    error_of(api.post("a_viewer", "/runs", json={**body, "run_type": "procedure"}), 403, "forbidden")
    assert runs_of("admin_procedure") == [] and runs_of("pipeline") == []

    assert api.ok("a_admin", "POST", "/runs", 201, json=body)["organization"] == "acme"
    api.ok("a_admin", "POST", "/runs", 201, json={"run_type": "pipeline", "config": stage, "organization": "acme"})
    api.ok("a_viewer", "POST", "/runs", 201, json={**body, "run_type": "open_procedure",
                                                    "config": {"procedure": "other"}})
    error_of(api.post("b_admin", "/runs", json=body), 404, "not_found")  # B's admin is no admin of A
    assert get_registry().resolve("system_maintenance").public()["system_only"] is True


# --------------------------------------------------------------------------- door 4: system schedules


def test_org_admins_cannot_manage_the_system_schedules(api):  # type: ignore[no-untyped-def]
    demo = get_org("demo")
    # A database from before system-only types: the default schedule and a past run belong to demo.
    in_transaction(lambda s: s.execute(insert(ScheduledTask).values(
        id=uuid.uuid4(), name="retention-daily", description="old", organization_id=demo.id,
        run_type="system_maintenance", config={"handlers": ["retention"]}, interval_seconds=86400, enabled=True,
        next_run_at=utcnow() + timedelta(hours=1))))
    past = service.create_run("system_maintenance", {"handlers": ["health"]}, organization_id=demo.id)
    assert api.ok("demo_admin", "GET", f"/runs/{past.id}")["organization"] == "demo"

    tasks = {t.name: t for t in schedules.ensure_defaults()}
    assert set(tasks) == {"maintenance-hourly", "retention-daily"}
    assert {t.organization_id for t in tasks.values()} == {system_org().id}
    error_of(api.get("demo_admin", f"/runs/{past.id}"), 404, "run_not_found")  # moved to the system org

    for who in ("demo_admin", "a_admin", "a_viewer"):
        for name in ("retention-daily", "maintenance-hourly"):
            for action in ("enable", "disable", "trigger"):
                error_of(api.post(who, f"/schedules/{name}/{action}"), 404, "schedule_not_found")
            error_of(api.get(who, f"/schedules/{name}/history"), 404, "schedule_not_found")
        assert api.ok(who, "GET", "/schedules")["items"] == []
    with pytest.raises(NotFound):
        actions.trigger_schedule(principal("demo_admin"), "retention-daily")
    assert schedules.history("retention-daily") == [] and schedules.get_schedule("retention-daily").enabled

    assert api.ok("root", "POST", "/schedules/retention-daily/disable")["enabled"] is False
    run = api.ok("root", "POST", "/schedules/maintenance-hourly/trigger", 201)
    assert run["organization"] == "system" and run["created_by"] == "schedule:maintenance-hourly"


# --------------------------------------------------------------------------- door 5: refused UI events


def test_a_refused_queue_page_event_changes_nothing_and_returns_nothing(api):  # type: ignore[no-untyped-def]
    from curatore_ui.pages.queues import schedule_event

    schedules.ensure_defaults()
    service.create_run("extraction", {"asset_id": str(uuid.uuid4())}, organization_id=api.b.id)  # B's queue depth
    for who in ("a_viewer", "demo_admin"):
        for action, args in ((actions.trigger_schedule, ("retention-daily",)),
                             (actions.set_schedule_enabled, ("maintenance-hourly", False))):
            assert schedule_event(principal(who), action, *args) == {"notice": None, "data": None}
    assert schedule_event(None, actions.trigger_schedule, "retention-daily") == {"notice": None, "data": None}
    assert schedules.history("retention-daily") == [] and schedules.get_schedule("maintenance-hourly").enabled

    shown = schedule_event(principal("root"), actions.trigger_schedule, "retention-daily")
    assert shown["notice"] == "" and {s.name for s in shown["data"]["schedules"]} == {
        "maintenance-hourly", "retention-daily"}
    assert len(schedules.history("retention-daily")) == 1


# --------------------------------------------------------------------------- door 6: creating organizations


def test_only_system_admins_create_organizations(api):  # type: ignore[no-untyped-def]
    from curatore_ui.pages.jobs_list_state import _start_samples

    before = org_count()
    with pytest.raises(NotFound) as unknown:
        _start_samples("brand-new", principal("a_viewer"))
    with pytest.raises(NotFound) as foreign:
        _start_samples("beta", principal("a_viewer"))
    assert unknown.value.message == foreign.value.message == "That organization does not exist."
    with pytest.raises(Forbidden):
        _start_samples("acme", principal("a_viewer"))
    with pytest.raises(NotFound):
        _start_samples("brand-new", principal("root"))  # a system admin too: organizations come from the CLI
    assert org_count() == before and list_runs() == []
    with pytest.raises(ReservedOrganization):
        ensure_org("system")

    member_runs = _start_samples("acme", principal("a_member"))
    assert member_runs and "system_maintenance" not in {r.run_type for r in member_runs}
    [health] = [r for r in _start_samples("beta", principal("root")) if r.run_type == "system_maintenance"]
    assert health.organization_id == system_org().id
    with pytest.raises(ReservedOrganization):  # nobody is ever a member of the system organization
        users.set_role(users.get_user("a_viewer@example.com").id, system_org().id, "viewer")
    assert principal("root").role_in(system_org().id) == "admin" and principal("a_admin").visible_orgs() == {
        api.a.id}


def test_cli_refuses_an_unknown_org_and_the_system_org(backend, tmp_path):  # type: ignore[no-untyped-def]
    memo = tmp_path / "memo.txt"
    memo.write_text("a memo\n")
    config = json.dumps({"path": str(memo)})
    ensure_org("acme")
    before = org_count()

    typo = run_cli(backend, tmp_path, "submit", "extraction", "--org", "acmee", "--config", config)
    assert assert_one_line_error(typo, "No organization") == (
        "error: No organization 'acmee' (create it with: curatore orgs create acmee)")
    assert org_count() == before and list_runs() == []
    assert in_transaction(lambda s: s.execute(select(func.count()).select_from(Asset)).scalar_one()) == 0

    assert_one_line_error(run_cli(backend, tmp_path, "orgs", "create", "system"), "The organization slug 'system'")
    health = run_cli(backend, tmp_path, "submit", "system_maintenance", "--org", "acme", "--config",
                     '{"handlers": ["health"]}')
    assert health.returncode == 0, health.stderr
    assert get_run(uuid.UUID(health.stdout.strip())).organization_id == system_org().id
    refused = run_cli(backend, tmp_path, "users", "create", "eve@example.com", "--password", PASSWORD, "--org",
                      "system", "--role", "admin")
    assert_one_line_error(refused, "Nobody can be given a role in the 'system' organization")
    assert in_transaction(lambda s: s.execute(select(func.count()).select_from(User)).scalar_one()) == 0

