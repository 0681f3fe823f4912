"""Who may see and do what. Every query is scoped by :func:`visible_orgs`; every action checks :func:`require`.

Roles per organization: a viewer sees; a member also submits, cancels, retries and boosts; an admin also
force-kills. A system admin is an admin of every organization. Callers outside an organization get
"not found", never "forbidden", so ids do not leak.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from backend.auth.users import memberships
from backend.db.models import User
from backend.errors import CuratoreError, NotFound

RANK = {"viewer": 0, "member": 1, "admin": 2}
NEEDS = {"view": "viewer", "submit": "member", "cancel": "member", "retry": "member", "boost": "member",
         "force_kill": "admin", "manage": "admin"}


class Forbidden(CuratoreError):
    """Your role does not allow that."""

    code = "forbidden"
    http_status = 403


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID | None
    name: str  # the audit log's actor
    is_system_admin: bool = False
    roles: dict[uuid.UUID, str] = field(default_factory=dict)

    @classmethod
    def of(cls, user: User) -> "Principal":
        return cls(user.id, user.email, user.is_system_admin, {org.id: role for org, role in memberships(user.id)})

    @classmethod
    def system(cls, name: str = "system") -> "Principal":
        """The engine itself, the CLI on the server, the scheduler: everything."""
        return cls(None, name, True, {})

    def visible_orgs(self) -> set[uuid.UUID] | None:
        """The organizations this principal sees; None means all."""
        return None if self.is_system_admin else set(self.roles)

    def role_in(self, organization_id: uuid.UUID) -> str | None:
        return "admin" if self.is_system_admin else self.roles.get(organization_id)

    def may(self, action: str, organization_id: uuid.UUID) -> bool:
        role = self.role_in(organization_id)
        return role is not None and RANK[role] >= RANK[NEEDS[action]]

    def require(self, action: str, organization_id: uuid.UUID, what: str = "That run") -> None:
        """Raise NotFound outside the organization, Forbidden when the role is too low."""
        if self.role_in(organization_id) is None:
            raise NotFound(f"{what} does not exist.")
        if not self.may(action, organization_id):
            raise Forbidden(f"Your role ({self.role_in(organization_id)}) does not allow {action.replace('_', ' ')}.")
