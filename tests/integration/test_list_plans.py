"""The jobs page's queries use indexes at 10,000 runs (PostgreSQL ``EXPLAIN``; not timed).

The database is filled like ``bench/lists.py`` fills its million runs (same generator, 10,000 runs over 10
organizations, analysed). Every query the page makes, for all organizations and for one, is explained: no
sequential scan of ``runs``, and no sort over a scan of ``runs`` that has no index condition (a sort over every
row). The type tabs and status cards read the counters: they must not read ``runs`` beyond the one partial hour
of the 24 h window, through its index. Then the counters equal ``COUNT(*)`` over the same runs.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from backend.db.engine import in_transaction
from backend.db.models import Run
from backend.runs import counters, listing
from bench.lists import fill, page_queries, plans, problems, summary

pytestmark = pytest.mark.integration

# Queries allowed to read runs without an index (none today; the duration order reads its running runs, a set as
# small as what runs, through the status index).
NOT_INDEXED: set[str] = set()


def test_every_jobs_page_query_uses_an_index_at_10k_runs(pg_backend) -> None:  # type: ignore[no-untyped-def]
    org_ids = fill(10_000, 10)
    checked = 0
    for org_id in (None, org_ids[3]):
        for query in page_queries(org_id):
            found = plans(query.call)
            if query.name in NOT_INDEXED:
                continue
            bad = sorted({p for plan in found for p in problems(plan)})
            assert not bad, (query.name, org_id, bad, [summary(plan) for plan in found])
            if query.name in ("type tab counts", "status cards"):
                scans = [s for plan in found for s in summary(plan).split(" > ") if "runs" in s or "Scan" in s]
                assert all("ix_runs_status_completed" in s or "ix_runs_org_status_completed" in s for s in scans
                           if "Scan" in s), (query.name, scans)
            checked += 1
    assert checked == 2 * (len(page_queries(None)) - len(NOT_INDEXED))
    total = in_transaction(lambda s: s.execute(select(func.count()).select_from(Run)).scalar_one())
    assert total == 10_000
    assert sum(listing.type_counts(listing.ListQuery()).values()) == total
    assert sum(counters.counts(counters.scope_of(org_ids[3])).values()) == in_transaction(
        lambda s: s.execute(select(func.count()).select_from(Run).where(Run.organization_id == org_ids[3]))
        .scalar_one())
