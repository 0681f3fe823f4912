"""What a person (or token) does to runs: checked against their role, carried out, and audited.

The UI, the REST API and the CLI call these; none of them checks roles or writes the audit log itself.
Who may submit what is the job type's rule (:meth:`Principal.require_submit`), checked here for a submit, a
retry, and every stage a pipeline names, before anything is written.

Every action (decorated :func:`action`, listed in ``ACTIONS``) writes an audit entry: ``<name>`` with its
details when it is carried out, ``<name>_refused`` with the ``reason`` (and the error ``code``) when it is
refused. The other public functions (``READS``) only look things up.
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from backend import audit, schedules
from backend.auth import manage, users
from backend.auth.access import Forbidden, Principal
from backend.auth.orgs import system_org
from backend.db.engine import in_transaction
from backend.db.models import ApiToken, Run, ScheduledTask, User
from backend.db.states import RunStatus
from backend.errors import CuratoreError, NotFound, RunNotFound
from backend.jobtypes.configs import PipelineConfig
from backend.jobtypes.registry import JobType, get_registry
from backend.queues import dispatch, priority
from backend.runs import cancellation, queries, service
from backend.validation import storable

F = TypeVar("F", bound=Callable[..., Any])
ACTIONS: dict[str, Callable[..., Any]] = {}
READS = ("visible_run", "require_submit", "visible_schedule", "visible_user", "shown_log_context", "action",
         "members", "audit_page")
# The arguments a refused entry names (never a password or a config).
_NAMED = ("run_id", "organization_id", "run_type", "name", "email", "org_id", "role", "token_id")


def action(fn: F) -> F:
    """Audit ``fn``'s refusal (a :class:`CuratoreError`) as ``<name>_refused`` with the reason, then re-raise;
    ``fn`` itself audits what it carried out."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(principal: Principal, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(principal, *args, **kwargs)
        except CuratoreError as exc:
            bound = signature.bind_partial(principal, *args, **kwargs).arguments
            named = {k: storable(str(v))[:320] for k, v in bound.items() if k in _NAMED and v is not None}
            run_id, org_id = named.pop("run_id", None), named.pop("organization_id", None)
            if isinstance(exc, NotFound):
                # Outside its organizations the target does not exist for the principal: the attempt goes to
                # the system-wide log only (naming the id it tried), never into another tenant's audit log.
                named.update({f"target_{k}": v for k, v in (("run_id", run_id), ("organization_id", org_id)) if v})
                run_id = org_id = None
            audit.record(principal.name, f"{fn.__name__}_refused", run_id=_uuid(run_id),
                         organization_id=_uuid(org_id), reason=exc.message, code=exc.code, **named)
            raise

    ACTIONS[fn.__name__] = wrapper
    return wrapper  # type: ignore[return-value]


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def shown_log_context(context: dict[str, Any] | None, *, system_admin: bool) -> dict[str, Any]:
    """A log event's context as this reader may see it: the server traceback (file paths, code) only for system
    admins; everyone else reads the event's message. The API and the job page both call this."""
    context = dict(context or {})
    if not system_admin:
        context.pop("traceback", None)
    return context


def visible_run(principal: Principal, run_id: uuid.UUID | str) -> Run:
    """The run, if the principal may see it (else NotFound, as if it did not exist)."""
    run = queries.get_run(run_id)
    if principal.role_in(run.organization_id) is None:  # the same answer as for a run that does not exist
        raise RunNotFound(f"No run with id {run.id}.")
    return run


@action
def submit(principal: Principal, run_type: str, config: dict[str, Any], organization_id: uuid.UUID,
           **kwargs: Any) -> Run:
    """Submit a run in the organization; a system-only type's run goes to the system organization instead
    (whatever organization was named: it belongs to no tenant)."""
    job_type = require_submit(principal, run_type, config, organization_id)
    if job_type.system_only:
        organization_id = system_org().id
    run = dispatch.submit_run(run_type, config, organization_id=organization_id, created_by=principal.name, **kwargs)
    audit.record(principal.name, "submit", organization_id=organization_id, run_id=run.id, run_type=run_type)
    return run


def require_submit(principal: Principal, run_type: str, config: dict[str, Any],
                   organization_id: uuid.UUID) -> JobType:
    """The job type, if the principal may submit it (with this config) in the organization; raises otherwise."""
    principal.require("view", organization_id, "That organization")  # outsiders learn nothing, not even the type
    job_type = get_registry().resolve(run_type)
    principal.require_submit(job_type, organization_id)
    _require_stages(principal, job_type, config, organization_id)
    return job_type


def _require_stages(principal: Principal, job_type: JobType, config: dict[str, Any],
                    organization_id: uuid.UUID) -> None:
    """A pipeline starts its stages in its submitter's name: each stage's type needs what submitting it alone
    needs, and a system-only type never runs as a stage (its run would belong to the pipeline's tenant)."""
    if job_type.config_model is not PipelineConfig:
        return
    registry = get_registry()
    for stage in registry.validate_config(job_type.key, config)["stages"]:
        stage_type = registry.find(stage["run_type"])
        if stage_type is None:
            continue  # an unknown type: the stage validation refuses it, naming the stage
        if stage_type.system_only:
            raise Forbidden(f"{stage_type.label} ({stage_type.key}) is system-only: it cannot run as a pipeline "
                            "stage.")
        principal.require_submit(stage_type, organization_id)
        _require_stages(principal, stage_type, stage["config"], organization_id)


@action
def cancel(principal: Principal, run_id: uuid.UUID | str, reason: str | None = None) -> RunStatus:
    run = visible_run(principal, run_id)
    principal.require("cancel", run.organization_id)
    status = cancellation.cancel_run(run.id, by=principal.name, reason=reason)
    audit.record(principal.name, "cancel", organization_id=run.organization_id, run_id=run.id,
                 status=status.value, reason=reason)
    return status


@action
def retry(principal: Principal, run_id: uuid.UUID | str) -> Run:
    run = visible_run(principal, run_id)
    principal.require("retry", run.organization_id)
    require_submit(principal, run.run_type, run.config, run.organization_id)  # a retry submits its type again
    new = dispatch.retry_run(run.id, created_by=principal.name)
    audit.record(principal.name, "retry", organization_id=run.organization_id, run_id=run.id, new_run=str(new.id))
    return new


@action
def boost(principal: Principal, run_id: uuid.UUID | str) -> int:
    run = visible_run(principal, run_id)
    principal.require("boost", run.organization_id)
    new_priority = priority.boost(run.id, principal.name)
    audit.record(principal.name, "boost", organization_id=run.organization_id, run_id=run.id, priority=new_priority)
    return new_priority


@action
def force_kill(principal: Principal, run_id: uuid.UUID | str) -> bool:
    run = visible_run(principal, run_id)
    principal.require("force_kill", run.organization_id)
    done = service.force_kill(run.id, principal.name)
    audit.record(principal.name, "force_kill", organization_id=run.organization_id, run_id=run.id, applied=done)
    return done


# --------------------------------------------------------------------------- scheduled tasks (their org's admins)
# The default schedules belong to the system organization: only system admins see or manage them.


def visible_schedule(principal: Principal, name: str) -> ScheduledTask:
    """The scheduled task, if the principal may see it (else NotFound, as if it did not exist)."""
    task = schedules.get_schedule(name)
    if principal.role_in(task.organization_id) is None:  # the same answer as for a task that does not exist
        raise schedules.ScheduleNotFound(f"No scheduled task {name!r}.")
    return task


@action
def set_schedule_enabled(principal: Principal, name: str, enabled: bool) -> ScheduledTask:
    task = visible_schedule(principal, name)
    _require_manage(principal, task)
    task = schedules.enable(name) if enabled else schedules.disable(name)
    audit.record(principal.name, "schedule_enable" if enabled else "schedule_disable",
                 organization_id=task.organization_id, schedule=name)
    return task


@action
def trigger_schedule(principal: Principal, name: str) -> Run:
    task = visible_schedule(principal, name)
    _require_manage(principal, task)
    run = schedules.trigger_now(name, by=principal.name)
    audit.record(principal.name, "schedule_trigger", organization_id=task.organization_id, run_id=run.id,
                 schedule=name)
    return run


def _require_manage(principal: Principal, task: ScheduledTask) -> None:
    """The admin role in the task's organization, and the right to submit its type (which it does when due)."""
    principal.require("manage", task.organization_id)
    job_type = get_registry().find(task.run_type)
    if job_type is not None:
        principal.require_submit(job_type, task.organization_id)


# --------------------------------------------------------------------------- users and tokens
# System admins manage every account. An organization's admins manage roles in it, and the accounts (disable,
# password, sessions) of users who belong only to organizations they administer -- never a system admin's.
# A user they share no organization with does not exist for them.


def visible_user(principal: Principal, email: str) -> User:
    """The user, if the principal may see them: themself, or someone in one of the principal's organizations."""
    user = users.get_user(email)
    if principal.is_system_admin or principal.user_id == user.id:
        return user
    if not {org.id for org, _ in users.memberships(user.id)} & set(principal.roles):
        raise NotFound(f"No user {email}.")
    return user


def _require_account(principal: Principal, user: User) -> None:
    """May the principal change this user's account as a whole?"""
    if principal.is_system_admin:
        return
    if user.is_system_admin:
        raise Forbidden("Only system admins change a system admin's account.")
    orgs = [org.id for org, _ in users.memberships(user.id)]
    if not orgs or any(principal.role_in(o) != "admin" for o in orgs):
        raise Forbidden(f"{user.email} also belongs to organizations you do not administer: ask a system admin.")


def _require_membership_change(principal: Principal, user: User, organization_id: uuid.UUID) -> None:
    principal.require("manage", organization_id, "That organization")
    if user.is_system_admin and not principal.is_system_admin:
        raise Forbidden("Only system admins change a system admin's account.")


def members(principal: Principal, organization_id: uuid.UUID) -> list[tuple[User, str]]:
    """The organization's members and roles, for its admins (and system admins)."""
    principal.require("manage", organization_id, "That organization")
    return users.members(organization_id)


def audit_page(principal: Principal, organization_id: uuid.UUID | None, **filters: Any) -> tuple[list[Any], int | None]:
    """A page of the audit log: an organization's, for its admins; the whole log (``organization_id`` None, with
    sign-ins and refusals against things out of sight), for system admins only. Filters: see ``audit.page``."""
    if organization_id is None:
        if not principal.is_system_admin:
            raise Forbidden("The system-wide audit log is for system admins.")
    else:
        principal.require("manage", organization_id, "That organization")
    return audit.page(organization_id, **filters)


@action
def create_user(principal: Principal, email: str, password: str, *, name: str = "", system_admin: bool = False,
                organization_id: uuid.UUID | None = None, role: str = "member") -> User:
    """A new user (system admins; an organization's admins, into their organization)."""
    if not principal.is_system_admin:
        if system_admin or organization_id is None:
            raise Forbidden("Only system admins create system admins or users outside an organization.")
        principal.require("manage", organization_id, "That organization")
    user = users.create_user(email, password, name=name, system_admin=system_admin)
    if organization_id is not None:
        users.set_role(user.id, organization_id, role)
    audit.record(principal.name, "user_create", organization_id=organization_id, email=user.email,
                 role=role if organization_id else None, system_admin=system_admin)
    return user


@action
def set_user_disabled(principal: Principal, email: str, disabled: bool) -> dict[str, int]:
    """Disable (sessions end, tokens revoked, sign-in refused) or enable a user."""
    user = visible_user(principal, email)
    if disabled and user.id == principal.user_id:
        raise Forbidden("You cannot disable your own account.")
    _require_account(principal, user)
    ended = manage.set_disabled(user.id, disabled)
    audit.record(principal.name, "user_disable" if disabled else "user_enable", email=user.email, **ended)
    return ended


@action
def set_role(principal: Principal, email: str, organization_id: uuid.UUID, role: str) -> None:
    """Give a user a role in the organization (adds the membership if needed)."""
    user = visible_user(principal, email)
    _require_membership_change(principal, user, organization_id)
    users.set_role(user.id, organization_id, role)
    audit.record(principal.name, "user_role", organization_id=organization_id, email=user.email, role=role)


@action
def remove_membership(principal: Principal, email: str, organization_id: uuid.UUID) -> None:
    user = visible_user(principal, email)
    _require_membership_change(principal, user, organization_id)
    manage.remove_membership(user.id, organization_id)
    audit.record(principal.name, "membership_remove", organization_id=organization_id, email=user.email)


@action
def reset_password(principal: Principal, email: str, password: str) -> None:
    """Set another user's password; their sessions end."""
    user = visible_user(principal, email)
    _require_account(principal, user)
    manage.set_password(user, password)
    audit.record(principal.name, "password_reset", email=user.email)


@action
def end_user_sessions(principal: Principal, email: str) -> dict[str, int]:
    """End every session of the user and revoke every token of theirs."""
    user = visible_user(principal, email)
    if user.id != principal.user_id:
        _require_account(principal, user)
    ended = manage.end_sessions(user.id)
    audit.record(principal.name, "sessions_end", email=user.email, **ended)
    return ended


@action
def change_password(principal: Principal, old_password: str, new_password: str) -> None:
    """A user changes their own password; the old one is required (and its guesses count towards lockout)."""
    if principal.user_id is None:
        raise Forbidden("Only a signed-in user changes their own password.")
    if users.authenticate(principal.name, old_password) is None:
        raise Forbidden("The current password is not correct.")
    manage.set_password(users.get_user(principal.name), new_password)
    audit.record(principal.name, "password_change", email=principal.name)


@action
def create_token(principal: Principal, email: str, name: str, days: int | None = None) -> tuple[ApiToken, str]:
    """A new API token for a user (themself, or anyone for a system admin); the secret is returned once."""
    user = visible_user(principal, email)
    if user.id != principal.user_id and not principal.is_system_admin:
        raise Forbidden("Only system admins create tokens for someone else.")
    token, secret = users.create_token(user.id, name, days)
    audit.record(principal.name, "token_create", email=user.email, token_id=str(token.id), name=name)
    return token, secret


@action
def revoke_token(principal: Principal, token_id: uuid.UUID | str) -> ApiToken:
    """Revoke a token (its owner or a system admin); revoking it again changes nothing."""
    try:
        tid = uuid.UUID(str(token_id))
    except ValueError:
        raise CuratoreError(f"{token_id!r} is not a token id (a UUID, see `curatore tokens list EMAIL`).") from None
    token = in_transaction(lambda s: s.get(ApiToken, tid))
    if token is None or (token.user_id != principal.user_id and not principal.is_system_admin):
        raise NotFound(f"No token {tid}.")
    if token.revoked_at is None:
        users.revoke_token(tid)
    audit.record(principal.name, "token_revoke", token_id=str(tid), name=token.name)
    return token
