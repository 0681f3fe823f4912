"""Organizations, and the reserved system organization.

The system organization (slug ``system``) owns what belongs to no tenant: runs of system-only job types and
the default schedules. Nobody is ever a member of it, so only system admins see it; no slug-based creation
(:func:`ensure_org`, ``curatore orgs create``) may create or reuse it.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from backend.db.engine import in_transaction
from backend.db.models import Organization
from backend.errors import CuratoreError, NotFound

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SYSTEM_SLUG = "system"


class ReservedOrganization(CuratoreError):
    """The system organization is reserved: it has no members and is not created by slug."""

    code = "reserved_organization"
    http_status = 403


def ensure_org(slug: str, name: str | None = None, session: Session | None = None) -> Organization:
    """The organization with this slug, created if missing (never the reserved system organization)."""
    check_slug(slug)
    if slug == SYSTEM_SLUG:
        raise ReservedOrganization(f"The organization slug {SYSTEM_SLUG!r} is reserved for system runs.")
    return _get_or_create(slug, name or slug.replace("-", " ").title(), session)


def check_slug(slug: str) -> None:
    if not SLUG.match(slug):
        raise CuratoreError(f"Invalid organization slug {slug!r}: use lowercase letters, digits and dashes.")


def system_org() -> Organization:
    """The reserved system organization, created on first use (safe from several processes at once)."""
    try:
        return _get_or_create(SYSTEM_SLUG, "System")
    except IntegrityError:  # another process created it between our read and our insert
        return get_org(SYSTEM_SLUG)


def is_system(organization_id: uuid.UUID) -> bool:
    """Whether this is the system organization (which exists only once something needed it)."""
    found = in_transaction(lambda s: s.execute(select(Organization.slug).where(Organization.id == organization_id))
                           .scalar_one_or_none())
    return found == SYSTEM_SLUG


def refuse_members(organization_id: uuid.UUID) -> None:
    """Raise for the system organization: nobody becomes a member of it."""
    if is_system(organization_id):
        raise ReservedOrganization(f"Nobody can be given a role in the {SYSTEM_SLUG!r} organization: its runs "
                                   "are for system admins only (make the user a system admin instead).")


def get_org(slug: str) -> Organization:
    org = in_transaction(lambda s: s.execute(select(Organization).where(Organization.slug == slug)).scalar_one_or_none())
    if org is None:
        raise NotFound(f"No organization {slug!r}.")
    return org


def _get_or_create(slug: str, name: str, session: Session | None = None) -> Organization:
    def write(s: Session) -> Organization:
        org = s.execute(select(Organization).where(Organization.slug == slug)).scalar_one_or_none()
        if org is None:
            org = Organization(slug=slug, name=name)
            s.add(org)
            s.flush()
        return org

    return in_transaction(write, session)


def list_orgs() -> list[Organization]:
    """Every tenant organization (not the reserved system one), by slug."""
    stmt = select(Organization).where(Organization.slug != SYSTEM_SLUG).order_by(Organization.slug)
    return list(in_transaction(lambda s: s.execute(stmt).scalars().all(), read_only=True))
