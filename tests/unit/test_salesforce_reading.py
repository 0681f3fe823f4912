"""Reading a Salesforce export's members as they unpack (backend/worker/jobs/salesforce.py): the bytes
counted against the limits per file and per export, text decoded as UTF-8 or else Windows-1252, records
spanning lines and records too long. Archives are built in memory; no worker is needed to read them."""

from __future__ import annotations

import io
import zipfile

import pytest

from backend.config import reset_settings
from backend.errors import UnsupportedFile
from backend.worker.jobs.salesforce import Budget, InvalidExport, member_text, read_rows, scan_csv


class NoCancel:
    def check_cancelled(self) -> None:
        pass


def archive_of(members: dict[str, bytes]) -> zipfile.ZipFile:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return zipfile.ZipFile(out)


@pytest.fixture
def limits(monkeypatch):
    def set_limits(**values: int) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"CURATORE_IMPORT_MAX_{name.upper()}", str(value))
        reset_settings()

    yield set_limits
    reset_settings()


def read_all(archive: zipfile.ZipFile, budget: Budget) -> None:
    for info in archive.infolist():
        with member_text(archive, info, "utf-8-sig", budget) as (text, _):
            while text.read(65536):
                pass


def test_the_export_total_counts_what_every_file_really_unpacks(limits):
    limits(total_bytes=300_000, file_bytes=10**9, ratio=10**6)
    archive = archive_of({"A.csv": b"Id\r\n" + b"1\r\n" * 60_000, "B.csv": b"Id\r\n" + b"2\r\n" * 60_000})
    budget = Budget("export.zip")
    with pytest.raises(InvalidExport) as too_big:
        read_all(archive, budget)
    assert too_big.value.message == ("export.zip: its files expand past 0.2861 MiB (the limit per export, "
                                     "CURATORE_IMPORT_MAX_TOTAL_BYTES); the export was not imported.")
    assert 300_000 < budget.unpacked <= 300_000 + 65536, "stopped within one read of the limit"


def test_one_file_is_counted_against_the_limit_per_file(limits):
    limits(file_bytes=100_000, ratio=10**6)
    with pytest.raises(InvalidExport, match=r"export.zip: A.csv expands past 0.09537 MiB \(the limit per file"):
        read_all(archive_of({"A.csv": b"Id\r\n" + b"1\r\n" * 60_000}), Budget("export.zip"))


def test_a_small_file_may_compress_well(limits):
    limits(ratio=2)
    read_all(archive_of({"A.csv": b"Id\r\n" + b"1\r\n" * 100_000}), Budget("export.zip"))  # 300 KB: under the floor


def test_windows_1252_is_read_when_the_file_is_not_utf8(limits):
    limits()
    archive = archive_of({"Account.csv": "Id,Name\r\n001,Société Générale\r\n".encode("cp1252")})
    found = scan_csv(NoCancel(), archive, archive.infolist()[0], "Account", Budget("export.zip"))
    assert (found.encoding, found.rows, found.without_id) == ("cp1252", 1, 0)
    with member_text(archive, found.info, found.encoding, Budget("export.zip")) as (text, _):
        assert list(read_rows("Account.csv", text)) == [("001", {"Id": "001", "Name": "Société Générale"})]


def test_a_quoted_field_may_span_lines_but_a_record_is_bounded(limits, monkeypatch):
    limits()
    monkeypatch.setattr("backend.worker.jobs.salesforce.MAX_ROW_CHARS", 1000)
    fine = archive_of({"Task.csv": b'Id,Description\r\n00T,"line one\r\nline two"\r\n'})
    with member_text(fine, fine.infolist()[0], "utf-8-sig", Budget("export.zip")) as (text, _):
        assert list(read_rows("Task.csv", text)) == [("00T", {"Id": "00T", "Description": "line one\r\nline two"})]
    many_lines = b'Id,Description\r\n00T,"' + b"short line\r\n" * 200 + b'"\r\n'  # no line is long; the record is
    long = archive_of({"Task.csv": many_lines})
    with member_text(long, long.infolist()[0], "utf-8-sig", Budget("export.zip")) as (text, _):
        with pytest.raises(UnsupportedFile, match="Task.csv has a row longer than 1,000 characters"):
            list(read_rows("Task.csv", text))
