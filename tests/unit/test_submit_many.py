"""A fan-out submits in batches: one transaction (and one dispatch pass per queue) per batch, all or nothing;
the claimed runs are published to the test's real broker (no worker takes them)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import event, func, select

from backend.auth.orgs import ensure_org
from backend.db.engine import get_engine, in_transaction
from backend.db.models import Run
from backend.errors import CuratoreError
from backend.queues.dispatch import submit_many


def count(status: str | None = None) -> int:
    stmt = select(func.count()).select_from(Run)
    if status:
        stmt = stmt.where(Run.status == status)
    return in_transaction(lambda s: s.execute(stmt).scalar_one())


def test_a_fan_out_is_one_transaction_per_batch(backend) -> None:  # type: ignore[no-untyped-def]
    org = ensure_org("acme", "Acme")
    specs = [("extraction", {"asset_id": str(uuid.uuid4())}, {"organization_id": org.id}) for _ in range(120)]
    commits = []
    listener = lambda *_: commits.append(1)  # noqa: E731
    event.listen(get_engine(), "commit", listener)
    try:
        runs = submit_many(specs, batch=50)
    finally:
        event.remove(get_engine(), "commit", listener)
    assert len(runs) == 120 and count() == 120
    # 3 batches, each one transaction; a publish that needs no write adds none
    assert len(commits) == 3, len(commits)
    limit = 4  # the extraction queue's limit: the rest wait for slots
    assert count("submitted") == limit and count("pending") == 120 - limit  # published to the real broker
    submitted = in_transaction(lambda s: set(s.execute(select(Run.id).where(Run.status == "submitted")).scalars()))
    assert submitted == {r.id for r in runs[:limit]}  # the oldest first


def test_a_bad_spec_rolls_its_batch_back_and_keeps_the_ones_before(backend) -> None:  # type: ignore[no-untyped-def]
    org = ensure_org("acme", "Acme")
    good = [("extraction", {"asset_id": str(uuid.uuid4())}, {"organization_id": org.id}) for _ in range(15)]
    bad = [("extraction", {"asset_id": 42}, {"organization_id": org.id})]
    with pytest.raises(CuratoreError):
        submit_many([*good, *bad], batch=10)
    assert count() == 10  # the first batch; the second (5 good, 1 bad) wrote nothing
