"""Group completion hooks for tests. Importing this module registers them.

Each firing leaves one countable row in the database: a log line on the group's
parent run, written in the finalizing transaction, naming the process that ran it.
"""

from __future__ import annotations

import os

from sqlmodel import Session

from backend.db.models import RunGroup
from backend.db.states import LogLevel
from backend.runs import service
from backend.runs.groups import group_hook

COUNTING_HOOK = "tests.count_finalize"
HOOK_EVENT = "test_hook_fired"


@group_hook(COUNTING_HOOK)
def count_finalize(session: Session, group: RunGroup) -> None:
    service.add_log(
        group.parent_run_id,
        LogLevel.INFO,
        HOOK_EVENT,
        f"group {group.id} ended {group.status}",
        {
            "group_id": str(group.id),
            "status": group.status,
            "completed": group.completed,
            "failed": group.failed,
            "cancelled": group.cancelled,
            "pid": os.getpid(),
        },
        session=session,
    )
