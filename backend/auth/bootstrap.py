"""The first admin of a fresh installation (the dev command calls this)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sqlalchemy import func, select

from backend.auth.users import create_user, set_role
from backend.db.engine import in_transaction
from backend.db.models import Organization, User

FIRST_ADMIN = "admin@curatore.local"


def ensure_first_admin(org: Organization, data_dir: Path) -> tuple[str, str | None]:
    """Create a system admin when there is no user yet; returns (email, password if we know it).

    The generated password is kept in ``<data_dir>/first-admin.txt`` (mode 600) so later starts can
    print it again; delete that file once you have changed the password.
    """
    note = data_dir / "first-admin.txt"
    if in_transaction(lambda s: s.execute(select(func.count()).select_from(User)).scalar_one()):
        return FIRST_ADMIN, note.read_text().strip() if note.exists() else None
    password = secrets.token_urlsafe(12)
    user = create_user(FIRST_ADMIN, password, name="Admin", system_admin=True)
    set_role(user.id, org.id, "admin")
    fd = os.open(note, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    os.chmod(note, 0o600)
    return FIRST_ADMIN, password


def forget_first_admin_password(email: str, data_dir: Path) -> None:
    """Once the first admin's password is changed, the note of the generated one is stale: remove it."""
    if email == FIRST_ADMIN:
        (data_dir / "first-admin.txt").unlink(missing_ok=True)
