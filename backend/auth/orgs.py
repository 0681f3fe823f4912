"""Organizations."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlmodel import Session

from backend.db.engine import in_transaction
from backend.db.models import Organization
from backend.errors import CuratoreError, NotFound

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def ensure_org(slug: str, name: str | None = None, session: Session | None = None) -> Organization:
    """The organization with this slug, created if missing."""
    if not SLUG.match(slug):
        raise CuratoreError(f"Invalid organization slug {slug!r}: use lowercase letters, digits and dashes.")

    def write(s: Session) -> Organization:
        org = s.execute(select(Organization).where(Organization.slug == slug)).scalar_one_or_none()
        if org is None:
            org = Organization(slug=slug, name=name or slug.replace("-", " ").title())
            s.add(org)
            s.flush()
        return org

    return in_transaction(write, session)


def get_org(slug: str) -> Organization:
    org = in_transaction(lambda s: s.execute(select(Organization).where(Organization.slug == slug)).scalar_one_or_none())
    if org is None:
        raise NotFound(f"No organization {slug!r}.")
    return org
