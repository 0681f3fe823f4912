"""Stored files. Jobs read assets from here; nothing reads arbitrary server paths."""

from __future__ import annotations

import hashlib
import mimetypes
import os
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import update

from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.db.types import utcnow
from backend.errors import AssetError

MAX_ASSET_BYTES = 200 * 1024 * 1024


def _path_for(key: str) -> Path:
    return get_settings().assets_dir / key


def store_bytes(
    organization_id: uuid.UUID, filename: str, data: bytes, *, source: str | None = None,
    collection_id: str | None = None,
) -> Asset:
    """Store ``data`` as a new asset of the organization (in ``collection_id``, if given)."""
    name = Path(filename).name.strip()
    if not name:
        raise AssetError("A stored file needs a name.")
    if len(data) > MAX_ASSET_BYTES:
        raise AssetError(f"{name} is {len(data)} bytes; the limit is {MAX_ASSET_BYTES}.")
    asset_id = uuid.uuid4()
    key = f"{organization_id}/{asset_id.hex[:2]}/{asset_id}"
    path = _path_for(key)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # stored files are the server's alone
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    asset = Asset(
        id=asset_id,
        organization_id=organization_id,
        filename=name[:500],
        content_type=mimetypes.guess_type(name)[0],
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        storage_key=key,
        source=source,
        collection_id=collection_id,
    )

    def write(s: Any) -> Asset:
        s.add(asset)
        return asset

    return in_transaction(write)


def store_local_file(organization_id: uuid.UUID, path: str | Path) -> Asset:
    """Store a file from the local disk (the command line only: the API and UI take uploads)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise AssetError(f"No such file: {p}")
    if not p.is_file():
        raise AssetError(f"Not a regular file: {p}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AssetError(f"Could not read {p}: {exc.strerror}") from exc
    return store_bytes(organization_id, p.name, data, source=f"file:{p.resolve()}")


def read_bytes(asset: Asset) -> bytes:
    path = _path_for(asset.storage_key)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AssetError(f"The stored file of asset {asset.id} ({asset.filename}) is missing.") from None


def save_extraction(asset_id: uuid.UUID, text: str | None, meta: dict[str, Any], status: str) -> None:
    in_transaction(
        lambda s: s.execute(
            update(Asset)
            .where(Asset.id == asset_id)
            .values(extracted_text=text, extraction_meta=meta, extraction_status=status, updated_at=utcnow())
        )
    )
