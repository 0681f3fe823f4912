"""salesforce_import: a Salesforce data export (a ZIP with one CSV per object) into external records.

Parsing opens the stored ZIP and reads every CSV whose header has an ``Id`` column; the object name
(``Account``, ``Contact``, ``Opportunity__c``...) comes from the file name. Importing upserts one
:class:`ExternalRecord` per (object, Id) in batches, so a re-import updates rather than duplicates.
Indexing counts what is now stored per object.
"""

from __future__ import annotations

import csv
import io
import uuid
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from backend.db.engine import in_transaction
from backend.db.models import Asset, ExternalRecord
from backend.db.types import utcnow
from backend.errors import CuratoreError, UnsupportedFile
from backend.extract.formats import SIGNATURES, decode_text
from backend.queues.configs import SalesforceImportConfig
from backend.storage import assets
from backend.worker.base import JobContext

SOURCE = "salesforce"
BATCH_SIZE = 250
MAX_UNCOMPRESSED = 1024 * 1024 * 1024  # 1 GiB of CSV: beyond that the archive is refused (zip bombs)
KEY = ("organization_id", "source", "kind", "external_id")


class InvalidExport(CuratoreError):
    """That file is not a usable Salesforce export."""

    code = "invalid_export"


@dataclass
class ObjectRows:
    kind: str
    files: list[str] = field(default_factory=list)
    rows: dict[str, dict[str, str]] = field(default_factory=dict)  # Id → row; a repeated Id keeps the last row
    without_id: int = 0
    duplicates: int = 0


# --------------------------------------------------------------------------- parsing


def open_export(filename: str, data: bytes) -> zipfile.ZipFile:
    what = next((w for magic, w in SIGNATURES if data.startswith(magic)), None)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        said = f"its content is {what}" if what and "ZIP" not in what else "it is not a valid ZIP archive"
        raise InvalidExport(f"{filename} is not a Salesforce export: {said}. An export is a ZIP of CSV files.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidExport(f"{filename} is a damaged ZIP archive: {exc}") from None
    if sum(info.file_size for info in archive.infolist()) > MAX_UNCOMPRESSED:
        raise InvalidExport(f"{filename} unpacks to more than {MAX_UNCOMPRESSED // 2**20} MiB; it is not imported.")
    return archive


def read_member(filename: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.flag_bits & 0x1:
        raise InvalidExport(f"{filename} is password-protected ({info.filename}); export it without a password.")
    try:
        return archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as exc:
        raise InvalidExport(f"{filename} is a damaged ZIP archive: {info.filename}: {exc}") from None


def parse_csv(member: str, data: bytes, into: ObjectRows) -> None:
    """Add the rows of one CSV to ``into``; raises UnsupportedFile (with the reason) if it cannot be used."""
    text = decode_text(member, data)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise UnsupportedFile(f"{member} is empty.")
        id_col = next((i for i, h in enumerate(header) if h.lower() == "id"), None)
        if id_col is None:
            raise UnsupportedFile(f"{member} has no Id column (columns: {', '.join(header[:10])}).")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            record_id = row[id_col].strip() if id_col < len(row) else ""
            if not record_id:
                into.without_id += 1
                continue
            if record_id in into.rows:
                into.duplicates += 1
            into.rows[record_id[:300]] = dict(zip(header, row, strict=False))
    except csv.Error as exc:
        raise UnsupportedFile(f"{member} is not valid CSV: {exc}") from None
    into.files.append(member)


def parse_export(ctx: JobContext, asset: Asset) -> tuple[dict[str, ObjectRows], list[dict[str, str]]]:
    archive = open_export(asset.filename, assets.read_bytes(asset))
    objects: dict[str, ObjectRows] = {}
    skipped: list[dict[str, str]] = []
    members = [i for i in archive.infolist() if not i.is_dir() and not _hidden(i.filename)]
    for n, info in enumerate(members, 1):
        ctx.check_cancelled()
        path = PurePosixPath(info.filename)
        ctx.progress(n - 1, len(members), phase="parsing", item=info.filename, unit="files")
        if path.suffix.lower() != ".csv":
            skipped.append({"file": info.filename, "reason": "not a CSV file"})
            continue
        kind = path.stem.strip()[:60] or "Unknown"
        rows = objects.get(kind) or ObjectRows(kind)
        try:
            parse_csv(info.filename, read_member(asset.filename, archive, info), rows)
        except UnsupportedFile as exc:
            skipped.append({"file": info.filename, "reason": exc.message})
            ctx.warn(f"Skipped {info.filename}: {exc.message}", "skipped_file", file=info.filename)
            continue
        objects[kind] = rows
    ctx.progress(len(members), len(members), phase="parsing")
    if not objects:
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5]) or "it is empty"
        raise InvalidExport(f"{asset.filename} has no CSV file with an Id column to import ({reasons}).")
    return objects, skipped


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)


# --------------------------------------------------------------------------- importing


def upsert(s: Session, organization_id: uuid.UUID, kind: str, batch: list[tuple[str, dict[str, str]]],
           resource_id: str) -> int:
    """Insert or update one batch of records of ``kind``; returns how many were new."""
    ids = [record_id for record_id, _ in batch]
    known = s.execute(select(func.count()).select_from(ExternalRecord).where(
        ExternalRecord.organization_id == organization_id, ExternalRecord.source == SOURCE,
        ExternalRecord.kind == kind, ExternalRecord.external_id.in_(ids))).scalar_one()
    now = utcnow()
    values = [{"id": uuid.uuid4(), "organization_id": organization_id, "source": SOURCE, "kind": kind,
               "external_id": record_id, "resource_id": resource_id,
               "title": (row.get("Name") or row.get("Subject") or "")[:1000], "data": row, "asset_ids": [],
               "created_at": now, "updated_at": now, "deleted_at": None} for record_id, row in batch]
    insert = (sqlite.insert if s.get_bind().dialect.name == "sqlite" else postgresql.insert)(ExternalRecord.__table__)
    stmt = insert.on_conflict_do_update(index_elements=list(KEY), set_={
        name: insert.excluded[name] for name in ("resource_id", "title", "data", "updated_at", "deleted_at")})
    s.execute(stmt, values)
    return len(batch) - known


def import_rows(ctx: JobContext, objects: dict[str, ObjectRows], resource_id: str) -> dict[str, dict[str, Any]]:
    total = sum(len(o.rows) for o in objects.values())
    done = 0
    counts: dict[str, dict[str, Any]] = {}
    ctx.progress(0, total, phase="importing", unit="rows")
    for kind, obj in objects.items():
        items = list(obj.rows.items())
        created = 0
        for start in range(0, len(items), BATCH_SIZE):
            ctx.check_cancelled()
            batch = items[start:start + BATCH_SIZE]
            created += in_transaction(lambda s, b=batch: upsert(s, ctx.organization_id, kind, b, resource_id))
            done += len(batch)
            ctx.results["imported"] = done
            ctx.progress(done, total, phase="importing", item=kind)
        counts[kind] = {"files": obj.files, "rows": len(items), "created": created, "updated": len(items) - created,
                        "without_id": obj.without_id, "duplicate_ids": obj.duplicates}
        ctx.info(f"{kind}: {len(items)} records ({created} new, {len(items) - created} updated)", "imported",
                 kind=kind, rows=len(items), created=created)
    return counts


def stored_counts(organization_id: uuid.UUID, kinds: list[str]) -> dict[str, int]:
    query = (select(ExternalRecord.kind, func.count()).where(
        ExternalRecord.organization_id == organization_id, ExternalRecord.source == SOURCE,
        ExternalRecord.kind.in_(kinds), ExternalRecord.deleted_at.is_(None)).group_by(ExternalRecord.kind))
    return dict(in_transaction(lambda s: s.execute(query).all()))


def run(ctx: JobContext, config: SalesforceImportConfig) -> dict[str, Any]:
    asset = ctx.asset(config.asset_id)
    ctx.progress(0, None, phase="parsing", item=asset.filename, unit="files")
    objects, skipped = parse_export(ctx, asset)
    ctx.info(f"{asset.filename}: {len(objects)} objects, {sum(len(o.rows) for o in objects.values())} records; "
             f"{len(skipped)} files skipped", "parsed", objects=sorted(objects), skipped=len(skipped))
    counts = import_rows(ctx, objects, str(asset.id))
    ctx.progress(0, len(counts), phase="indexing", unit="objects")
    stored = stored_counts(ctx.organization_id, list(counts))
    for n, (kind, entry) in enumerate(counts.items(), 1):
        entry["stored"] = stored.get(kind, 0)
        ctx.progress(n, len(counts), phase="indexing", item=kind)
    return {
        "export": asset.filename,
        "objects": counts,
        "records": sum(c["rows"] for c in counts.values()),
        "created": sum(c["created"] for c in counts.values()),
        "updated": sum(c["updated"] for c in counts.values()),
        "skipped_files": skipped,
    }
