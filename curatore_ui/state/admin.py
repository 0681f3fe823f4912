"""What the organization admin pages (members, audit) share: the organization of the route, if the principal
administers it, and the organizations they may switch to."""

from __future__ import annotations

import uuid
from typing import Any

from backend.auth.access import Principal
from backend.auth.orgs import get_org, list_orgs
from backend.errors import NotFound


def administered_org(slug: str, principal: Principal) -> tuple[uuid.UUID, str]:
    """(id, name) of the organization if the principal administers it; one that does not exist or that they do
    not belong to gets the same NotFound, and a lower role a Forbidden (from ``Principal.require``)."""
    try:
        org = get_org(slug)
    except NotFound:
        raise NotFound("That organization does not exist.") from None
    principal.require("manage", org.id, "That organization")
    return org.id, org.name


def administered_orgs(principal: Principal) -> list[dict[str, Any]]:
    """[{"slug", "name"}] of the organizations the principal administers (every tenant for a system admin)."""
    return [{"slug": o.slug, "name": o.name} for o in list_orgs() if principal.may("manage", o.id)]
