"""What the queue page reads (issue 16, item 8): each queue's own hourly throughput and durations, and a
scheduled task's runs paged by keyset like the jobs list."""

from __future__ import annotations

import pytest

from backend import schedules
from backend.auth.orgs import ensure_org
from backend.db.states import RunOrigin, RunStatus
from backend.queues import stats
from backend.queues.dispatch import submit_run
from backend.runs import service
from backend.runs.listing import InvalidCursor
from tests.integration.test_queues import queues  # noqa: F401 - the fixture
from tests.support import wait_terminal

pytestmark = pytest.mark.integration


def test_each_queue_has_its_own_hours(queues, start_worker):  # type: ignore[no-untyped-def]  # noqa: F811
    start_worker(concurrency=2)
    other = ensure_org("other-co")
    runs = [submit_run("q_work", {"ms": 10}, organization_id=queues.id) for _ in range(3)]  # the default queue
    runs.append(submit_run("q_urgent", {"ms": 10}, organization_id=other.id))  # the maintenance queue
    assert {RunStatus(wait_terminal(r.id).status) for r in runs} == {RunStatus.COMPLETED}

    by_queue = stats.history_by_queue(2)
    assert set(by_queue) == {"extraction", "sync", "scrape", "import", "default", "maintenance"}
    totals = {q: sum(h["completed"] for h in hours) for q, hours in by_queue.items()}
    assert totals == {"extraction": 0, "sync": 0, "scrape": 0, "import": 0, "default": 3, "maintenance": 1}
    assert all(len(hours) == 2 for hours in by_queue.values())
    assert max(h["mean_s"] for h in by_queue["default"]) > 0 and max(h["p95_s"] for h in by_queue["sync"]) == 0
    assert sum(h["completed"] for h in stats.history(2)) == 4  # all queues together, as before
    mine = stats.history_by_queue(2, organization_ids={queues.id})  # one organization's runs only
    assert sum(h["completed"] for h in mine["maintenance"]) == 0
    assert sum(h["completed"] for h in mine["default"]) == 3


def test_a_schedules_history_pages_by_keyset_within_its_organization(backend, org):  # type: ignore[no-untyped-def]
    task = schedules.create_schedule("nightly", "system_maintenance", {"handlers": ["health"]},
                                     organization_id=org.id, interval_seconds=3600, enabled=False)
    other = schedules.create_schedule("weekly", "system_maintenance", {"handlers": ["health"]},
                                      organization_id=org.id, interval_seconds=3600, enabled=False)
    made = [service.create_run("system_maintenance", {"handlers": ["health"]}, organization_id=task.organization_id,
                               origin=RunOrigin.SCHEDULED, created_by=schedules.CREATED_BY_PREFIX + "nightly").id
            for _ in range(7)]
    service.create_run("system_maintenance", {"handlers": ["health"]}, organization_id=other.organization_id,
                       origin=RunOrigin.SCHEDULED, created_by=schedules.CREATED_BY_PREFIX + "weekly")
    service.create_run("system_maintenance", {"handlers": ["health"]}, organization_id=org.id,  # same creator name,
                       origin=RunOrigin.SCHEDULED, created_by=schedules.CREATED_BY_PREFIX + "nightly")  # other org
    seen, cursor, pages = [], None, 0
    while True:
        page = schedules.history_page(task, cursor, limit=3)
        seen += [r.id for r in page.runs]
        pages += 1
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == made[::-1]  # newest first, each once, nothing of the other task or organization
    assert pages == 3
    assert schedules.history_page(other).runs[0].created_by == "schedule:weekly"
    with pytest.raises(InvalidCursor):
        schedules.history_page(task, "not-a-cursor")
