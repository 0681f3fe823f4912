"""sharepoint_sync: a Microsoft Graph drive mirrored as assets of the sync configuration.

scanning: the delta listing (everything on the first run or a full resync, else what changed since the
delta link kept from the last run). syncing: new and changed files (by eTag) downloaded and stored as
assets (``collection_id`` = the sync configuration, ``external_id`` = the drive item id). extracting:
one child extraction per stored file. detecting_deletions: items the listing reports deleted, moved out
of the folder, or (on a full resync) no longer listed, have their assets marked deleted.

The connector state keeps the delta link, the known items (eTag, asset) and the folder paths. The
delta link is saved only when a run gets through; a cancelled or failed run keeps the files it stored,
so the next run skips them as unchanged. Requests go to the configured connection (resolved again here,
from the settings); a saved delta link on another origin than the connection's (the connection changed)
is not followed: the drive is listed again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.connectors import common, connections
from backend.connectors.graph import DeltaExpired, GraphDrive
from backend.db.types import utcnow
from backend.jobtypes.configs import SharePointSyncConfig
from backend.worker.base import JobContext

CONNECTOR = "sharepoint"


@dataclass
class Listing:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    listed: int = 0
    pages: int = 0
    delta_link: str | None = None


def run(ctx: JobContext, config: SharePointSyncConfig) -> dict[str, Any]:
    org, sync_id = ctx.organization_id, config.sync_config_id
    state = common.load_state(org, CONNECTOR, sync_id)
    if state.get("drive_id") not in (None, config.drive_id):
        ctx.warn(f"The drive changed from {state['drive_id']} to {config.drive_id}; listing it all", "resync")
        state = {"items": state.get("items", {})}  # known items stay known, so deletions are still detected
    known: dict[str, dict[str, Any]] = state.get("items", {})
    folders: dict[str, str] = state.get("folders", {})
    connection = connections.resolve("sharepoint", config.connection, org)
    if not connection.secret:
        ctx.warn(f"Connection {connection.name!r} has no SharePoint token ({connection.setting}); requests go "
                 "without one", "config")

    listing, stored, deleted, done = Listing(), [], 0, False
    try:
        with common.RunHttpClient.for_connection(ctx, connection, "Microsoft Graph") as http:
            drive = GraphDrive(http, config.drive_id)
            full = config.full_resync or not _usable_delta_link(ctx, http, state.get("delta_link"))
            ctx.info(f"{'Full listing' if full else 'Changes since the last sync'} of drive {config.drive_id} "
                     f"at {connection.base_url} (connection {connection.name!r})", "scan_start", full_resync=full,
                     folder_path=config.folder_path, connection=connection.name)
            try:
                listing = _scan(ctx, drive, None if full else state["delta_link"])
            except DeltaExpired as exc:
                ctx.warn(f"{exc.message}; listing the whole drive", "resync")
                full, listing = True, _scan(ctx, drive, None)
            _update_folders(folders, listing)
            wanted, unchanged, gone = _plan(listing, folders, known, config.folder_path, full)
            stored = _sync(ctx, drive, config, wanted, known)
        _extract(ctx, known, skip=gone)
        deleted = _delete(ctx, sync_id, gone, known)
        done = True
    finally:  # files stored stay known even when the run stops early; the delta link moves only when it got through
        common.save_state(org, CONNECTOR, sync_id, {
            "drive_id": config.drive_id, "items": known, "folders": folders,
            "delta_link": listing.delta_link if done else state.get("delta_link"),
            "synced_at": utcnow().isoformat() if done else state.get("synced_at"),
        })
    return {"listed": listing.listed, "pages": listing.pages, "downloaded": len(stored), "unchanged": unchanged,
            "deleted": deleted, "extractions": ctx.children_spawned, "full_resync": full,
            "bytes": sum(a.size_bytes for a in stored)}


def _usable_delta_link(ctx: JobContext, http: common.RunHttpClient, delta_link: str | None) -> bool:
    """Whether the saved delta link may be followed: it must be on the connection's origin (the token goes
    with it)."""
    if not delta_link:
        return False
    if not http.on_origin(delta_link):
        ctx.warn("The saved delta link is on another origin than the connection's (the connection changed); "
                 "listing the whole drive", "resync")
        return False
    return True


def _scan(ctx: JobContext, drive: GraphDrive, delta_link: str | None) -> Listing:
    listing = Listing()
    ctx.progress(0, None, phase="scanning", unit="items")
    for page in drive.delta(delta_link):
        for item in page.items:
            listing.listed += 1
            item_id = item["id"]
            if "deleted" in item:
                listing.deleted.add(item_id)
                listing.files.pop(item_id, None)
                listing.folders.pop(item_id, None)
            elif "file" in item:
                listing.files[item_id] = item
                listing.deleted.discard(item_id)
            elif "folder" in item or "root" in item:
                listing.folders[item_id] = item
        listing.pages += 1
        listing.delta_link = page.delta_link
        ctx.progress(listing.listed, None, phase="scanning", item=f"page {listing.pages}", unit="items")
        ctx.check_cancelled()
    ctx.info(f"Listed {listing.listed} items in {listing.pages} pages: {len(listing.files)} files, "
             f"{len(listing.folders)} folders, {len(listing.deleted)} deleted", "scanned",
             listed=listing.listed, pages=listing.pages)
    return listing


def _update_folders(folders: dict[str, str], listing: Listing) -> None:
    """Folder id → path ("/", "/Reports", ...), from the folders listed now and those known before."""
    for item_id in listing.deleted:
        folders.pop(item_id, None)
    pending = dict(listing.folders)
    while pending:
        resolved = False
        for item_id, item in list(pending.items()):
            parent = (item.get("parentReference") or {}).get("id")
            if "root" in item:
                folders[item_id] = "/"
            elif parent in folders and parent not in pending:
                folders[item_id] = _join(folders[parent], item.get("name", item_id))
            else:
                continue
            del pending[item_id]
            resolved = True
        if not resolved:  # parents never listed: leave these folders out of scope
            break


def _plan(listing: Listing, folders: dict[str, str], known: dict[str, dict[str, Any]], folder_path: str,
          full: bool) -> tuple[list[tuple[str, dict[str, Any]]], int, set[str]]:
    """(files to download with their paths, unchanged count, item ids whose assets go)."""
    scope = "/" + folder_path.strip("/")
    wanted, unchanged, in_scope = [], 0, set()
    for item_id, item in listing.files.items():
        path = _path_of(item, folders)
        if path is None or not _within(path, scope):
            continue
        in_scope.add(item_id)
        if known.get(item_id, {}).get("etag") == item.get("eTag"):
            unchanged += 1
        else:
            wanted.append((path, item))
    gone = (listing.deleted | (set(listing.files) - in_scope)) & set(known)
    if full:
        gone |= set(known) - in_scope
    return wanted, unchanged, gone


def _sync(ctx: JobContext, drive: GraphDrive, config: SharePointSyncConfig, wanted: list[tuple[str, dict[str, Any]]],
          known: dict[str, dict[str, Any]]) -> list[Any]:
    stored = []
    ctx.progress(0, len(wanted), phase="syncing", unit="files")
    for n, (path, item) in enumerate(wanted, 1):
        ctx.check_cancelled()
        ctx.progress(n - 1, len(wanted), phase="syncing", item=path, unit="files")
        data = drive.download(item["id"])
        asset = common.store_external(ctx.organization_id, item.get("name") or item["id"], data,
                                      collection_id=config.sync_config_id, external_id=item["id"],
                                      source=f"sharepoint:{config.drive_id}:{path}")
        changed = item["id"] in known
        known[item["id"]] = {"etag": item.get("eTag"), "name": asset.filename, "path": path,
                             "asset_id": str(asset.id), "extract": True}
        stored.append(asset)
        ctx.info(f"{'Updated' if changed else 'Added'} {path} ({len(data):,} bytes)", "downloaded",
                 item_id=item["id"], asset_id=asset.id, bytes=len(data))
    ctx.progress(len(wanted), len(wanted), phase="syncing", unit="files")
    return stored


def _extract(ctx: JobContext, known: dict[str, dict[str, Any]], skip: set[str]) -> None:
    """One child extraction per stored file not yet extracted (this run's, or a stopped run's)."""
    todo = [(item_id, entry) for item_id, entry in known.items() if entry.get("extract") and item_id not in skip]
    ctx.progress(0, len(todo), phase="extracting", unit="files")
    for n, (item_id, entry) in enumerate(todo, 1):
        ctx.check_cancelled()
        ctx.spawn_child("extraction", {"asset_id": entry["asset_id"]}, display_name=entry["name"])
        entry["extract"] = False
        ctx.progress(n, len(todo), phase="extracting", item=entry["path"], unit="files")


def _delete(ctx: JobContext, sync_id: str, gone: set[str], known: dict[str, dict[str, Any]]) -> int:
    ctx.progress(0, len(gone), phase="detecting_deletions", unit="items")
    ctx.check_cancelled()
    count = common.mark_deleted(ctx.organization_id, sync_id, gone)
    for item_id in sorted(gone):
        ctx.info(f"Removed {known.pop(item_id, {}).get('path') or item_id}: deleted in SharePoint", "deleted",
                 item_id=item_id)
    ctx.progress(len(gone), len(gone), phase="detecting_deletions", unit="items")
    return count


def _path_of(item: dict[str, Any], folders: dict[str, str]) -> str | None:
    parent = folders.get((item.get("parentReference") or {}).get("id"))
    return None if parent is None else _join(parent, item.get("name") or item["id"])


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def _within(path: str, scope: str) -> bool:
    return scope == "/" or path.casefold().startswith(scope.casefold() + "/")
