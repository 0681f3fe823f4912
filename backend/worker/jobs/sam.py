"""sam_pull and sam_refresh: SAM.gov opportunities as external records, attachments as assets.

fetching: a pull pages through a search (per NAICS code, by offset, up to ``max_pages`` pages); a refresh
asks for each known notice id. Every opportunity is upserted as an ``ExternalRecord`` (source ``sam``,
kind ``opportunity``, resource = the search). downloading: attachment links not stored yet are downloaded
into assets (``collection_id`` = the search, ``external_id`` = the link); a link that fails is logged and
counted, not fatal. extracting: one child extraction per stored attachment. Requests go to the configured
connection, resolved again here from the settings; its API key goes to its origin only (an attachment
link elsewhere is fetched without it, see :mod:`backend.connectors.sam`).
"""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from typing import Any

from backend.connectors import common, connections
from backend.connectors.sam import SamClient, SamError
from backend.errors import InvalidConfig
from backend.jobtypes.configs import SamPullConfig, SamRefreshConfig
from backend.worker.base import JobContext

SOURCE, KIND = "sam", "opportunity"
DEFAULT_WINDOW_DAYS = 30
MAX_WINDOW_DAYS = 365  # the API refuses wider posted-date ranges


def pull(ctx: JobContext, config: SamPullConfig) -> dict[str, Any]:
    posted_to = config.posted_to or date.today()
    posted_from = config.posted_from or posted_to - timedelta(days=DEFAULT_WINDOW_DAYS)
    if not timedelta(0) <= posted_to - posted_from <= timedelta(days=MAX_WINDOW_DAYS):
        raise InvalidConfig(f"posted_from ({posted_from}) must be on or before posted_to ({posted_to}) and at most "
                            f"{MAX_WINDOW_DAYS} days before it: SAM.gov searches one year at most.")
    counts = {"opportunities": 0, "new": 0, "updated": 0, "pages": 0, "total_records": 0}
    seen: dict[str, dict[str, Any]] = {}
    with _client(ctx, config.connection) as client:
        ctx.progress(0, None, phase="fetching", unit="opportunities")
        for ncode in config.naics or [""]:
            what = f"NAICS {ncode}" if ncode else "all NAICS codes"
            fetched = total = 0
            for page in client.search(posted_from, posted_to, max_pages=config.max_pages, ncode=ncode,
                                      title=config.query):
                ctx.check_cancelled()
                total = page.total
                fetched += len(page.opportunities)
                counts["pages"] += 1
                for opportunity in page.opportunities:
                    _upsert(ctx, opportunity, config.search_id, counts, seen)
                ctx.progress(len(seen), None, phase="fetching", item=f"{what}: {fetched} of {total}",
                             unit="opportunities")
            counts["total_records"] += total
            ctx.info(f"{what}: {fetched} of {total} opportunities posted {posted_from} to {posted_to}", "fetched",
                     ncode=ncode or None, fetched=fetched, total=total)
            if fetched < total:
                ctx.warn(f"{what}: stopped after {config.max_pages} pages; {total - fetched} opportunities not "
                         "fetched (raise max_pages or narrow the search)", "truncated", remaining=total - fetched)
        counts["opportunities"] = len(seen)
        attachments = _attachments(ctx, client, list(seen.values()), config.search_id,
                                   config.download_attachments)
    return {**counts, **attachments, "extractions": ctx.children_spawned}


def refresh(ctx: JobContext, config: SamRefreshConfig) -> dict[str, Any]:
    counts = {"opportunities": 0, "new": 0, "updated": 0, "missing": 0}
    seen: dict[str, dict[str, Any]] = {}
    total = len(config.notice_ids)
    with _client(ctx, config.connection) as client:
        ctx.progress(0, total, phase="fetching", unit="notices")
        for n, notice_id in enumerate(config.notice_ids, 1):
            ctx.check_cancelled()
            ctx.progress(n - 1, total, phase="fetching", item=notice_id, unit="notices")
            opportunity = client.notice(notice_id, *_window_for(ctx, notice_id))
            if opportunity is None:
                counts["missing"] += 1
                ctx.warn(f"Notice {notice_id} was not found on SAM.gov", "missing", notice_id=notice_id)
                continue
            _upsert(ctx, opportunity, config.search_id, counts, seen)
        ctx.progress(total, total, phase="fetching", unit="notices")
        counts["opportunities"] = len(seen)
        attachments = _attachments(ctx, client, list(seen.values()), config.search_id, True)
    return {**counts, **attachments, "extractions": ctx.children_spawned}


def _client(ctx: JobContext, name: str) -> SamClient:
    connection = connections.resolve("sam", name, ctx.organization_id)
    if not connection.secret:
        ctx.warn(f"Connection {connection.name!r} has no SAM.gov API key ({connection.setting}); requests go "
                 "without one", "config")
    return SamClient(common.RunHttpClient.for_connection(ctx, connection, "SAM.gov"))


def _upsert(ctx: JobContext, opportunity: dict[str, Any], search_id: str, counts: dict[str, int],
            seen: dict[str, dict[str, Any]]) -> None:
    notice_id = str(opportunity.get("noticeId") or "").strip()
    if not notice_id:
        ctx.warn("SAM.gov returned an opportunity without a noticeId; skipped", "skipped",
                 title=opportunity.get("title"))
        return
    created = common.upsert_record(ctx.organization_id, SOURCE, KIND, notice_id, resource_id=search_id,
                                   title=str(opportunity.get("title") or notice_id), data=opportunity)
    if notice_id not in seen:
        counts["new" if created else "updated"] += 1
    seen[notice_id] = opportunity


def _window_for(ctx: JobContext, notice_id: str) -> tuple[date, date]:
    """The posted-date window to look a notice up in: its own posted date when known, else the last year."""
    record = common.get_record(ctx.organization_id, SOURCE, KIND, notice_id)
    try:
        posted = date.fromisoformat(str(record.data.get("postedDate"))[:10]) if record else None
    except ValueError:
        posted = None
    if posted:
        return posted, posted
    today = date.today()
    return today - timedelta(days=MAX_WINDOW_DAYS), today


def _attachments(ctx: JobContext, client: SamClient, opportunities: list[dict[str, Any]], search_id: str,
                 download: bool) -> dict[str, int]:
    links = [(o["noticeId"], url) for o in opportunities for url in (o.get("resourceLinks") or [])]
    counts = {"attachments": len(links), "downloaded": 0, "already_stored": 0, "failed": 0, "bytes": 0}
    if not download:
        ctx.info(f"{len(links)} attachment links; downloading is off for this search", "attachments_skipped")
        return counts
    stored = []
    ctx.progress(0, len(links), phase="downloading", unit="files")
    for n, (notice_id, url) in enumerate(links, 1):
        ctx.check_cancelled()
        ctx.progress(n - 1, len(links), phase="downloading", item=f"{notice_id} attachment", unit="files")
        external_id = url if len(url) <= 500 else "sha256:" + hashlib.sha256(url.encode()).hexdigest()
        if common.live_asset(ctx.organization_id, search_id, external_id) is not None:
            counts["already_stored"] += 1
            continue
        try:
            attachment = client.attachment(url, f"{notice_id}-attachment-{n}")
        except SamError as exc:
            counts["failed"] += 1
            ctx.warn(f"Attachment of {notice_id} not downloaded: {exc.message}", "attachment_failed",
                     notice_id=notice_id, status=exc.details.get("status"))
            continue
        asset = common.store_external(ctx.organization_id, attachment.filename, attachment.data,
                                      collection_id=search_id, external_id=external_id, source=f"sam:{notice_id}")
        common.add_record_assets(ctx.organization_id, SOURCE, KIND, notice_id, [str(asset.id)])
        stored.append(asset)
        counts["downloaded"] += 1
        counts["bytes"] += asset.size_bytes
        ctx.info(f"Stored {attachment.filename} of {notice_id} ({asset.size_bytes:,} bytes)", "downloaded",
                 notice_id=notice_id, asset_id=asset.id)
    ctx.progress(len(links), len(links), phase="downloading", unit="files")
    ctx.progress(0, len(stored), phase="extracting", unit="files")
    for n, asset in enumerate(stored, 1):
        ctx.check_cancelled()
        ctx.spawn_child("extraction", {"asset_id": str(asset.id)}, display_name=asset.filename)
        ctx.progress(n, len(stored), phase="extracting", item=asset.filename, unit="files")
    return counts
