"""Browser sign-in over HTTP (``/auth/login``, ``/auth/logout``), tried as an attacker would: the cookie's
attributes, what the database keeps, forged and cross-site posts, open redirects, guessing, stale and idle
sessions, a changed secret key, bad bodies."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import select, update

from backend.api.app import create_api
from backend.api.signin import COOKIE, session_secret
from backend.auth import users
from backend.config import reset_settings
from backend.db.engine import in_transaction
from backend.db.models import AuditEntry, LoginSession
from backend.db.types import utcnow
from tests.api_client import ApiClient

pytestmark = pytest.mark.integration

SITE = "http://testserver"
PASSWORD = "a-long-enough-password"


@pytest.fixture
def client(sqlite_backend) -> Iterator[ApiClient]:  # type: ignore[no-untyped-def]
    users.create_user("ann@example.com", PASSWORD)
    with ApiClient(create_api()) as c:
        yield c


def sign_in(client: ApiClient, email: str = "ann@example.com", password: str = PASSWORD, next_path: str = "/",
            origin: str | None = SITE, base: str = "", **headers: str):  # type: ignore[no-untyped-def]
    if origin is not None:
        headers["origin"] = origin
    return client.post(f"{base}/auth/login", data={"email": email, "password": password, "next": next_path},
                       headers=headers, follow_redirects=False)


def set_cookie(response) -> str:  # type: ignore[no-untyped-def]
    return "; ".join(response.headers.get_list("set-cookie"))


def test_sign_in_sets_an_httponly_strict_cookie_and_stores_only_a_keyed_digest(client):
    r = sign_in(client, next_path="/orgs/demo/jobs?status=failed")
    assert r.status_code == 303 and r.headers["location"] == "/orgs/demo/jobs?status=failed"
    header = set_cookie(r)
    assert re.search(rf"{COOKIE}=ses_[\w-]+", header)
    attrs = {a.strip().lower() for a in header.split(";")}
    assert {"httponly", "samesite=strict", "path=/"} <= attrs and "secure" not in attrs  # plain http, not prod
    secret = session_secret(header.split(";")[0])
    stored = in_transaction(lambda s: s.execute(select(LoginSession.secret_hash)).scalars().all())
    assert len(stored) == 1 and secret not in stored[0]
    assert stored[0] != hashlib.sha256(secret.encode()).hexdigest()  # a keyed HMAC, not a plain hash
    assert users.user_for_session(secret).email == "ann@example.com"
    assert "login" in _audited("ann@example.com")


def test_the_cookie_is_secure_over_https_and_in_prod(client, monkeypatch):
    assert "secure" in set_cookie(sign_in(client, base="https://testserver", origin="https://testserver")).lower()
    monkeypatch.setenv("CURATORE_ENV", "prod")
    monkeypatch.setenv("CURATORE_SECRET_KEY", "x" * 48)
    reset_settings()
    try:
        assert "; secure" in set_cookie(sign_in(client)).lower()
    finally:
        monkeypatch.undo()
        reset_settings()


def test_wrong_password_and_unknown_email_get_the_same_answer(client):
    wrong, unknown = sign_in(client, password="not-the-password"), sign_in(client, email="nobody@example.com")
    for r in (wrong, unknown):
        assert r.status_code == 303 and "set-cookie" not in r.headers
        assert parse_qs(urlsplit(r.headers["location"]).query) == {"error": ["invalid"], "next": ["/"]}
    assert sign_in(client, password="").headers["location"].startswith("/login?error=missing")


@pytest.mark.parametrize("target", ["/\\evil.example", "/%5Cevil.example", "//evil.example", "https://evil.example",
                                    "/%2F%2Fevil.example", "javascript:alert(1)"])
def test_next_never_leaves_the_site(client, target):
    assert sign_in(client, next_path=target).headers["location"] == "/"
    refused = sign_in(client, password="wrong-password", next_path=target)
    assert parse_qs(urlsplit(refused.headers["location"]).query)["next"] == ["/"]


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://testserver.evil.example"])
def test_a_cross_site_form_cannot_sign_anyone_in_or_out(client, origin):
    for path in ("/auth/login", "/auth/logout"):
        r = client.post(path, data={"email": "ann@example.com", "password": PASSWORD}, headers={"origin": origin},
                        follow_redirects=False)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden" and "set-cookie" not in r.headers
    r = sign_in(client, **{"sec-fetch-site": "cross-site"})
    assert r.status_code == 403
    assert in_transaction(lambda s: s.execute(select(LoginSession)).first()) is None


def test_guessing_locks_the_account_and_the_right_password_waits(client):
    for n in range(5):
        sign_in(client, password=f"guess-{n}")
    r = sign_in(client)
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["error"] == ["locked"] and int(query["wait"][0]) > 0 and "set-cookie" not in r.headers


def test_sign_out_ends_the_session_server_side_and_clears_the_cookie(client):
    secret = session_secret(set_cookie(sign_in(client)).split(";")[0])
    r = client.post("/auth/logout", headers={"origin": SITE, "cookie": f"{COOKIE}={secret}"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert re.search(rf'{COOKIE}=(""|);', set_cookie(r)) and "max-age=0" in set_cookie(r).lower()
    assert users.user_for_session(secret) is None  # a copy of the cookie kept by an attacker opens nothing
    assert "logout" in _audited("ann@example.com")


def test_signing_in_again_ends_the_session_this_browser_had(client):
    first = session_secret(set_cookie(sign_in(client)).split(";")[0])
    sign_in(client, cookie=f"{COOKIE}={first}")
    assert users.user_for_session(first) is None


def test_idle_and_absolute_expiry(client, monkeypatch):
    secret = session_secret(set_cookie(sign_in(client)).split(";")[0])
    assert users.session_for(secret) is not None
    long_ago = utcnow() - timedelta(minutes=61)
    in_transaction(lambda s: s.execute(update(LoginSession).values(last_seen_at=long_ago)))
    assert users.session_for(secret) is None  # idle past CURATORE_SESSION_IDLE_MINUTES (60)
    monkeypatch.setenv("CURATORE_SESSION_IDLE_MINUTES", "120")
    reset_settings()
    assert users.session_for(secret) is not None
    in_transaction(lambda s: s.execute(update(LoginSession).values(expires_at=utcnow() - timedelta(seconds=1))))
    assert users.session_for(secret) is None  # past its absolute end, however active
    monkeypatch.undo()
    reset_settings()


def test_a_new_secret_key_ends_every_session_and_forged_cookies_open_nothing(client, monkeypatch):
    secret = session_secret(set_cookie(sign_in(client)).split(";")[0])
    for forged in ("", "ses_", secret + "x", secret[:-1], "ses_" + "A" * 5000, "\x00", "ses_\ud800"):
        assert users.session_for(forged) is None
    monkeypatch.setenv("CURATORE_SECRET_KEY", "another-secret-key-of-enough-length-42")
    reset_settings()
    assert users.session_for(secret) is None
    monkeypatch.undo()
    reset_settings()
    assert users.session_for(secret) is not None


@pytest.mark.parametrize("body,content_type", [
    (b'{"email": "ann@example.com", "password": "x"}', "application/json"),
    (b"email=ann%40example.com&password=" + b"A" * 20000, "application/x-www-form-urlencoded"),
    (b"email=\xff\xfe&password=x", "application/x-www-form-urlencoded"),
])
def test_bad_bodies_are_a_clear_400(client, body, content_type):
    r = client.post("/auth/login", content=body, headers={"origin": SITE, "content-type": content_type},
                    follow_redirects=False)
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


def test_an_oversized_field_or_nul_is_refused_without_a_500(client):
    for email, password in (("a" * 5000 + "@x.example", "pw"), ("ann@example.com\x00", PASSWORD),
                            ("ann@example.com", "\x00" * 10)):
        r = sign_in(client, email=email, password=password)
        assert r.status_code == 303 and "error=" in r.headers["location"] and "set-cookie" not in r.headers


def _audited(actor: str) -> list[str]:
    return list(in_transaction(lambda s: s.execute(select(AuditEntry.action).where(AuditEntry.actor == actor))
                               .scalars().all()))
