"""salesforce_import: a Salesforce data export (a ZIP with one CSV per object) into external records.

Parsing streams every CSV of the stored ZIP once, row by row, and keeps those whose header has an
``Id`` column; the object name (``Account``, ``Contact``, ``Opportunity__c``...) comes from the file
name. Nothing is written until the whole archive has been read within its limits: the bytes each file
really unpacks to (not what the archive declares) are counted against a limit per file, a limit for
the export and a compression ratio (zip bombs), and a row has a maximum length. Importing then streams
the kept files again and upserts one :class:`ExternalRecord` per (object, Id) in batches, so a
re-import updates rather than duplicates; a repeated Id keeps its last row. Indexing counts what is
now stored per object.
"""

from __future__ import annotations

import csv
import io
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from backend.config import get_settings
from backend.connectors.http import mib
from backend.db.engine import in_transaction
from backend.db.models import Asset, ExternalRecord
from backend.db.types import utcnow
from backend.errors import CuratoreError, UnsupportedFile
from backend.extract.formats import SIGNATURES, decode_text
from backend.jobtypes.configs import SalesforceImportConfig
from backend.storage import assets
from backend.worker.base import JobContext

SOURCE = "salesforce"
BATCH_SIZE = 250
BATCH_CHARS = 4 * 2**20  # a batch of long rows is written sooner, so a batch stays small in memory
MAX_ROW_CHARS = 4 * 2**20  # one CSV record (a quoted field may span lines); a longer one makes the file unusable
RATIO_FLOOR = 8 * 2**20  # a file smaller than this unpacks to little, however well it compresses
CANCEL_CHECK_ROWS = 20_000
KEY = ("organization_id", "source", "kind", "external_id")
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError)


class InvalidExport(CuratoreError):
    """That file is not a usable Salesforce export."""

    code = "invalid_export"


@dataclass
class CsvFile:
    """One usable CSV of the export, as the parsing pass found it."""

    info: zipfile.ZipInfo
    kind: str
    encoding: str
    rows: int = 0  # records with an Id (a repeated Id counts each time)
    without_id: int = 0


@dataclass
class ObjectFiles:
    kind: str
    files: list[CsvFile] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


# --------------------------------------------------------------------------- reading the archive


class Budget:
    """The bytes the archive's files unpack to, counted as they are read, against the limits (the
    sizes an archive declares are the attacker's to choose)."""

    def __init__(self, export: str) -> None:
        settings = get_settings()
        self.export, self.unpacked = export, 0
        self.per_file, self.total = settings.import_max_file_bytes, settings.import_max_total_bytes
        self.ratio = settings.import_max_ratio

    def add(self, info: zipfile.ZipInfo, file_bytes: int, more: int) -> None:
        self.unpacked += more
        if file_bytes > self.per_file:
            raise InvalidExport(f"{self.export}: {info.filename} expands past {mib(self.per_file)} (the limit per "
                                "file, CURATORE_IMPORT_MAX_FILE_BYTES); the export was not imported.")
        if file_bytes > max(RATIO_FLOOR, self.ratio * info.compress_size):
            raise InvalidExport(f"{self.export}: {info.filename} expands to more than {self.ratio} times its "
                                "compressed size (the limit on the compression ratio, CURATORE_IMPORT_MAX_RATIO); "
                                "the export was not imported.")
        if self.unpacked > self.total:
            raise InvalidExport(f"{self.export}: its files expand past {mib(self.total)} (the limit per export, "
                                "CURATORE_IMPORT_MAX_TOTAL_BYTES); the export was not imported.")


class Unpacking(io.RawIOBase):
    """One archive member's bytes as they unpack, each read counted by the budget."""

    def __init__(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: Budget) -> None:
        super().__init__()
        self.info, self.budget, self.count = info, budget, 0
        with _damage(budget.export, info):
            self.stream = archive.open(info)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with _damage(self.budget.export, self.info):
            data = self.stream.read(len(buffer))
        self.count += len(data)
        self.budget.add(self.info, self.count, len(data))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self.stream.close()
        super().close()


@contextmanager
def _damage(export: str, info: zipfile.ZipInfo) -> Iterator[None]:
    try:
        yield
    except ZIP_ERRORS as exc:
        raise InvalidExport(f"{export} is a damaged ZIP archive: {info.filename}: {exc}") from None


@contextmanager
def member_text(archive: zipfile.ZipFile, info: zipfile.ZipInfo, encoding: str,
                budget: Budget) -> Iterator[tuple[io.TextIOWrapper, Unpacking]]:
    """A member as text, decoded as it unpacks (cp1252 replaces what it cannot decode)."""
    raw = Unpacking(archive, info, budget)
    errors = "strict" if encoding == "utf-8-sig" else "replace"
    text = io.TextIOWrapper(io.BufferedReader(raw, 64 * 1024), encoding=encoding, errors=errors, newline="")
    try:
        yield text, raw
    finally:
        text.close()


class Lines:
    """A text stream's lines for ``csv.reader``, stopping at a record longer than MAX_ROW_CHARS (a
    quoted field may span lines, so the reader resets ``taken`` after each record)."""

    def __init__(self, text: io.TextIOWrapper, member: str) -> None:
        self.text, self.member, self.taken = text, member, 0

    def __iter__(self) -> "Lines":
        return self

    def __next__(self) -> str:
        line = self.text.readline(MAX_ROW_CHARS + 1)
        if not line:
            raise StopIteration
        self.taken += len(line)
        if self.taken > MAX_ROW_CHARS:
            raise UnsupportedFile(f"{self.member} has a row longer than {MAX_ROW_CHARS:,} characters.")
        return line


def read_rows(member: str, text: io.TextIOWrapper) -> Iterator[tuple[str, dict[str, str]]]:
    """(Id, row) for each non-blank record, Id "" when it has none; UnsupportedFile (with the reason)
    when the file cannot be used."""
    lines = Lines(text, member)
    reader = csv.reader(lines)
    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise UnsupportedFile(f"{member} is empty.")
        id_col = next((i for i, h in enumerate(header) if h.lower() == "id"), None)
        if id_col is None:
            raise UnsupportedFile(f"{member} has no Id column (columns: {', '.join(header[:10])}).")
        lines.taken = 0
        for row in reader:
            lines.taken = 0
            if not any(cell.strip() for cell in row):
                continue
            record_id = row[id_col].strip()[:300] if id_col < len(row) else ""
            yield record_id, dict(zip(header, row, strict=False))
    except csv.Error as exc:
        raise UnsupportedFile(f"{member} is not valid CSV: {exc}") from None


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
    limit = get_settings().import_max_total_bytes
    if sum(info.file_size for info in archive.infolist()) > limit:  # what it declares; the reading counts again
        raise InvalidExport(f"{filename} unpacks to more than {mib(limit)} (the limit per export, "
                            "CURATORE_IMPORT_MAX_TOTAL_BYTES); it is not imported.")
    return archive


def scan_csv(ctx: JobContext, archive: zipfile.ZipFile, info: zipfile.ZipInfo, kind: str, budget: Budget) -> CsvFile:
    """Read one CSV through, counting its records; UnsupportedFile if it cannot be used."""
    if info.flag_bits & 0x1:
        raise InvalidExport(f"{budget.export} is password-protected ({info.filename}); export it without a password.")
    with _damage(budget.export, info), archive.open(info) as stream:
        head = stream.read(8192)
    decode_text(info.filename, head)  # binary content is refused from its first bytes
    for encoding in ("utf-8-sig", "cp1252"):  # as decode_text: UTF-8 if the whole file is, else Windows-1252
        found = CsvFile(info, kind, encoding)
        with member_text(archive, info, encoding, budget) as (text, raw):
            try:
                for n, (record_id, _) in enumerate(read_rows(info.filename, text), 1):
                    if record_id:
                        found.rows += 1
                    else:
                        found.without_id += 1
                    if n % CANCEL_CHECK_ROWS == 0:
                        ctx.check_cancelled()
                return found
            except UnicodeDecodeError:
                budget.unpacked -= raw.count  # read again as Windows-1252: counted once
    raise AssertionError("unreachable: cp1252 decodes every byte")


def parse_export(ctx: JobContext, asset: Asset) -> tuple[zipfile.ZipFile, dict[str, ObjectFiles], list[dict[str, str]]]:
    archive = open_export(asset.filename, assets.read_bytes(asset))
    budget = Budget(asset.filename)
    objects: dict[str, ObjectFiles] = {}
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
        try:
            found = scan_csv(ctx, archive, info, kind, budget)
        except UnsupportedFile as exc:
            skipped.append({"file": info.filename, "reason": exc.message})
            ctx.warn(f"Skipped {info.filename}: {exc.message}", "skipped_file", file=info.filename)
            continue
        objects.setdefault(kind, ObjectFiles(kind)).files.append(found)
    ctx.progress(len(members), len(members), phase="parsing")
    if not objects:
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:5]) or "it is empty"
        raise InvalidExport(f"{asset.filename} has no CSV file with an Id column to import ({reasons}).")
    return archive, objects, skipped


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


def import_rows(ctx: JobContext, archive: zipfile.ZipFile, objects: dict[str, ObjectFiles],
                asset: Asset) -> dict[str, dict[str, Any]]:
    """Stream the kept files again and upsert their records, one transaction per batch."""
    total, done = sum(o.rows for o in objects.values()), 0
    budget, resource_id = Budget(asset.filename), str(asset.id)
    counts: dict[str, dict[str, Any]] = {}
    ctx.progress(0, total, phase="importing", unit="rows")
    for kind, obj in objects.items():
        created = 0
        for found in obj.files:
            with member_text(archive, found.info, found.encoding, budget) as (text, _):
                for batch, records in batches(read_rows(found.info.filename, text)):
                    ctx.check_cancelled()
                    created += in_transaction(lambda s, b=batch: upsert(s, ctx.organization_id, kind, b, resource_id))
                    done += records
                    ctx.results["imported"] = done
                    ctx.progress(done, total, phase="importing", item=kind)
        rows = imported_count(ctx.organization_id, kind, resource_id)
        counts[kind] = {"files": [f.info.filename for f in obj.files], "rows": rows, "created": created,
                        "updated": rows - created, "without_id": sum(f.without_id for f in obj.files),
                        "duplicate_ids": obj.rows - rows}
        ctx.info(f"{kind}: {rows} records ({created} new, {rows - created} updated)", "imported",
                 kind=kind, rows=rows, created=created)
    return counts


def batches(rows: Iterator[tuple[str, dict[str, str]]]) -> Iterator[tuple[list[tuple[str, dict[str, str]]], int]]:
    """The records with an Id in batches of at most BATCH_SIZE distinct Ids (fewer when the rows are
    long), each with how many records it stands for: a repeated Id within a batch keeps its last row,
    as a repeat in a later batch does by updating."""
    batch: dict[str, dict[str, str]] = {}
    records = chars = 0
    for record_id, row in rows:
        if not record_id:
            continue
        batch[record_id] = row
        records += 1
        chars += sum(len(value) for value in row.values())
        if len(batch) >= BATCH_SIZE or chars >= BATCH_CHARS:
            yield list(batch.items()), records
            batch, records, chars = {}, 0, 0
    if batch:
        yield list(batch.items()), records


def imported_count(organization_id: uuid.UUID, kind: str, resource_id: str) -> int:
    """How many distinct records of ``kind`` this export holds: those it has just written."""
    return in_transaction(lambda s: s.execute(select(func.count()).select_from(ExternalRecord).where(
        ExternalRecord.organization_id == organization_id, ExternalRecord.source == SOURCE,
        ExternalRecord.kind == kind, ExternalRecord.resource_id == resource_id)).scalar_one())


def stored_counts(organization_id: uuid.UUID, kinds: list[str]) -> dict[str, int]:
    query = (select(ExternalRecord.kind, func.count()).where(
        ExternalRecord.organization_id == organization_id, ExternalRecord.source == SOURCE,
        ExternalRecord.kind.in_(kinds), ExternalRecord.deleted_at.is_(None)).group_by(ExternalRecord.kind))
    return dict(in_transaction(lambda s: s.execute(query).all()))


def run(ctx: JobContext, config: SalesforceImportConfig) -> dict[str, Any]:
    asset = ctx.asset(config.asset_id)
    ctx.progress(0, None, phase="parsing", item=asset.filename, unit="files")
    archive, objects, skipped = parse_export(ctx, asset)
    ctx.info(f"{asset.filename}: {len(objects)} objects, {sum(o.rows for o in objects.values())} records; "
             f"{len(skipped)} files skipped", "parsed", objects=sorted(objects), skipped=len(skipped))
    with archive:
        counts = import_rows(ctx, archive, objects, asset)
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
