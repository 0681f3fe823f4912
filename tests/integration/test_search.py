"""Extraction indexes text; search finds the right asset, per organization, whatever the user types."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text, update

from backend.auth.orgs import ensure_org
from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.db.states import RunStatus
from backend.queues.dispatch import submit_run
from backend.search import index_asset, search
from backend.storage.assets import store_bytes
from tests.support import wait_terminal

pytestmark = pytest.mark.integration

PLANTS = b"# Field notes\n\nChlorophyll absorbs light; photosynthesis turns it into sugar.\n"
ROCKS = (b"<html><head><title>Geology</title><script>var chlorophyll = 1;</script></head>"
         b"<body><h1>Volcanoes</h1><p>Basalt forms when lava cools quickly.</p></body></html>")
ODD = ['"foo AND (', "chlorophyll\"", "'", "*", "NEAR(a b", "a OR", "-x", "col:val", "^", "(((", "", "  ", "🙂",
       "AND", "NOT chlorophyll", "\x00", "a\"b'c", "chloro*"]


def _extract(org_id, name: str, data: bytes):  # type: ignore[no-untyped-def]
    asset = store_bytes(org_id, name, data)
    run = submit_run("extraction", {"asset_id": str(asset.id)}, organization_id=org_id)
    done = wait_terminal(run.id)
    assert RunStatus(done.status) is RunStatus.COMPLETED, done.error_message
    return asset


def test_extraction_indexes_and_search_finds_the_right_document(backend, org, worker):
    other = ensure_org("globex", "Globex")
    plants = _extract(org.id, "plants.md", PLANTS)
    rocks = _extract(org.id, "rocks.html", ROCKS)
    theirs = _extract(other.id, "their-plants.txt", b"Chlorophyll is green.\n")

    hits = search(org.id, "chlorophyll")
    assert [h.asset_id for h in hits] == [plants.id]  # the script in rocks.html is not text
    assert "[Chlorophyll]" in hits[0].snippet and hits[0].filename == "plants.md" and hits[0].rank > 0
    assert [h.asset_id for h in search(org.id, "basalt lava")] == [rocks.id]
    assert [h.asset_id for h in search(org.id, "rocks.html")] == [rocks.id]  # the file name is indexed too
    assert [h.asset_id for h in search(org.id, "rocks")] == [rocks.id]  # and each word of it
    assert search(org.id, "basalt chlorophyll") == []  # every word is required
    assert [h.asset_id for h in search(other.id, "chlorophyll")] == [theirs.id]  # scoped to the organization
    assert search(org.id, "Chlorophyll", limit=0) == []


def test_odd_input_never_errors(backend, org):
    asset = store_bytes(org.id, "notes.txt", b"foo and bar")
    index_asset(None, asset.id, org.id, asset.filename, "foo and bar (with parentheses) \"quoted\"")
    for query in ODD:
        assert isinstance(search(org.id, query), list), query
    assert [h.asset_id for h in search(org.id, '"foo')] == [asset.id]
    assert [h.asset_id for h in search(org.id, "quoted)")] == [asset.id]


def test_reindex_replaces_and_deleted_assets_are_hidden(backend, org):
    asset = store_bytes(org.id, "draft.txt", b"x")
    index_asset(None, asset.id, org.id, "draft.txt", "first version mentions aardvark")
    index_asset(None, asset.id, org.id, "draft.txt", "second version mentions zebra")
    assert search(org.id, "aardvark") == []
    assert [h.asset_id for h in search(org.id, "zebra")] == [asset.id]
    rows = in_transaction(lambda s: s.execute(text("SELECT count(*) FROM asset_search")).scalar_one())
    assert rows == 1
    in_transaction(lambda s: s.execute(update(Asset).where(Asset.id == asset.id).values(deleted_at=datetime.now(UTC))))
    assert search(org.id, "zebra") == []
