"""Changing accounts: disable, remove a membership, set a password, end every session and token.

No access checks here: :mod:`backend.actions` decides who may, and audits; these only carry it out.
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, update

from backend.auth.bootstrap import forget_first_admin_password
from backend.auth.passwords import hash_password
from backend.auth.users import MIN_PASSWORD
from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import ApiToken, LoginSession, Membership, User
from backend.db.types import utcnow
from backend.errors import CuratoreError, NotFound


def set_disabled(user_id: uuid.UUID, disabled: bool) -> dict[str, int]:
    """Disable (or enable) a user. Disabling also ends their sessions and revokes their tokens, so re-enabling
    an account that was taken over does not hand the old tokens back."""
    in_transaction(lambda s: s.execute(update(User).where(User.id == user_id).values(disabled=disabled)))
    return end_sessions(user_id) if disabled else {"sessions": 0, "tokens": 0}


def remove_membership(user_id: uuid.UUID, organization_id: uuid.UUID) -> None:
    gone = in_transaction(lambda s: s.execute(delete(Membership).where(
        Membership.user_id == user_id, Membership.organization_id == organization_id)).rowcount)
    if not gone:
        raise NotFound("That user is not a member of that organization.")


def set_password(user: User, password: str) -> None:
    """A new password; every session of the user ends (they sign in again with it). The first admin's
    generated-password note is removed."""
    if len(password) < MIN_PASSWORD:
        raise CuratoreError(f"A password needs at least {MIN_PASSWORD} characters.")
    in_transaction(lambda s: s.execute(update(User).where(User.id == user.id)
                                       .values(password_hash=hash_password(password))))
    end_sessions(user.id, tokens=False)
    forget_first_admin_password(user.email, get_settings().data_dir)


def end_sessions(user_id: uuid.UUID, tokens: bool = True) -> dict[str, int]:
    """End every browser session of the user and (unless ``tokens`` is False) revoke every API token."""
    now = utcnow()

    def write(s: object) -> dict[str, int]:
        ended = s.execute(update(LoginSession).where(LoginSession.user_id == user_id,  # type: ignore[attr-defined]
                                                     LoginSession.revoked_at.is_(None)).values(revoked_at=now))
        revoked = 0
        if tokens:
            revoked = s.execute(update(ApiToken).where(ApiToken.user_id == user_id,  # type: ignore[attr-defined]
                                                       ApiToken.revoked_at.is_(None))
                                .values(revoked_at=now)).rowcount
        return {"sessions": ended.rowcount, "tokens": revoked}

    return in_transaction(write)
