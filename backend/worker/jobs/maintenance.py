"""system_maintenance: the handlers named in the config, in order; phase = handler name, one log event each.

- ``retention``: finished runs older than ``retention_days`` (the config's, else the setting, else 30)
  are deleted with their descendants, log events and outbox rows, in batches of about 500 runs, one
  transaction per batch and organization. A family goes only when every run in it has finished before the
  cut-off; an active run is never touched. Each organization whose runs were deleted gets an audit entry
  (action ``retention``) with its counts.
- ``stale_runs``: one pass of stale-run recovery, ``backend.runs.recovery.sweep()``.
- ``orphans``: counts (and fixes nothing): assets whose stored file is missing, files under the assets
  folder that no asset names, child runs whose parent is gone, run groups whose parent run is gone.
  A missing assets folder while assets exist is a failure (unmounted storage), not thousands of orphans.
- ``health``: runs by status, queue depths, workers online, database round trip.

A handler that fails does not stop the others; the run then fails naming it, with every result kept.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.orm import aliased

from backend import audit
from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import Asset, Run, RunGroup
from backend.db.states import TERMINAL, RunStatus
from backend.db.types import utcnow
from backend.errors import CuratoreError, JobCancelled, JobFailed
from backend.jobtypes.configs import SystemMaintenanceConfig
from backend.queues.stats import queue_depths
from backend.queues.workers import online
from backend.runs.recovery import sweep
from backend.worker.base import JobContext
from backend.worker.jobs.deletion import purge_runs

BATCH = 500
SAMPLE = 20
DEFAULT_RETENTION_DAYS = 30
COUNTS = ("runs", "log_events", "outbox_events", "run_groups")


def run(ctx: JobContext, config: SystemMaintenanceConfig) -> dict[str, Any]:
    handlers: dict[str, Callable[[JobContext, SystemMaintenanceConfig], dict[str, Any]]] = {
        "retention": retention, "stale_runs": stale_runs, "orphans": orphans, "health": health,
    }
    total = len(config.handlers)
    ctx.results = {"handlers": list(config.handlers)}
    failures: list[str] = []
    for n, name in enumerate(config.handlers, 1):
        ctx.check_cancelled()
        ctx.progress(n - 1, total, phase=name, item=name, unit="handlers")
        started = time.monotonic()
        try:
            result = handlers[name](ctx, config)
        except JobCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - the other handlers still run
            message = exc.message if isinstance(exc, CuratoreError) else f"{type(exc).__name__}: {exc}"
            failures.append(f"{name}: {message}")
            ctx.results[name] = {"error": message}
            ctx.log("ERROR", "step_failed", f"Handler {name} failed: {message}", handler=name,
                    traceback=traceback.format_exc())
            continue
        seconds = round(time.monotonic() - started, 3)
        ctx.results[name] = result
        ctx.progress(n, total, phase=name, item=name)
        summary = result.pop("_summary", None) or name
        warn = result.pop("_warn", False)
        ctx.log("WARN" if warn else "INFO", "step_complete", f"{summary} ({seconds:.2f} s)",
                handler=name, seconds=seconds, result=result)
    if failures:
        raise JobFailed(f"{len(failures)} of {total} maintenance handlers failed: " + "; ".join(failures))
    return ctx.results


# --------------------------------------------------------------------------- retention


def retention_days(config: SystemMaintenanceConfig) -> int:
    return config.retention_days or int(getattr(get_settings(), "retention_days", DEFAULT_RETENTION_DAYS))


def retention(ctx: JobContext, config: SystemMaintenanceConfig) -> dict[str, Any]:
    days = retention_days(config)
    cutoff = utcnow() - timedelta(days=days)
    old_roots = (select(func.count()).select_from(Run)
                 .where(Run.parent_run_id.is_(None), Run.status.in_(TERMINAL), Run.completed_at < cutoff))
    candidates = in_transaction(lambda s: s.execute(old_roots).scalar_one())
    totals = dict.fromkeys(COUNTS, 0)
    per_org: dict[uuid.UUID, dict[str, int]] = {}
    kept_families = batches = 0
    after: tuple[datetime, uuid.UUID] | None = None
    try:
        while True:
            try:
                ctx.check_cancelled()
            except JobCancelled:
                ctx.warn(f"Retention cancelled after {batches} batches: deleted {totals['runs']} runs, "
                         f"{totals['log_events']} log events and {totals['outbox_events']} outbox rows", "partial",
                         batches=batches, **{f"deleted_{k}": v for k, v in totals.items()})
                raise
            roots = _old_roots(cutoff, after)
            if not roots:
                break
            after = roots[-1][:2]
            purged = False
            for org_id, org_roots in _by_org(roots).items():
                levels, kept = _families(cutoff, org_roots)
                kept_families += kept
                if levels:
                    counts = in_transaction(lambda s, lv=levels: purge_runs(s, lv))
                    for key, value in counts.items():
                        totals[key] += value
                        per_org.setdefault(org_id, dict.fromkeys(COUNTS, 0))[key] += value
                    purged = True
            batches += purged
            ctx.progress(item=f"{totals['runs']} runs deleted", deleted=totals["runs"], candidates=candidates)
    finally:  # what was deleted is committed batch by batch: each organization's audit log says so, even if cut short
        _audit_deletions(ctx, per_org, days, cutoff)
    return {"retention_days": days, "cutoff": cutoff.isoformat(), "batches": batches,
            "families_kept_active_or_recent": kept_families, "organizations": len(per_org),
            **{f"deleted_{k}": v for k, v in totals.items()},
            "_summary": f"Retention ({days} days): deleted {totals['runs']} runs, {totals['log_events']} log events "
                        f"and {totals['outbox_events']} outbox rows"}


def _by_org(roots: list[tuple[datetime, uuid.UUID, uuid.UUID]]) -> dict[uuid.UUID, list[uuid.UUID]]:
    by_org: dict[uuid.UUID, list[uuid.UUID]] = {}
    for _, run_id, org_id in roots:
        by_org.setdefault(org_id, []).append(run_id)
    return by_org


def _audit_deletions(ctx: JobContext, per_org: dict[uuid.UUID, dict[str, int]], days: int, cutoff: datetime) -> None:
    """One audit entry per organization whose runs were deleted: a tenant sees what the system removed."""
    for org_id, counts in per_org.items():
        if counts["runs"]:
            audit.record(ctx.run.created_by or "system", "retention", organization_id=org_id, run_id=ctx.run_id,
                         retention_days=days, cutoff=cutoff.isoformat(),
                         **{f"deleted_{k}": v for k, v in counts.items()})


def _old_roots(cutoff: datetime, after: tuple[datetime, uuid.UUID] | None
               ) -> list[tuple[datetime, uuid.UUID, uuid.UUID]]:
    query = select(Run.completed_at, Run.id, Run.organization_id).where(
        Run.parent_run_id.is_(None), Run.status.in_(TERMINAL), Run.completed_at < cutoff)
    if after is not None:
        query = query.where(or_(Run.completed_at > after[0], and_(Run.completed_at == after[0], Run.id > after[1])))
    query = query.order_by(Run.completed_at, Run.id).limit(BATCH)
    return [(r.completed_at, r.id, r.organization_id)
            for r in in_transaction(lambda s: s.execute(query).all(), read_only=True)]


def _families(cutoff: datetime, roots: list[uuid.UUID]) -> tuple[list[list[uuid.UUID]], int]:
    """The runs of these roots' families by depth, without the families that have a run still active or
    finished after the cut-off; and how many families were kept for that reason."""
    root_of = {rid: rid for rid in roots}
    levels: list[list[uuid.UUID]] = [list(roots)]
    keep: set[uuid.UUID] = set()
    while levels[-1]:
        parents = levels[-1]
        rows = []
        for i in range(0, len(parents), BATCH):
            chunk = parents[i:i + BATCH]
            rows += in_transaction(lambda s, c=chunk: s.execute(
                select(Run.id, Run.parent_run_id, Run.status, Run.completed_at).where(Run.parent_run_id.in_(c))
            ).all(), read_only=True)
        level = []
        for row in rows:
            root_of[row.id] = root_of[row.parent_run_id]
            if RunStatus(row.status).is_active or row.completed_at is None or row.completed_at >= cutoff:
                keep.add(root_of[row.id])
            level.append(row.id)
        levels.append(level)
    pruned = [[rid for rid in level if root_of[rid] not in keep] for level in levels]
    return [level for level in pruned if level], len(keep)


# --------------------------------------------------------------------------- stale runs


def stale_runs(ctx: JobContext, config: SystemMaintenanceConfig) -> dict[str, Any]:

    result = sweep()
    moved = ", ".join(f"{n} {rule}" for rule, n in result.items() if n) or "nothing to recover"
    return {**result, "_summary": f"Stale-run recovery: {moved}"}


# --------------------------------------------------------------------------- orphans


def orphans(ctx: JobContext, config: SystemMaintenanceConfig) -> dict[str, Any]:
    settings = get_settings()
    if not settings.assets_dir.is_dir():
        stored = in_transaction(lambda s: s.execute(
            select(func.count()).select_from(Asset).where(Asset.deleted_at.is_(None))).scalar_one())
        if stored:
            raise JobFailed(f"The assets folder {settings.assets_dir} is missing (is its storage mounted?); "
                            f"the files of {stored} assets cannot be checked.")
    keys: set[str] = set()
    missing: list[str] = []
    missing_count = 0
    after: uuid.UUID | None = None
    while True:
        ctx.check_cancelled()
        query = select(Asset.id, Asset.storage_key, Asset.deleted_at).order_by(Asset.id).limit(2000)
        if after is not None:
            query = query.where(Asset.id > after)
        rows = in_transaction(lambda s, q=query: s.execute(q).all())
        if not rows:
            break
        after = rows[-1].id
        for row in rows:
            keys.add(row.storage_key)
            if row.deleted_at is None and not (settings.assets_dir / row.storage_key).is_file():
                missing_count += 1
                if len(missing) < SAMPLE:
                    missing.append(str(row.id))
    untracked: list[str] = []
    untracked_count = 0
    root = settings.assets_dir
    if root.is_dir():
        for path in root.rglob("*"):
            if path.is_file() and path.relative_to(root).as_posix() not in keys:
                untracked_count += 1
                if len(untracked) < SAMPLE:
                    untracked.append(path.relative_to(root).as_posix())
    parent = aliased(Run)
    orphan_children = in_transaction(lambda s: s.execute(
        select(func.count()).select_from(Run).outerjoin(parent, Run.parent_run_id == parent.id)
        .where(Run.parent_run_id.is_not(None), parent.id.is_(None))).scalar_one())
    orphan_groups = in_transaction(lambda s: s.execute(
        select(func.count()).select_from(RunGroup).outerjoin(Run, RunGroup.parent_run_id == Run.id)
        .where(Run.id.is_(None))).scalar_one())
    found = missing_count + untracked_count + orphan_children + orphan_groups
    return {
        "assets_missing_file": missing_count, "assets_missing_file_ids": missing,
        "files_without_asset": untracked_count, "files_without_asset_keys": untracked,
        "child_runs_without_parent": orphan_children, "groups_without_parent": orphan_groups,
        "_warn": bool(found),
        "_summary": (f"Orphans: {missing_count} assets without their file, {untracked_count} files without an "
                     f"asset, {orphan_children} child runs without a parent, {orphan_groups} groups without a "
                     "parent (nothing changed)"),
    }


# --------------------------------------------------------------------------- health


def health(ctx: JobContext, config: SystemMaintenanceConfig) -> dict[str, Any]:

    started = time.monotonic()
    try:
        in_transaction(lambda s: s.execute(text("SELECT 1")).scalar_one())
        database = {"ok": True, "round_trip_ms": round((time.monotonic() - started) * 1000, 2)}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        database = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    by_status = {RunStatus(status).value: n for status, n in in_transaction(
        lambda s: s.execute(select(Run.status, func.count()).group_by(Run.status)).all())}
    queues = queue_depths()
    workers = online()
    active = sum(n for st, n in by_status.items() if RunStatus(st).is_active)
    return {
        "database": database, "runs_by_status": by_status, "active_runs": active, "queues": queues,
        "workers_online": len(workers),
        "workers": [{k: w[k] for k in ("hostname", "queues", "concurrency", "active_runs", "last_seen_at")}
                    for w in workers],
        "_warn": not database["ok"] or not workers,
        "_summary": (f"Health: database {'ok' if database['ok'] else 'DOWN'}, {len(workers)} workers online, "
                     f"{active} active runs, {sum(q['pending'] for q in queues)} queued"),
    }
