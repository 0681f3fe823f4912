"""A real worker imports Salesforce exports: counts and records, upserts on re-import, clear failures on
files that are not exports, a cancel in the middle of the import, and zip bombs refused by the limits on
what the files really unpack to, within a bounded memory and with nothing imported."""

from __future__ import annotations

import io
import zipfile

import pytest
from sqlalchemy import func, select

from backend.db.engine import in_transaction
from backend.db.models import ExternalRecord
from backend.db.states import RunStatus
from backend.queues.dispatch import submit_run
from backend.runs.queries import get_logs, get_run
from backend.runs.service import request_cancel
from backend.storage.assets import store_bytes
from tests.data import make_samples
from tests.data.salesforce_export import accounts, csv_bytes, export_zip, sf_id
from tests.peak_memory import pool_peak_rss
from tests.support import wait_for, wait_terminal

pytestmark = pytest.mark.integration


def _import(org, name: str, data: bytes, timeout: float = 60):  # type: ignore[no-untyped-def]
    asset = store_bytes(org.id, name, data)
    run = submit_run("salesforce_import", {"asset_id": str(asset.id)}, organization_id=org.id)
    return asset, wait_terminal(run.id, timeout)


def _records(org_id, kind: str | None = None) -> list[ExternalRecord]:
    query = select(ExternalRecord).where(ExternalRecord.organization_id == org_id, ExternalRecord.source == "salesforce")
    if kind:
        query = query.where(ExternalRecord.kind == kind)
    return in_transaction(lambda s: list(s.execute(query.order_by(ExternalRecord.external_id)).scalars()))


def _count(org_id) -> int:
    return in_transaction(lambda s: s.execute(select(func.count()).select_from(ExternalRecord).where(
        ExternalRecord.organization_id == org_id)).scalar_one())


def test_import_counts_records_and_skipped_files(backend, org, worker):
    extra = {"Report.csv": csv_bytes(["Name", "Total"], [["Q1", "5"]]), "README.txt": b"exported by Salesforce",
             "__MACOSX/._Account.csv": b"\x00\x05\x16\x07"}
    asset, done = _import(org, "WE_00D_1.zip", export_zip(3, 4, 2, 1, extra=extra))
    assert RunStatus(done.status) is RunStatus.COMPLETED, done.error_message
    r = done.results_summary
    assert {k: (v["rows"], v["created"], v["updated"], v["stored"]) for k, v in r["objects"].items()} == {
        "Account": (3, 3, 0, 3), "Contact": (4, 4, 0, 4), "Opportunity": (2, 2, 0, 2), "Task": (1, 1, 0, 1)}
    assert (r["records"], r["created"], r["updated"]) == (10, 10, 0)
    assert {s["file"]: s["reason"] for s in r["skipped_files"]} == {
        "Report.csv": "Report.csv has no Id column (columns: Name, Total).", "README.txt": "not a CSV file"}

    deal = _records(org.id, "Opportunity")[0]
    assert (deal.external_id, deal.title, deal.resource_id) == (sf_id("006", 1), "Deal 1", str(asset.id))
    assert deal.data["Description"] == 'Multi-line,\n"quoted" text' and deal.data["Amount"] == "1000"
    assert _records(org.id, "Task")[0].title == "Call back #1"  # Subject when there is no Name
    assert _count(org.id) == 10

    logs = get_logs(done.id)
    assert [e.context["phase"] for e in logs if e.event_type == "phase"] == ["parsing", "importing", "indexing"]
    assert any(e.event_type == "skipped_file" and "Report.csv" in e.message for e in logs)


def test_reimport_updates_without_duplicates(backend, org, worker):
    data = export_zip(3, 4, 2, 1)
    _, first = _import(org, "export.zip", data)
    _, again = _import(org, "export-copy.zip", data)  # the same export uploaded again
    assert RunStatus(again.status) is RunStatus.COMPLETED, again.error_message
    assert (again.results_summary["created"], again.results_summary["updated"]) == (0, 10)
    assert _count(org.id) == 10

    changed = export_zip(3, 5, 2, 1, extra={"Account.csv": csv_bytes(
        ["Id", "Name"], [[sf_id("001", 1), "Renamed Inc"], [sf_id("001", 2), "Account 2"], [sf_id("001", 2), "Dup"],
                         ["", "No id"]])})
    newer, third = _import(org, "export-2.zip", changed)
    account = third.results_summary["objects"]["Account"]
    assert (account["rows"], account["created"], account["updated"]) == (2, 0, 2)
    assert (account["duplicate_ids"], account["without_id"], account["stored"]) == (1, 1, 3)
    assert third.results_summary["objects"]["Contact"]["created"] == 1
    assert _count(org.id) == 11
    accounts = {a.external_id: a for a in _records(org.id, "Account")}
    assert accounts[sf_id("001", 1)].title == "Renamed Inc" and accounts[sf_id("001", 1)].resource_id == str(newer.id)
    assert accounts[sf_id("001", 2)].title == "Dup"  # a repeated Id keeps its last row
    assert accounts[sf_id("001", 3)].title == "Account 3"  # not in the newer export: left as it was


def _damaged_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("Account.csv", csv_bytes(["Id", "Name"], [[sf_id("001", 1), "Intact name"]]))
    return out.getvalue().replace(b"Intact name", b"Broken name")  # the CRC no longer matches


NOT_EXPORTS = [
    ("export.zip", make_samples.pdf_bytes(),
     "export.zip is not a Salesforce export: its content is a PDF document. An export is a ZIP of CSV files."),
    ("export.zip", export_zip()[:300],
     "export.zip is not a Salesforce export: it is not a valid ZIP archive. An export is a ZIP of CSV files."),
    ("Account.csv", csv_bytes(["Id", "Name"], [["001", "A"]]),
     "Account.csv is not a Salesforce export: it is not a valid ZIP archive. An export is a ZIP of CSV files."),
    ("export.zip", _damaged_zip(), "export.zip is a damaged ZIP archive: Account.csv: Bad CRC-32 for file "),
    ("export.zip", make_samples.docx_bytes(), "export.zip has no CSV file with an Id column to import ("),
    ("export.zip", export_zip(extra={name: b"Name\r\nx\r\n" for name in
                                     ("Account.csv", "Contact.csv", "Opportunity.csv", "Task.csv")}),
     "export.zip has no CSV file with an Id column to import (Account.csv: Account.csv has no Id column"),
]


def test_files_that_are_not_exports_fail_clearly(backend, org, worker):
    for name, data, message in NOT_EXPORTS:
        _, done = _import(org, name, data)
        assert RunStatus(done.status) is RunStatus.FAILED, name
        assert done.error_message.startswith(message), done.error_message
    assert _count(org.id) == 0


def test_cancel_mid_import(backend, org, worker):
    rows = 40_000
    asset = store_bytes(org.id, "big.zip", export_zip(n_accounts=10, n_contacts=rows, n_opportunities=0, n_tasks=0))
    run = submit_run("salesforce_import", {"asset_id": str(asset.id)}, organization_id=org.id)

    def importing():  # type: ignore[no-untyped-def]
        progress = get_run(run.id).progress
        return progress["phase"] == "importing" and progress["current"] > 0

    wait_for(importing, timeout=60, interval=0.02, what="the import to be under way")
    request_cancel(run.id, by="test")
    done = wait_terminal(run.id)
    assert RunStatus(done.status) is RunStatus.CANCELLED, done.error_message
    imported = _count(org.id)
    assert 0 < imported < rows + 10
    assert imported % 250 in (0, 10)  # whole batches only: each batch is one transaction
    assert "cancelled" in [e.event_type for e in get_logs(run.id)]


# --------------------------------------------------------------------------- zip bombs


def bomb_zip(sizes: dict[str, int], first: dict[str, bytes] | None = None) -> bytes:
    """An export whose CSVs (name → size in bytes) are one header and the same long row repeated, written
    to the zip stream as they are generated: a file of 1000 MiB compresses to about 1 MB."""
    row = f"{sf_id('003', 1)},{'x' * 4000}\r\n".encode()
    block = row * (2**20 // len(row))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in (first or {}).items():
            archive.writestr(name, data)
        for name, size in sizes.items():
            with archive.open(name, "w", force_zip64=True) as member:
                member.write(b"Id,Name\r\n")
                written = 9
                while written + len(block) <= size:
                    member.write(block)
                    written += len(block)
                member.write(row * ((size - written) // len(row)))
    return out.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """Account.csv (real rows), then Contact.csv: 1000 MiB unpacked, under the 1 GiB the archive may declare."""
    return bomb_zip({"Contact.csv": 1000 * 2**20}, first={"Account.csv": accounts(300)})


def test_a_zip_bomb_fails_on_its_ratio_in_bounded_memory(backend, org, start_worker, bomb):
    worker = start_worker()  # a fresh worker: its pool's peak memory is this test's
    assert len(bomb) < 1.5 * 2**20
    assert sum(i.file_size for i in zipfile.ZipFile(io.BytesIO(bomb)).infolist()) < 2**30  # passes the declared check
    _, done = _import(org, "WE_bomb.zip", bomb, timeout=120)
    assert RunStatus(done.status) is RunStatus.FAILED
    assert done.error_message == (
        "WE_bomb.zip: Contact.csv expands to more than 100 times its compressed size (the limit on the compression "
        "ratio, CURATORE_IMPORT_MAX_RATIO); the export was not imported.")
    assert _count(org.id) == 0, "the valid Account.csv before it was not imported either"
    peak = pool_peak_rss(worker.proc.pid)
    assert peak < 200 * 2**20, f"the worker's pool peaked at {peak / 2**20:.0f} MiB"


def test_limits_per_file_and_per_export(backend, org, start_worker):
    worker = start_worker(extra_env={"CURATORE_IMPORT_MAX_FILE_BYTES": str(20 * 2**20),
                                     "CURATORE_IMPORT_MAX_TOTAL_BYTES": str(30 * 2**20),
                                     "CURATORE_IMPORT_MAX_RATIO": "5000"})
    _, one = _import(org, "big-file.zip", bomb_zip({"Contact.csv": 25 * 2**20}, first={"Account.csv": accounts(3)}))
    assert RunStatus(one.status) is RunStatus.FAILED
    assert one.error_message == ("big-file.zip: Contact.csv expands past 20 MiB (the limit per file, "
                                 "CURATORE_IMPORT_MAX_FILE_BYTES); the export was not imported.")

    _, many = _import(org, "many.zip", bomb_zip({"Contact.csv": 12 * 2**20, "Task.csv": 12 * 2**20,
                                                 "Lead.csv": 12 * 2**20}))
    assert RunStatus(many.status) is RunStatus.FAILED
    assert many.error_message == ("many.zip unpacks to more than 30 MiB (the limit per export, "
                                  "CURATORE_IMPORT_MAX_TOTAL_BYTES); it is not imported.")
    assert _count(org.id) == 0

    _, fits = _import(org, "fits.zip", bomb_zip({"Contact.csv": 15 * 2**20}))  # 15 MiB of one repeated Id
    assert RunStatus(fits.status) is RunStatus.COMPLETED, fits.error_message
    contact = fits.results_summary["objects"]["Contact"]
    assert (contact["rows"], contact["created"], contact["stored"]) == (1, 1, 1) and contact["duplicate_ids"] > 3000
    assert pool_peak_rss(worker.proc.pid) < 200 * 2**20


def test_a_row_too_long_skips_its_file(backend, org, worker):
    huge = b"Id,Name\r\n" + sf_id("003", 1).encode() + b"," + b"x" * (5 * 2**20) + b"\r\n"
    _, done = _import(org, "long.zip", export_zip(extra={"Contact.csv": huge}))
    assert RunStatus(done.status) is RunStatus.COMPLETED, done.error_message
    assert {s["file"]: s["reason"] for s in done.results_summary["skipped_files"]} == {
        "Contact.csv": "Contact.csv has a row longer than 4,194,304 characters."}
    assert set(done.results_summary["objects"]) == {"Account", "Opportunity", "Task"}
