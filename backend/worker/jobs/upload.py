"""upload: a batch of stored files, one child extraction each, counted in a run group."""

from __future__ import annotations

from typing import Any

from backend.jobtypes.configs import UploadConfig
from backend.worker.base import JobContext


def run(ctx: JobContext, config: UploadConfig) -> dict[str, Any]:
    total = len(config.asset_ids)
    ctx.progress(0, total, phase="uploading", unit="files")
    assets = []
    for asset_id in config.asset_ids:
        ctx.check_cancelled()
        assets.append(ctx.asset(asset_id))  # every file must be stored before anything starts
    ctx.info(f"{total} files stored ({sum(a.size_bytes for a in assets):,} bytes)", "uploaded")
    for n, asset in enumerate(assets, 1):
        ctx.check_cancelled()
        ctx.spawn_child("extraction", {"asset_id": str(asset.id)}, display_name=asset.filename)
        ctx.progress(n, total, phase="extracting", item=asset.filename)
    return {"files": total, "bytes": sum(a.size_bytes for a in assets)}
