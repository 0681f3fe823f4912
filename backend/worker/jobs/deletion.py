"""deletion: removes a resource and what hangs on it. Phases: preparing → deleting → cleaning_up.

- ``asset``: its search-index row, its row, its id in the external records that list it (the records
  themselves stay: an opportunity outlives one of its attachments), then its stored file. Assets go in
  chunks of 100, rows then files; a cancel stops between chunks, so each asset is either gone or whole.
  Cleaning up removes the storage folders left empty.
- ``collection``: every asset whose ``collection_id`` is the resource id, as above.
- ``run``: a finished run with all its descendants, their log events, outbox rows and run groups.
  An active run (or one with an active child or parent) is refused.

Everything belongs to the deletion run's organization; a resource that is not there fails clearly.
:func:`purge_runs` is also what retention (``maintenance.py``) uses.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, inspect, or_, select, text, update
from sqlmodel import Session

from backend.db.engine import get_engine, in_transaction
from backend.db.models import Asset, ExternalRecord, OutboxEvent, Run, RunGroup, RunLogEvent
from backend.db.states import ACTIVE, RunStatus
from backend.errors import JobCancelled, JobFailed, NotCapable, NotFound
from backend.jobtypes.configs import DeletionConfig
from backend.search import unindex_asset
from backend.storage.assets import _path_for
from backend.worker.base import JobContext

S = RunStatus
SUPPORTED = ("asset", "collection", "run")
CHUNK = 500


def run(ctx: JobContext, config: DeletionConfig) -> dict[str, Any]:
    handler = {"asset": _delete_asset, "collection": _delete_collection, "run": _delete_run}.get(config.resource_type)
    if handler is None:
        raise NotCapable(f"Deleting a {config.resource_type} is not supported; a deletion run removes "
                         f"{', '.join(SUPPORTED[:-1])} or {SUPPORTED[-1]} resources.")
    # An earlier delivery of this run (handed back, or its worker lost) that got as far as deleting may have
    # removed everything: the resource being gone is then this run's own work, not an error.
    earlier = (ctx.run.progress or {}).get("phase") in ("deleting", "cleaning_up")
    try:
        return handler(ctx, config.resource_id)
    except NotFound:
        if not earlier:
            raise
        ctx.info(f"The {config.resource_type} {config.resource_id} is already gone: an earlier delivery of this "
                 "run deleted it", "already_deleted")
        return {"resource_type": config.resource_type, "resource_id": config.resource_id, "already_deleted": True}


# --------------------------------------------------------------------------- assets and collections


def _delete_asset(ctx: JobContext, resource_id: str) -> dict[str, Any]:
    ctx.progress(0, 3, phase="preparing", item=resource_id, unit="steps")
    asset_id = _uuid(resource_id, "asset")
    asset = in_transaction(lambda s: s.get(Asset, asset_id))
    if asset is None or asset.organization_id != ctx.organization_id:
        raise NotFound(f"Asset {resource_id} does not exist (already deleted?).")
    _refuse_if_busy(ctx, [asset], collection_id=None)
    return {"resource_type": "asset", "asset_id": str(asset.id), "filename": asset.filename,
            **_remove_assets(ctx, [asset])}


def _delete_collection(ctx: JobContext, collection_id: str) -> dict[str, Any]:
    ctx.progress(0, 3, phase="preparing", item=collection_id, unit="steps")
    found = list(in_transaction(lambda s: s.execute(
        select(Asset).where(Asset.organization_id == ctx.organization_id, Asset.collection_id == collection_id)
        .order_by(Asset.created_at, Asset.id)).scalars().all()))
    if not found:
        raise NotFound(f"Collection {collection_id!r} has no assets (already deleted?).")
    _refuse_if_busy(ctx, found, collection_id=collection_id)
    return {"resource_type": "collection", "collection_id": collection_id, **_remove_assets(ctx, found)}


def _refuse_if_busy(ctx: JobContext, found: Sequence[Asset], collection_id: str | None) -> None:
    """Refuse while another active run works on one of these assets or on the collection."""
    ids = [str(a.id) for a in found]
    busy: list[Run] = []
    for chunk in _chunks(ids):
        query = select(Run).where(Run.status.in_(ACTIVE), Run.id != ctx.run_id, Run.resource_type == "asset",
                                  Run.resource_id.in_(chunk))
        busy += in_transaction(lambda s, q=query: list(s.execute(q.limit(5)).scalars().all()))
    if collection_id is not None:
        query = select(Run).where(Run.status.in_(ACTIVE), Run.id != ctx.run_id, Run.resource_type == "collection",
                                  Run.resource_id == collection_id)
        busy += in_transaction(lambda s: list(s.execute(query.limit(5)).scalars().all()))
    if busy:
        first = busy[0]
        raise JobFailed(f"Not deleted: {first.run_type} run {first.id} is still {RunStatus(first.status).value} "
                        f"on it. Cancel it or wait for it to end, then delete again.")


def _remove_assets(ctx: JobContext, found: Sequence[Asset]) -> dict[str, Any]:
    total = len(found)
    records = sum(len(_records_listing(ctx, chunk)) for chunk in _chunks([str(a.id) for a in found]))
    ctx.info(f"Deleting {total} assets ({sum(a.size_bytes for a in found):,} bytes); {records} external records "
             "list them", "preparing", assets=total, external_records=records)
    ctx.progress(0, total, phase="deleting", unit="assets")
    search = _has_table("asset_search")
    unlinked = files_removed = files_missing = deleted = 0
    folders: set[Path] = set()
    for chunk in _chunks(list(found), 100):
        try:
            ctx.check_cancelled()
        except JobCancelled:
            ctx.warn(f"Cancelled after deleting {deleted} of {total} assets; the other {total - deleted} are "
                     "untouched", "partial", deleted=deleted, untouched=total - deleted)
            raise
        unlinked += in_transaction(lambda s, c=chunk: _delete_rows(s, ctx.organization_id, c, search))
        for asset in chunk:  # the rows are gone: their files go now, so a cancel leaves no asset half-deleted
            path = _path_for(asset.storage_key)
            try:
                path.unlink()
                files_removed += 1
            except FileNotFoundError:
                files_missing += 1
            folders.add(path.parent)
        deleted += len(chunk)
        ctx.progress(deleted, total, item=chunk[-1].filename)
    ctx.progress(0, len(folders), phase="cleaning_up", unit="folders")
    emptied = _remove_empty(folders)
    ctx.progress(len(folders), len(folders))
    if files_missing:
        ctx.warn(f"{files_missing} stored files were already missing", "cleanup")
    ctx.info(f"Deleted {total} assets and {files_removed} files; unlinked {unlinked} external records",
             "deleted", assets=total, files=files_removed, external_records=unlinked, folders_removed=emptied)
    return {"assets_deleted": total, "files_deleted": files_removed, "files_missing": files_missing,
            "search_rows_removed": total if search else 0, "external_records_unlinked": unlinked}


def _remove_empty(folders: set[Path]) -> int:
    """Remove the folders (and their parents) that deleting files left empty; returns how many went."""
    removed = 0
    for folder in sorted(folders):
        for candidate in (folder, folder.parent):
            try:
                candidate.rmdir()  # only if empty
                removed += 1
            except OSError:
                break
    return removed


def _delete_rows(s: Session, organization_id: uuid.UUID, chunk: Sequence[Asset], search: bool) -> int:
    ids = [str(a.id) for a in chunk]
    unlinked = 0
    for record in _records_listing_in(s, organization_id, ids):
        record.asset_ids = [a for a in record.asset_ids if a not in ids]
        s.add(record)
        unlinked += 1
    if search:
        for asset in chunk:
            unindex_asset(s, asset.id)
    s.execute(delete(Asset).where(Asset.id.in_([a.id for a in chunk])))
    return unlinked


def _records_listing(ctx: JobContext, ids: list[str]) -> list[ExternalRecord]:
    return in_transaction(lambda s: _records_listing_in(s, ctx.organization_id, ids))


def _records_listing_in(s: Session, organization_id: uuid.UUID, ids: list[str]) -> list[ExternalRecord]:
    """External records of the organization whose ``asset_ids`` list one of ``ids``."""
    query = select(ExternalRecord).where(ExternalRecord.organization_id == organization_id)
    if s.get_bind().dialect.name == "postgresql":
        listed = text("EXISTS (SELECT 1 FROM jsonb_array_elements_text(external_records.asset_ids) AS e(v) "
                      "WHERE e.v = ANY(:ids))").bindparams(ids=ids)
    else:
        marks = ", ".join(f":id{i}" for i in range(len(ids)))
        listed = text(f"EXISTS (SELECT 1 FROM json_each(external_records.asset_ids) AS e "
                      f"WHERE e.value IN ({marks}))").bindparams(**{f"id{i}": v for i, v in enumerate(ids)})
    return list(s.execute(query.where(listed)).scalars().all())


# --------------------------------------------------------------------------- runs


def _delete_run(ctx: JobContext, resource_id: str) -> dict[str, Any]:
    ctx.progress(0, 3, phase="preparing", item=resource_id, unit="steps")
    run_id = _uuid(resource_id, "run")
    target = in_transaction(lambda s: s.get(Run, run_id))
    if target is None or target.organization_id != ctx.organization_id:
        raise NotFound(f"Run {resource_id} does not exist (already deleted?).")
    if target.id == ctx.run_id:
        raise JobFailed("A deletion run cannot delete itself.")
    levels = descendants(run_id)
    family = [rid for level in levels for rid in level]
    active = in_transaction(lambda s: s.execute(select(Run.id, Run.status).where(
        Run.id.in_(family), Run.status.in_(ACTIVE)).limit(1)).first())
    if active is not None:
        what = "it is" if active.id == run_id else f"its child run {active.id} is"
        raise JobFailed(f"Run {run_id} was not deleted: {what} still {RunStatus(active.status).value}. "
                        "Cancel it or wait for it to end, then delete again.")
    if target.parent_run_id is not None:
        parent_status = in_transaction(lambda s: s.execute(
            select(Run.status).where(Run.id == target.parent_run_id)).scalar_one_or_none())
        if parent_status is not None and RunStatus(parent_status).is_active:
            raise JobFailed(f"Run {run_id} was not deleted: its parent run {target.parent_run_id} is still "
                            f"{RunStatus(parent_status).value}.")
    ctx.info(f"Deleting run {run_id} ({target.run_type}) and {len(family) - 1} descendant runs", "preparing",
             runs=len(family))
    ctx.progress(1, 3, phase="deleting")
    counts = in_transaction(lambda s: purge_runs(s, levels))
    ctx.progress(2, 3, phase="cleaning_up")
    ctx.info(f"Deleted {counts['runs']} runs, {counts['log_events']} log events and {counts['outbox_events']} "
             "outbox rows", "deleted", **counts)
    ctx.progress(3, 3)
    return {"resource_type": "run", "run_id": str(run_id), "run_type": target.run_type, **counts}


def descendants(run_id: uuid.UUID, session: Session | None = None) -> list[list[uuid.UUID]]:
    """``[[run_id], [its children], [their children], ...]``."""
    levels = [[run_id]]
    while True:
        parents = levels[-1]
        children: list[uuid.UUID] = []
        for chunk in _chunks(parents):
            children += in_transaction(lambda s, c=chunk: list(
                s.execute(select(Run.id).where(Run.parent_run_id.in_(c))).scalars().all()), session)
        if not children:
            return levels
        levels.append(children)


def purge_runs(s: Session, levels: Sequence[Sequence[uuid.UUID]]) -> dict[str, int]:
    """Delete runs (given parents before children, as :func:`descendants` returns them) with their log events,
    outbox rows and run groups, in ``s``'s transaction. Runs elsewhere that were retries of them lose the link.

    The newest outbox rows (by ``seq`` and by ``pos``) are kept even if they belong to one of them: a deleted
    highest number would be handed out again (by SQLite, by the relay), and a live reader past it would skip
    the new row.
    """
    every = [rid for level in levels for rid in level]
    counts = {"runs": 0, "log_events": 0, "outbox_events": 0, "run_groups": 0}
    newest = s.execute(select(func.max(OutboxEvent.seq))).scalar_one()
    newest_pos = s.execute(select(func.max(OutboxEvent.pos))).scalar_one()
    for chunk in _chunks(every):
        s.execute(update(Run).where(Run.retry_of.in_(chunk)).values(retry_of=None)
                  .execution_options(synchronize_session=False))
        counts["log_events"] += s.execute(delete(RunLogEvent).where(RunLogEvent.run_id.in_(chunk))).rowcount
        outbox = delete(OutboxEvent).where(OutboxEvent.run_id.in_(chunk))
        if newest is not None:
            outbox = outbox.where(OutboxEvent.seq < newest)
        if newest_pos is not None:
            outbox = outbox.where(or_(OutboxEvent.pos.is_(None), OutboxEvent.pos < newest_pos))
        counts["outbox_events"] += s.execute(outbox).rowcount
    for level in reversed(levels):  # children first: a parent row is referenced by its children's rows
        for chunk in _chunks(list(level)):
            counts["runs"] += s.execute(delete(Run).where(Run.id.in_(chunk))
                                        .execution_options(synchronize_session=False)).rowcount
    for chunk in _chunks(every):
        counts["run_groups"] += s.execute(delete(RunGroup).where(RunGroup.parent_run_id.in_(chunk))).rowcount
    return counts


# --------------------------------------------------------------------------- helpers


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{value!r} is not a{'n' if what[0] in 'aeiou' else ''} {what} id.") from None


def _has_table(name: str) -> bool:

    return inspect(get_engine()).has_table(name)


def _chunks(items: list[Any], size: int = CHUNK) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
