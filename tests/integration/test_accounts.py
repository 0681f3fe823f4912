"""Accounts an operator can trust (issue 15, items 2, 3, 8, 9), tried as an attacker and as an admin would, on
SQLite and PostgreSQL: sign-in lockout shared by every process (the database counts), disabling a user ends
their sessions and tokens, org admins manage only their own users, every action audits its refusal, and
tracebacks are for system admins only."""

from __future__ import annotations

import inspect
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from backend import actions
from backend.auth import users
from backend.auth.access import Principal
from backend.auth.lockout import TooManySignIns
from backend.auth.orgs import ensure_org
from backend.db.engine import in_transaction
from backend.db.models import AuditEntry
from backend.errors import CuratoreError

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"


def person(email: str, org=None, role: str = "member", system_admin: bool = False):
    user = users.create_user(email, PASSWORD, system_admin=system_admin)
    if org is not None:
        users.set_role(user.id, org.id, role)
    return user


def audit_actions(actor: str) -> list[str]:
    return list(in_transaction(lambda s: s.execute(
        select(AuditEntry.action).where(AuditEntry.actor == actor).order_by(AuditEntry.id)).scalars().all()))


def test_repeated_failures_lock_the_account_even_for_the_right_password(backend):
    person("target@example.com")
    # An attacker guesses from several threads at once (each its own connection): every failure counts.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: _try("target@example.com", f"guess-{n}", "203.0.113.9"), range(8)))
    assert all(a in (None, "locked") for a in answers)
    with pytest.raises(TooManySignIns, match=r"try again in \d+ s"):
        users.authenticate("target@example.com", PASSWORD, "198.51.100.1")  # the right password, elsewhere
    assert "login_lockout" in audit_actions("target@example.com") or \
        "login_refused" in audit_actions("target@example.com")


def _try(email: str, password: str, address: str):
    try:
        return users.authenticate(email, password, address)
    except TooManySignIns:
        return "locked"


def test_a_good_sign_in_before_the_limit_still_works(backend):
    person("careful@example.com")
    for _ in range(2):
        assert users.authenticate("careful@example.com", "typo", "192.0.2.1") is None
    assert users.authenticate("careful@example.com", PASSWORD, "192.0.2.1") is not None


def test_disabling_a_user_ends_their_sessions_and_tokens(backend):
    org = ensure_org("acct-a")
    admin = person("admin@acct-a.example", org, "admin")
    victim = person("member@acct-a.example", org, "member")
    session = users.start_session(victim.id)
    _, token = users.create_token(victim.id, "laptop")
    assert users.user_for_session(session) is not None and users.user_for_token(token) is not None

    actions.set_user_disabled(Principal.of(admin), victim.email, True)
    assert users.user_for_session(session) is None
    assert users.user_for_token(token) is None
    assert users.authenticate(victim.email, PASSWORD) is None
    actions.set_user_disabled(Principal.of(admin), victim.email, False)
    assert users.user_for_token(token) is None  # re-enabling does not bring the old token back
    assert audit_actions(admin.email) == ["user_disable", "user_enable"]


def test_an_org_admin_cannot_manage_a_user_of_another_organization(backend):
    a, b = ensure_org("acct-a"), ensure_org("acct-b")
    admin_a = person("admin@a.example", a, "admin")
    outsider = person("member@b.example", b, "member")
    with pytest.raises(CuratoreError) as refused:
        actions.reset_password(Principal.of(admin_a), outsider.email, "a new password for you")
    assert refused.value.http_status in (403, 404)
    assert users.authenticate(outsider.email, PASSWORD) is not None  # unchanged
    entries = in_transaction(lambda s: s.execute(select(AuditEntry).where(
        AuditEntry.action == "reset_password_refused")).scalars().all())
    assert entries and all(e.organization_id != b.id for e in entries)  # nothing lands in B's log


def test_every_action_is_listed_and_audits_its_refusal(backend):
    public = {name for name, fn in inspect.getmembers(actions, inspect.isfunction)
              if fn.__module__ == actions.__name__ and not name.startswith("_")}
    assert set(actions.ACTIONS) | set(actions.READS) | {"action", "shown_log_context", "require_submit"} >= public
    org = ensure_org("acct-viewers")
    viewer = Principal.of(person("viewer@acct.example", org, "viewer"))
    refused = 0
    for name, fn in actions.ACTIONS.items():
        required = [p for p in list(inspect.signature(fn).parameters.values())[1:]
                    if p.default is inspect.Parameter.empty
                    and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        try:
            fn(viewer, **{p.name: _dummy(p.name, org) for p in required})
        except CuratoreError:
            refused += 1
            assert f"{name}_refused" in audit_actions(viewer.name), name
    assert refused == len(actions.ACTIONS)  # a viewer may do none of them


def _dummy(param: str, org):
    import uuid

    return {"organization_id": org.id, "run_id": uuid.uuid4(), "token_id": uuid.uuid4(), "enabled": True,
            "disabled": True, "config": {}, "run_type": "extraction", "email": "nobody@example.com",
            "name": "maintenance-hourly", "role": "admin", "password": "x" * 12, "old_password": "wrong",
            "new_password": "y" * 12}.get(param, "x")


def test_tracebacks_are_for_system_admins_only():
    context = {"traceback": "File /srv/app.py, line 42", "step": 3}
    assert actions.shown_log_context(context, system_admin=False) == {"step": 3}
    assert actions.shown_log_context(context, system_admin=True) == context
