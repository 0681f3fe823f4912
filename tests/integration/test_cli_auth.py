"""``curatore users …`` and ``curatore tokens …``, run as real subprocesses against each backend's database; the
tokens they make are then used on the REST API (in-process)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from backend.api.app import PREFIX, create_api
from backend.auth.users import authenticate, get_user, memberships
from backend.db.engine import in_transaction
from backend.db.models import ApiToken, User
from tests.api_client import ApiClient

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def curatore(backend, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:  # type: ignore
    env = {**os.environ, **backend.env}
    if backend.redis_url is None:
        env.pop("CURATORE_REDIS_URL", None)
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def refused(result: subprocess.CompletedProcess[str], starts: str) -> None:
    """Exit status 2 and one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {starts}"), result.stderr
    assert result.stdout == ""


def test_users_create_role_and_list(backend, org):  # type: ignore[no-untyped-def]
    out = ok(curatore(backend, "users", "create", "Ann@Example.com", "--password-stdin", "--name", "Ann",
                      "--org", "acme", "--role", "viewer", stdin="a long passphrase\n"))
    assert "ann@example.com" in out and "viewer in acme" in out
    ann = get_user("ann@example.com")
    assert ann.name == "Ann" and ann.password_hash.startswith("$argon2")
    assert authenticate("ann@example.com", "a long passphrase") is not None
    assert [(o.slug, role) for o, role in memberships(ann.id)] == [("acme", "viewer")]

    assert "admin in acme" in ok(curatore(backend, "users", "role", "ann@example.com", "--org", "acme",
                                          "--role", "admin"))
    assert [(o.slug, role) for o, role in memberships(ann.id)] == [("acme", "admin")]
    ok(curatore(backend, "users", "create", "root@example.com", "--password", "another passphrase",
                "--system-admin"))
    assert get_user("root@example.com").is_system_admin

    listed = json.loads(ok(curatore(backend, "users", "list", "--json")))
    assert [(u["email"], u["roles"], u["system_admin"]) for u in listed] == [
        ("ann@example.com", {"acme": "admin"}, False), ("root@example.com", {}, True)]
    text = ok(curatore(backend, "users", "list"))
    assert "acme:admin" in text and "system admin" in text and "passphrase" not in text

    refused(curatore(backend, "users", "create", "ann@example.com", "--password", "long enough"), "A user")
    refused(curatore(backend, "users", "create", "cy@example.com", "--password", "short"), "A password needs")
    refused(curatore(backend, "users", "create", "cy@example.com", "--password", "long enough", "--org", "nope"),
            "No organization")
    refused(curatore(backend, "users", "create", "cy@example.com", "--password", "long enough", "--role", "admin"),
            "--role needs --org")
    refused(curatore(backend, "users", "create", "cy@example.com", "--password", "x" * 9, "--password-stdin"),
            "Use either")
    refused(curatore(backend, "users", "role", "nobody@example.com", "--org", "acme", "--role", "viewer"), "No user")
    assert in_transaction(lambda s: s.execute(select(User.email).order_by(User.email)).scalars().all()) == [
        "ann@example.com", "root@example.com"]  # the refused commands created nobody


def test_a_token_is_shown_once_stored_hashed_and_revoked_for_the_api(backend, org):  # type: ignore[no-untyped-def]
    ok(curatore(backend, "users", "create", "ann@example.com", "--password-stdin", "--org", "acme",
                stdin="a long passphrase\n"))
    made = curatore(backend, "tokens", "create", "ann@example.com", "--name", "ci", "--days", "7")
    secret = ok(made).strip()
    assert len(ok(made).splitlines()) == 1 and secret.startswith("cur_")
    assert "shown only this once" in made.stderr and "expires" in made.stderr

    stored = in_transaction(lambda s: s.execute(select(ApiToken)).scalars().one())
    assert stored.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps(stored.model_dump(mode="json"))
    assert stored.expires_at is not None and stored.name == "ci"

    listed = ok(curatore(backend, "tokens", "list", "ann@example.com"))
    assert str(stored.id) in listed and stored.prefix in listed and secret not in listed and "active" in listed

    headers = {"Authorization": f"Bearer {secret}"}
    with ApiClient(create_api()) as client:
        assert client.get(PREFIX + "/runs", headers=headers).status_code == 200
        assert ok(curatore(backend, "tokens", "revoke", str(stored.id))).startswith(f"revoked {stored.id}")
        r = client.get(PREFIX + "/runs", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"

    data = json.loads(ok(curatore(backend, "tokens", "list", "ann@example.com", "--json")))
    assert [(t["id"], t["status"]) for t in data] == [(str(stored.id), "revoked")] and data[0]["last_used_at"]
    refused(curatore(backend, "tokens", "revoke", "not-a-uuid"), "'not-a-uuid' is not a token id")
    refused(curatore(backend, "tokens", "revoke", "00000000-0000-0000-0000-000000000000"), "No token")
    refused(curatore(backend, "tokens", "create", "nobody@example.com", "--name", "x"), "No user")


def test_an_operator_locks_a_user_out_from_the_cli(backend):
    """disable ends the sessions and tokens and refuses sign-in; enable lets the user back in (not their old
    tokens); reset-password and end-sessions; remove takes a membership away; each is audited as ``cli``."""
    from backend import audit
    from backend.auth.users import start_session, user_for_session, user_for_token

    ok(curatore(backend, "orgs", "create", "lockout-org"))
    ok(curatore(backend, "users", "create", "mallory@example.com", "--password-stdin", "--org", "lockout-org",
                "--role", "member", stdin="first password 1\n"))
    user = get_user("mallory@example.com")
    token = ok(curatore(backend, "tokens", "create", "mallory@example.com", "--name", "laptop")).strip().splitlines()[-1]
    session = start_session(user.id)
    assert user_for_token(token) is not None and user_for_session(session) is not None

    assert "disabled" in ok(curatore(backend, "users", "disable", "mallory@example.com"))
    assert user_for_token(token) is None and user_for_session(session) is None
    assert authenticate("mallory@example.com", "first password 1") is None
    ok(curatore(backend, "users", "enable", "mallory@example.com"))
    assert authenticate("mallory@example.com", "first password 1") is not None
    assert user_for_token(token) is None  # the old token stays revoked

    session = start_session(user.id)
    ok(curatore(backend, "users", "reset-password", "mallory@example.com", "--password-stdin",
                stdin="second password 2\n"))
    assert user_for_session(session) is None
    assert authenticate("mallory@example.com", "first password 1") is None
    assert authenticate("mallory@example.com", "second password 2") is not None

    ok(curatore(backend, "users", "remove", "mallory@example.com", "--org", "lockout-org"))
    assert memberships(user.id) == []
    done = [e.action for e in audit.recent(None, 50) if e.actor == "cli"]
    assert {"user_disable", "user_enable", "password_reset", "membership_remove"} <= set(done)
