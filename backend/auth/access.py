"""Who may see and do what. Every query is scoped by :func:`visible_orgs`; every action checks :func:`require`,
and every submit (a retry too: it submits the run's type again) :func:`require_submit`.

Roles per organization: a viewer sees; a member also submits, cancels, retries and boosts; an admin also
force-kills and manages schedules. A system admin is an admin of every organization. Callers outside an
organization get "not found", never "forbidden", so ids do not leak.

The job type decides who submits it (``JobType.submit_role``, by default the member role of ``NEEDS["submit"]``);
a system-only type (``JobType.system_only``) is submitted by system admins only, and its runs go to the reserved
system organization, where nobody has a role: only system admins see them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from backend.auth.orgs import SYSTEM_SLUG
from backend.auth.users import memberships
from backend.db.models import User
from backend.errors import CuratoreError, NotFound
from backend.jobtypes.registry import JobType

RANK = {"viewer": 0, "member": 1, "admin": 2}
# The least role per action; "submit" is the default of JobType.submit_role, which a job type may raise or lower.
NEEDS = {"view": "viewer", "submit": "member", "cancel": "member", "retry": "member", "boost": "member",
         "force_kill": "admin", "manage": "admin"}


def submit_needs(job_type: JobType) -> str:
    """The least role that submits this type (in words): its ``submit_role``, or system admin if system-only."""
    return "system admin" if job_type.system_only else job_type.submit_role


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
        roles = {org.id: role for org, role in memberships(user.id) if org.slug != SYSTEM_SLUG}  # never a tenant's
        return cls(user.id, user.email, user.is_system_admin, roles)

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

    def may_administer_queues(self) -> bool:
        """Queue administration (``/system/queues``): every organization's queue depths, throughput and
        durations, the workers, the job-type registry with its overrides and every schedule with its history.
        It shows all tenants at once, so it is for system admins only; everyone else reads their own runs'
        queue positions on their organization's jobs list."""
        return self.is_system_admin

    def require(self, action: str, organization_id: uuid.UUID, what: str = "That run") -> None:
        """Raise NotFound outside the organization, Forbidden when the role is too low."""
        if self.role_in(organization_id) is None:
            raise NotFound(f"{what} does not exist.")
        if not self.may(action, organization_id):
            raise Forbidden(f"Your role ({self.role_in(organization_id)}) does not allow {action.replace('_', ' ')}.")

    def require_submit(self, job_type: JobType, organization_id: uuid.UUID, what: str = "That organization") -> None:
        """Raise NotFound outside the organization; Forbidden for a system-only type (unless a system admin) or
        when the role is below the type's ``submit_role``."""
        role = self.role_in(organization_id)
        if role is None:
            raise NotFound(f"{what} does not exist.")
        if job_type.system_only and not self.is_system_admin:
            raise Forbidden(f"{job_type.label} ({job_type.key}) is system-only: only system admins start it.")
        if RANK[role] < RANK[job_type.submit_role]:
            raise Forbidden(f"Your role ({role}) does not allow starting {job_type.label} ({job_type.key}) runs: "
                            f"that needs the {submit_needs(job_type)} role.")
