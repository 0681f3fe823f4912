"""A real worker imports Salesforce exports: counts and records, upserts on re-import, clear failures on
files that are not exports, and a cancel in the middle of the import."""

from __future__ import annotations

import io
import zipfile

import pytest
from sqlalchemy import func, select

from backend.db.engine import in_transaction
from backend.db.models import ExternalRecord
from backend.queues.dispatch import submit_run
from backend.runs.queries import get_logs, get_run
from backend.runs.service import request_cancel
from backend.runs.states import RunStatus
from backend.storage.assets import store_bytes
from tests.data import make_samples
from tests.data.salesforce_export import csv_bytes, export_zip, sf_id
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
