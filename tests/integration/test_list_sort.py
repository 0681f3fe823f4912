"""The jobs list sorted by duration, status and type, keyset-paged, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backend import list_sort
from backend.runs import listing

pytestmark = pytest.mark.integration
PROC = ("procedure", {"procedure": "noop"})


def DEL(n: int) -> tuple[str, dict[str, str]]:  # noqa: N802
    return "deletion", {"resource_type": "asset", "resource_id": f"a{n}"}


def _runs(org, now=None):  # type: ignore[no-untyped-def]
    """Seven runs: five finished with durations 5..1 s (created in that order), one running 100 s, one pending;
    their times are stamped relative to ``now`` (default: when this is called)."""
    from backend.db.engine import in_transaction
    from backend.db.models import Run
    from backend.db.types import utcnow
    from backend.runs import service

    ids = []
    now = now or utcnow()
    for n, seconds in enumerate([5, 3, 1, 4, 2]):
        run = service.create_run(*(PROC if n % 2 else DEL(n)), organization_id=org.id, display_name=f"r{seconds}")
        attempt = service.mark_submitted(run.id, f"t{n}")
        service.start(run.id, attempt, "w", 30)
        service.complete(run.id)
        ids.append((run.id, seconds))

        def stamp(s, rid=run.id, sec=seconds, i=n):  # type: ignore[no-untyped-def]
            row = s.get(Run, rid)
            row.created_at = now - timedelta(minutes=10 - i)
            row.started_at = now - timedelta(minutes=5)
            row.completed_at = row.started_at + timedelta(seconds=sec)
        in_transaction(stamp)
    running = service.create_run(*DEL(10), organization_id=org.id, display_name="running")
    service.start(running.id, service.mark_submitted(running.id, "tr"), "w", 30)

    def back(s):  # type: ignore[no-untyped-def]
        s.get(Run, running.id).started_at = now - timedelta(seconds=100)
    in_transaction(back)
    pending = service.create_run(*DEL(11), organization_id=org.id, display_name="pending")
    return ids, running, pending


def _all_pages(q, column, descending, limit=2):  # type: ignore[no-untyped-def]
    names, cursor, pages = [], None, 0
    while True:
        pg = list_sort.page(q, column, descending, cursor, limit)
        names += [r.display_name for r in pg.runs]
        pages += 1
        cursor = pg.next_cursor
        if not cursor:
            return names, pages


def test_sorted_pages_are_complete_and_ordered(backend, org):  # type: ignore[no-untyped-def]
    _runs(org)
    q = listing.ListQuery(organization_id=org.id)
    names, pages = _all_pages(q, "duration", True)
    assert names == ["running", "r5", "r4", "r3", "r2", "r1", "pending"] and pages == 4
    names, _ = _all_pages(q, "duration", False, limit=3)
    assert names == ["pending", "r1", "r2", "r3", "r4", "r5", "running"]
    names, _ = _all_pages(q, "status", False)
    assert names[0] == "running" and names[1] == "pending" and set(names[2:]) == {"r1", "r2", "r3", "r4", "r5"}
    names, _ = _all_pages(q, "type", False, limit=3)
    assert names == ["pending", "running", "r2", "r1", "r5", "r4", "r3"]  # deletion < procedure; newest first
    pg = list_sort.page(q, "type", True, None, 1)
    with pytest.raises(listing.InvalidCursor):  # a cursor of one order is not a cursor of another
        list_sort.page(q, "duration", True, pg.next_cursor, 1)
    for bad in ("x", "e30", pg.next_cursor[:-3]):
        with pytest.raises(listing.InvalidCursor):
            list_sort.page(q, "type", True, bad, 1)


def test_created_order_and_the_cards_window(backend, org):  # type: ignore[no-untyped-def]
    from backend.db.types import utcnow

    now = utcnow()  # the window is measured from the same "now" the runs were stamped from (a slow machine
    _runs(org, now)  # must not move a run out of it)
    q = listing.ListQuery(organization_id=org.id)
    names, _ = _all_pages(q, "created", False, limit=2)
    assert names == ["r5", "r3", "r1", "r4", "r2", "running", "pending"]
    newest, _ = _all_pages(q, "created", True, limit=3)
    assert newest[2:] == ["r2", "r4", "r1", "r3", "r5"]
    recent = list_sort.page(q, "created", True, None, 50, completed_since=now - timedelta(minutes=4, seconds=56.5))
    assert [r.display_name for r in recent.runs] == ["r4", "r5"]  # ended within the window: 5 s and 4 s runs
