"""extraction: text out of a stored file, kept on the asset."""

from __future__ import annotations

from typing import Any

from backend.errors import UnsupportedFile
from backend.extract.formats import extract
from backend.queues.configs import ExtractionConfig
from backend.search import index_asset
from backend.storage import assets
from backend.worker.base import JobContext


def run(ctx: JobContext, config: ExtractionConfig) -> dict[str, Any]:
    asset = ctx.asset(config.asset_id)
    ctx.progress(0, 2, phase="extracting", item=asset.filename, unit="steps")
    data = assets.read_bytes(asset)
    try:
        result = extract(asset.filename, data)
    except UnsupportedFile as exc:
        assets.save_extraction(asset.id, None, {"error": exc.message}, "failed")
        raise
    ctx.check_cancelled()
    ctx.info(f"Extracted {len(result.text)} characters from {asset.filename} ({result.format})", "extracted",
             format=result.format, **result.meta)
    ctx.progress(1, 2, phase="indexing", item=asset.filename)
    assets.save_extraction(asset.id, result.text, {"format": result.format, **result.meta}, "completed")
    index_asset(None, asset.id, asset.organization_id, asset.filename, result.text)
    ctx.progress(2, 2, item=asset.filename)
    return {
        "asset_id": str(asset.id),
        "filename": asset.filename,
        "format": result.format,
        "characters": len(result.text),
        "words": len(result.text.split()),
        **{k: v for k, v in result.meta.items() if isinstance(v, (int, str))},
    }
