"""What the signed-in person may do, for showing buttons: asked of ``backend.auth.access`` (``NEEDS`` through
``Principal.may``, and the job type's ``submit_role`` / ``system_only`` through ``Principal.require_submit``), the
same checks ``backend.actions`` makes when a button is clicked. Nothing here restates the role table.

A button whose action the role never allows is not drawn; one the role allows in general but not here (retrying
a type that needs a higher role) is drawn disabled, with the refusal as its tooltip.
"""

from __future__ import annotations

import uuid
from typing import Any

from backend.errors import CuratoreError


def may(principal: Any, action: str, organization_id: uuid.UUID | str | None) -> bool:
    """``action`` (a key of ``NEEDS``) in that organization; with no organization (the all-organizations
    list), only a system admin may."""
    if principal is None:
        return False
    if organization_id is None:
        return bool(principal.is_system_admin)
    org = organization_id if isinstance(organization_id, uuid.UUID) else uuid.UUID(str(organization_id))
    return principal.may(action, org)


def may_administer_queues(principal: Any) -> bool:
    """The queue page (and its sidebar link): ``Principal.may_administer_queues``."""
    return principal is not None and principal.may_administer_queues()


def submit_refusal(principal: Any, job_type: Any, organization_id: uuid.UUID) -> str:
    """"" if the principal may submit the type there, else why not."""
    if principal is None or job_type is None:
        return "Unknown job type."
    try:
        principal.require_submit(job_type, organization_id)
    except CuratoreError as exc:
        return exc.message
    return ""


def run_permissions(principal: Any, organization_id: uuid.UUID, job_type: Any) -> dict[str, Any]:
    """The ``may_*`` fields of a :class:`~curatore_ui.state.views.RunRow`."""
    may_retry = may(principal, "retry", organization_id)
    refused = submit_refusal(principal, job_type, organization_id) if may_retry else ""
    return {
        "may_cancel": may(principal, "cancel", organization_id),
        "may_retry": may_retry,
        "may_boost": may(principal, "boost", organization_id),
        "may_kill": may(principal, "force_kill", organization_id),
        "retry_refused": refused,
    }
