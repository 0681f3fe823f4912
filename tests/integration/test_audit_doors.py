"""Every action of ``backend/actions.py`` writes an audit entry whichever door a person uses: the REST API (a
viewer's token: refused, ``<name>_refused``), the CLI (the operator: carried out or refused, actor ``cli``), and
the UI, whose states call the same actions (the must-show browser test disables a user from the Members page
and finds the entry on the Audit page). ``DOORS`` lists every action and its doors; a new action without an
entry here fails the first test."""

from __future__ import annotations

import inspect
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from backend import actions
from backend.api.app import PREFIX, create_api
from backend.auth import users
from backend.auth.orgs import ensure_org
from backend.db.engine import in_transaction
from backend.db.models import AuditEntry
from tests.api_client import ApiClient
from tests.integration.test_cli import run_cli

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RUN = str(uuid.uuid4())

# action -> {"api": (method, path, json body), "cli": argv, "ui": the page module that calls it}
DOORS: dict[str, dict[str, object]] = {
    "submit": {"api": ("POST", "/runs", {"run_type": "extraction", "config": {"asset_id": RUN},
                                         "organization": "doors"}),
               "cli": ["submit", "procedure", "--org", "doors", "--config", '{"procedure": "verify_assets"}'],
               "ui": "curatore_ui/pages/asset.py"},  # and the sync page; "Start sample jobs" audits in samples.py
    "cancel": {"api": ("POST", f"/runs/{RUN}/cancel", None), "ui": "curatore_ui/pages/jobs_list_state.py"},
    "retry": {"api": ("POST", f"/runs/{RUN}/retry", None), "ui": "curatore_ui/pages/jobs_list_state.py"},
    "boost": {"api": ("POST", f"/runs/{RUN}/boost", None), "ui": "curatore_ui/pages/job_detail_state.py"},
    "force_kill": {"api": ("POST", f"/runs/{RUN}/force-kill", None), "ui": "curatore_ui/pages/job_detail_state.py"},
    "set_schedule_enabled": {"api": ("POST", "/schedules/maintenance-hourly/disable", None),
                             "ui": "curatore_ui/pages/queues.py"},
    "trigger_schedule": {"api": ("POST", "/schedules/maintenance-hourly/trigger", None),
                         "ui": "curatore_ui/pages/queues.py"},
    "create_user": {"cli": ["users", "create", "new@doors.example", "--password", "a-new-password",
                            "--org", "doors"], "ui": "curatore_ui/pages/members.py"},
    "set_user_disabled": {"cli": ["users", "disable", "viewer@doors.example"], "ui": "curatore_ui/pages/members.py"},
    "set_role": {"cli": ["users", "role", "viewer@doors.example", "--org", "doors", "--role", "member"],
                 "ui": "curatore_ui/pages/members.py"},
    "remove_membership": {"cli": ["users", "remove", "nobody@doors.example", "--org", "doors"],
                          "ui": "curatore_ui/pages/members.py"},
    "reset_password": {"cli": ["users", "reset-password", "viewer@doors.example", "--password-stdin"],
                       "ui": "curatore_ui/pages/members.py"},
    "end_user_sessions": {"cli": ["users", "end-sessions", "viewer@doors.example"],
                          "ui": "curatore_ui/pages/members.py"},
    "change_password": {"ui": "curatore_ui/pages/account.py"},
    "create_token": {"cli": ["tokens", "create", "viewer@doors.example", "--name", "doors"]},
    "revoke_token": {"cli": ["tokens", "revoke", RUN]},
}


# What each action writes when carried out (a refusal is always "<name>_refused").
AUDITED = {"set_schedule_enabled": "schedule_disable", "trigger_schedule": "schedule_trigger",
           "create_user": "user_create", "set_user_disabled": "user_disable", "set_role": "user_role",
           "remove_membership": "membership_remove", "reset_password": "password_reset",
           "end_user_sessions": "sessions_end", "change_password": "password_change", "create_token": "token_create",
           "revoke_token": "token_revoke"}


def entries(actor: str, name: str) -> int:
    names = [AUDITED.get(name, name), f"{name}_refused"]
    return in_transaction(lambda s: s.execute(select(func.count()).select_from(AuditEntry).where(
        AuditEntry.actor == actor, AuditEntry.action.in_(names))).scalar_one())


def test_every_action_lists_its_doors_and_each_ui_door_calls_it():
    assert set(DOORS) == set(actions.ACTIONS)
    for name, doors in DOORS.items():
        if "ui" in doors:
            assert f"actions.{name}" in (ROOT / str(doors["ui"])).read_text(), (name, doors["ui"])
        assert "api" in doors or "cli" in doors or "ui" in doors, name


@pytest.fixture
def doors(sqlite_backend):  # type: ignore[no-untyped-def]
    org = ensure_org("doors")
    viewer = users.create_user("viewer@doors.example", "viewer-password")
    users.set_role(viewer.id, org.id, "viewer")
    _, token = users.create_token(viewer.id, "viewer")
    return {"backend": sqlite_backend, "token": token}


@pytest.mark.parametrize("name", [n for n, d in DOORS.items() if "api" in d])
def test_the_api_door_audits(doors, name):
    method, path, body = DOORS[name]["api"]  # type: ignore[misc]
    with ApiClient(create_api()) as client:
        r = client.request(method, PREFIX + path, json=body, headers={"Authorization": f"Bearer {doors['token']}"})
    assert r.status_code in (403, 404), r.text  # a viewer may do none of them
    assert entries("viewer@doors.example", name) == 1, name


@pytest.mark.parametrize("name", [n for n, d in DOORS.items() if "cli" in d])
def test_the_cli_door_audits(doors, name, tmp_path):
    argv = [str(a) for a in DOORS[name]["cli"]]  # type: ignore[union-attr]
    backend = doors["backend"]
    if "--password-stdin" in argv:
        import os
        import subprocess
        import sys

        subprocess.run([sys.executable, "-m", "backend.cli", *argv], cwd=ROOT, env={**os.environ, **backend.env},
                       input="another-password\n", capture_output=True, text=True, timeout=90)
    else:
        run_cli(backend, ROOT, *argv)
    assert entries("cli", name) >= 1, name


def test_the_ui_calls_actions_with_a_principal_not_the_engine():
    """The pages reach the engine's account and run changes only through actions (which audit)."""
    for path in ("curatore_ui/pages/members.py", "curatore_ui/pages/account.py"):
        text = (ROOT / path).read_text()
        assert "backend.auth.manage" not in text and "users.set_role" not in text, path
    assert inspect.getsource(actions.members).count("require") == 1


def test_start_sample_jobs_audits_every_run_it_submits(doors):
    from backend.demo.samples import start_samples

    started = start_samples(ensure_org("doors").id, created_by="viewer@doors.example")
    audited = in_transaction(lambda s: s.execute(select(AuditEntry.run_id).where(
        AuditEntry.actor == "viewer@doors.example", AuditEntry.action == "submit")).scalars().all())
    assert started and sorted(map(str, audited)) == sorted(str(r.id) for r in started)
