"""extraction: text out of a stored file, kept on the asset."""

from __future__ import annotations

from typing import Any

from backend.errors import UnsupportedFile
from backend.extract.formats import extract
from backend.jobtypes.configs import ExtractionConfig
from backend.search import index_asset
from backend.storage import assets
from backend.worker.base import JobContext

CANCEL_CHECK_SECONDS = 0.2  # between pages, the run's status is read at most this often


def run(ctx: JobContext, config: ExtractionConfig) -> dict[str, Any]:
    asset = ctx.asset(config.asset_id)
    ctx.progress(0, 1, phase="extracting", item=asset.filename, unit="files")
    data = assets.read_bytes(asset)

    def on_page(done: int, total: int) -> None:
        ctx.progress(done, total, phase="extracting", item=asset.filename, unit="pages")
        ctx.check_cancelled(every=CANCEL_CHECK_SECONDS)

    try:
        result = extract(asset.filename, data, on_page)
    except UnsupportedFile as exc:
        assets.save_extraction(asset.id, None, {"error": exc.message}, "failed")
        raise
    ctx.check_cancelled()
    ctx.info(f"Extracted {len(result.text)} characters from {asset.filename} ({result.format})", "extracted",
             format=result.format, **result.meta)
    ctx.progress(0, 1, phase="indexing", item=asset.filename, unit="files")
    assets.save_extraction(asset.id, result.text, {"format": result.format, **result.meta}, "completed")
    index_asset(None, asset.id, asset.organization_id, asset.filename, result.text)
    ctx.progress(1, 1, item=asset.filename)
    return {
        "asset_id": str(asset.id),
        "filename": asset.filename,
        "format": result.format,
        "characters": len(result.text),
        "words": len(result.text.split()),
        **{k: v for k, v in result.meta.items() if isinstance(v, (int, str))},
    }
