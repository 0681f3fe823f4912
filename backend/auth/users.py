"""Users, memberships and roles; browser login sessions; API tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from backend import audit
from backend.auth import lockout
from backend.auth.orgs import refuse_members
from backend.auth.passwords import digest, hash_password, new_secret, session_digest, verify_password
from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import ApiToken, LoginSession, Membership, Organization, User
from backend.db.types import utcnow
from backend.errors import CuratoreError, NotFound
from backend.validation import storable

ROLES = ("viewer", "member", "admin")
MIN_PASSWORD = 8


def create_user(email: str, password: str, *, name: str = "", system_admin: bool = False) -> User:
    email = email.strip().lower()
    if "@" not in email:
        raise CuratoreError(f"{email!r} is not an email address.")
    if len(password) < MIN_PASSWORD:
        raise CuratoreError(f"A password needs at least {MIN_PASSWORD} characters.")

    def write(s: Any) -> User:
        if s.execute(select(User.id).where(User.email == email)).scalar_one_or_none():
            raise CuratoreError(f"A user {email} exists already.")
        user = User(email=email, name=name or email.split("@")[0], password_hash=hash_password(password),
                    is_system_admin=system_admin)
        s.add(user)
        s.flush()
        return user

    return in_transaction(write)


def get_user(email: str) -> User:
    user = in_transaction(lambda s: s.execute(select(User).where(User.email == email.strip().lower()))
                          .scalar_one_or_none())
    if user is None:
        raise NotFound(f"No user {email}.")
    return user


def set_role(user_id: uuid.UUID, organization_id: uuid.UUID, role: str) -> None:
    if role not in ROLES:
        raise CuratoreError(f"Unknown role {role!r}; use one of {', '.join(ROLES)}.")
    refuse_members(organization_id)

    def write(s: Any) -> None:
        changed = s.execute(update(Membership).where(Membership.user_id == user_id,
                                                     Membership.organization_id == organization_id)
                            .values(role=role)).rowcount
        if not changed:
            s.add(Membership(user_id=user_id, organization_id=organization_id, role=role))

    in_transaction(write)


def memberships(user_id: uuid.UUID) -> list[tuple[Organization, str]]:
    stmt = (select(Organization, Membership.role).join(Membership, Membership.organization_id == Organization.id)
            .where(Membership.user_id == user_id).order_by(Organization.slug))
    return [(org, role) for org, role in in_transaction(lambda s: s.execute(stmt).all())]


def members(organization_id: uuid.UUID) -> list[tuple[User, str]]:
    """The organization's users and their roles, by email."""
    stmt = (select(User, Membership.role).join(Membership, Membership.user_id == User.id)
            .where(Membership.organization_id == organization_id).order_by(User.email))
    return [(user, role) for user, role in in_transaction(lambda s: s.execute(stmt).all())]


def authenticate(email: str, password: str, address: str | None = None) -> User | None:
    """The user with this email and password, or None (same answer for an unknown email or a disabled user).

    Every password door calls this: it raises :class:`~backend.auth.lockout.TooManySignIns` while the account
    or the source ``address`` is locked out, whatever the password, and counts each failure (see lockout)."""
    email = storable(email.strip().lower())[:lockout.MAX_KEY]  # the driver could not send a NUL
    address = storable(address) if address else None
    try:
        lockout.check(email, address)
    except lockout.TooManySignIns as exc:
        audit.record(email, "login_refused", reason=exc.message, address=address)
        raise
    user = in_transaction(lambda s: s.execute(select(User).where(User.email == email)).scalar_one_or_none())
    if user is None or user.disabled:
        verify_password(hash_password("timing-equalizer"), password)
        user = None
    elif not verify_password(user.password_hash, password):
        user = None
    if user is None:
        lockout.failed(email, address)
        return None
    lockout.succeeded(email)
    return user


# --------------------------------------------------------------------------- browser sessions
# The secret lives only in the browser's HttpOnly cookie (set by backend/api/signin.py); the database keeps its
# keyed digest. A session ends at its absolute expiry, after CURATORE_SESSION_IDLE_MINUTES without a request,
# when revoked, or when its user is disabled.

TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often per session
MAX_SECRET = 200  # a cookie longer than this is no session of ours


@dataclass(frozen=True)
class SignedIn:
    """A live session: its row id (not secret: states may keep it) and its user."""

    session_id: uuid.UUID
    user: User


def start_session(user_id: uuid.UUID) -> str:
    """A new session for the user; returns its secret (for the cookie), stores only its keyed digest."""
    secret = new_secret("ses")
    now = utcnow()
    hours = get_settings().session_hours
    in_transaction(lambda s: s.add(LoginSession(user_id=user_id, secret_hash=session_digest(secret),
                                                expires_at=now + timedelta(hours=hours), last_seen_at=now)))
    return secret


def session_for(secret: str | None) -> SignedIn | None:
    """The live session this secret opens, or None (unknown, revoked, expired, idle too long, user disabled).
    Marks the session as used (at most once per :data:`TOUCH_EVERY`)."""
    if not secret or len(secret) > MAX_SECRET:
        return None
    now = utcnow()
    idle = timedelta(minutes=get_settings().session_idle_minutes)
    stmt = (select(LoginSession, User).join(User, LoginSession.user_id == User.id)
            .where(LoginSession.secret_hash == session_digest(secret), LoginSession.revoked_at.is_(None),
                   LoginSession.expires_at > now, User.disabled.is_(False)))

    def read(s: Any) -> SignedIn | None:
        row = s.execute(stmt).one_or_none()
        if row is None:
            return None
        session, user = row
        seen = session.last_seen_at or session.created_at
        if seen <= now - idle:
            return None
        if seen <= now - TOUCH_EVERY:
            s.execute(update(LoginSession).where(LoginSession.id == session.id).values(last_seen_at=now))
        return SignedIn(session.id, user)

    return in_transaction(read)


def user_for_session(secret: str | None) -> User | None:
    found = session_for(secret)
    return found.user if found else None


def end_session(secret: str | None) -> bool:
    """Revoke the session this secret opens; True if there was one still live."""
    if not secret or len(secret) > MAX_SECRET:
        return False
    return bool(in_transaction(lambda s: s.execute(
        update(LoginSession).where(LoginSession.secret_hash == session_digest(secret),
                                   LoginSession.revoked_at.is_(None)).values(revoked_at=utcnow())).rowcount))


# --------------------------------------------------------------------------- API tokens


def create_token(user_id: uuid.UUID, name: str, days: int | None = None) -> tuple[ApiToken, str]:
    """A new API token; the secret is returned once and only its hash is stored."""
    secret = new_secret("cur")
    token = ApiToken(user_id=user_id, name=name, token_hash=digest(secret), prefix=secret[:10],
                     expires_at=utcnow() + timedelta(days=days) if days else None)
    in_transaction(lambda s: s.add(token))
    return token, secret


def user_for_token(secret: str) -> User | None:
    stmt = (select(User, ApiToken.id).join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_hash == digest(secret), ApiToken.revoked_at.is_(None), User.disabled.is_(False)))

    def read(s: Any) -> User | None:
        row = s.execute(stmt).one_or_none()
        if row is None:
            return None
        token = s.get(ApiToken, row[1])
        if token.expires_at is not None and token.expires_at <= utcnow():
            return None
        token.last_used_at = utcnow()
        return row[0]

    return in_transaction(read)


def revoke_token(token_id: uuid.UUID) -> None:
    in_transaction(lambda s: s.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked_at=utcnow())))
