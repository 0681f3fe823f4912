"""Text extraction on real files of every format, and files whose bytes do not match their name."""

from __future__ import annotations

import io
import logging
import zipfile

import pytest
from pypdf import PdfReader

from backend.errors import UnsupportedFile
from backend.extract.formats import extract, format_of
from tests.data import make_samples as samples


@pytest.fixture(autouse=True)
def _quiet_pypdf(caplog: pytest.LogCaptureFixture) -> None:
    """pypdf logs a warning for each repair it attempts on a damaged PDF; they are expected here."""
    caplog.set_level(logging.ERROR, logger="pypdf")


# --------------------------------------------------------------------------- the sample files themselves


def test_hand_written_pdf_is_valid_and_pypdf_reads_its_text():
    reader = PdfReader(io.BytesIO(samples.pdf_bytes()), strict=True)  # strict: a wrong xref offset would raise
    assert [page.extract_text() for page in reader.pages] == list(samples.PDF_PAGES)


def test_write_samples_writes_every_format(tmp_path):
    written = samples.write_samples(tmp_path)
    assert sorted(p.name for p in written) == sorted(samples.SAMPLES)
    for path in written:
        assert extract(path.name, path.read_bytes()).text


# --------------------------------------------------------------------------- each format


def test_pdf():
    result = extract("report.pdf", samples.pdf_bytes())
    assert result.format == "pdf"
    assert result.text == "Quarterly report for Curatore\n\nSecond page: totals (final)"
    assert result.meta == {"pages": 2}


def test_pdf_extension_is_case_insensitive():
    assert extract("REPORT.PDF", samples.pdf_bytes()).format == "pdf"


def test_docx_paragraphs_and_tables():
    result = extract("document.docx", samples.docx_bytes())
    assert result.format == "docx"
    lines = result.text.splitlines()
    assert lines[:2] == [samples.DOCX_HEADING, samples.DOCX_PARAGRAPH]  # the blank paragraph is dropped
    assert lines[2:] == ["Name | Value", "pages | 12"]
    assert result.meta["paragraphs"] == 3


def test_html_drops_script_style_and_noscript_and_decodes_entities():
    result = extract("page.html", samples.html_bytes())
    assert result.format == "html"
    assert result.meta == {"title": "Sample & page"}
    assert result.text.splitlines() == [
        "Fish & Chips",
        "Price: 5 € — café “quoted” <tag>",
        "first item",
        "second item",
    ]
    for hidden in ("SCRIPT_TEXT", "alert", "color: red", "NOSCRIPT_TEXT", "Sample & page"):
        assert hidden not in result.text


@pytest.mark.parametrize("name", ["page.htm", "PAGE.HTML"])
def test_html_extensions(name):
    assert extract(name, b"<p>a &amp; b</p>").text == "a & b"


def test_csv_rows_columns_and_quoting():
    result = extract("people.csv", samples.csv_bytes())
    assert result.format == "csv"
    assert result.meta == {"rows": 3, "columns": ["name", "city", "notes"]}
    lines = result.text.splitlines()
    assert lines[0] == "name | city | notes"
    assert lines[1] == "Alice | Paris | likes, commas"
    assert lines[2] == 'Bob | Berlin | said "hi"'
    assert lines[3].startswith("Chloé | Zürich")


def test_empty_csv():
    assert extract("empty.csv", b"").meta == {"rows": 0, "columns": []}


def test_markdown_is_kept_as_written():
    result = extract("notes.md", samples.markdown_bytes())
    assert result.format == "markdown"
    assert result.text == samples.markdown_bytes().decode().strip()
    assert extract("notes.markdown", b"# x").format == "markdown"


def test_cp1252_text_is_decoded():
    data = samples.cp1252_text_bytes()
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    result = extract("legacy.txt", data)
    assert result.format == "text"
    assert result.text == samples.CP1252_TEXT.strip()
    assert "\ufffd" not in result.text


def test_utf8_with_bom():
    result = extract("bom.txt", "\ufeffhéllo wörld".encode())
    assert result.text == "héllo wörld"


@pytest.mark.parametrize("name", ["notes.xyz", "README", "script.py", "data.json"])
def test_unknown_extension_with_text_content_is_text(name):
    assert format_of(name) == "text"
    result = extract(name, b"some plain words\nand a second line\n")
    assert result.format == "text"
    assert result.text == "some plain words\nand a second line"


def test_empty_text_file():
    assert extract("empty.txt", b"").text == ""


# --------------------------------------------------------------------------- mislabelled and damaged files


def _truncated_pdf() -> bytes:
    pdf = samples.pdf_bytes()
    return pdf[: len(pdf) // 2]


def _pdf_with_mangled_xref_entry() -> bytes:
    """Two xref entries run together: pypdf fails with a TypeError deep inside, not a PdfReadError."""
    pdf = samples.pdf_bytes()
    start = pdf.index(b"xref\n") + len(b"xref\n0 8\n") + 2 * 20  # skip the free entry and object 1's
    entry2, entry3 = pdf[start:start + 20], pdf[start + 20:start + 40]
    return pdf[:start] + entry2[:15] + entry3[10:] + pdf[start + 40:]


def _pdf_with_huge_xref_count() -> bytes:
    """The xref subsection header runs into its first entry: '0 80000000000 65535 f'."""
    return samples.pdf_bytes().replace(b"xref\n0 8\n", b"xref\n0 8", 1)


def _docx_with_corrupt_deflate_stream() -> bytes:
    """A real DOCX whose document.xml compressed bytes are garbage (zlib.error, not BadZipFile)."""
    data = bytearray(samples.docx_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("word/document.xml")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start:start + 16] = b"\xff" * 16  # BTYPE 11: an invalid deflate block
    return bytes(data)


def _docx_missing_document_part() -> bytes:
    """A DOCX package with its main part removed."""
    source = zipfile.ZipFile(io.BytesIO(samples.docx_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            if info.filename != "word/document.xml":
                target.writestr(info, source.read(info))
    return out.getvalue()


BAD_FILES = [
    ("report.txt", samples.pdf_bytes, "report.txt is not a text file: its content is a PDF document."),
    ("photo.docx", samples.png_bytes, "photo.docx is named like a Word document but is a PNG image."),
    ("notes.pdf", lambda: b"just some text\n", "notes.pdf is named like a PDF but is not a PDF."),
    ("photo.pdf", samples.png_bytes, "photo.pdf is named like a PDF but is a PNG image."),
    ("archive.docx", samples.plain_zip_bytes, "archive.docx is not a valid Word document: "),
    ("archive.txt", samples.plain_zip_bytes, "archive.txt is not a text file: its content is a ZIP archive"),
    ("notes.docx", lambda: b"plain text, not a zip", "notes.docx is named like a Word document but is not one."),
    ("image.xyz", samples.png_bytes, "image.xyz is not a text file: its content is a PNG image."),
    ("page.html", lambda: b"<html>\x00\x01\x02</html>", "page.html is not a text file: it contains binary data."),
    ("table.csv", lambda: bytes(range(1, 32)) * 20, "table.csv is not a text file: it contains binary data."),
    ("blob.bin", lambda: b"\x7fELF\x02\x01\x01", "blob.bin is not a text file: its content is an executable (ELF)."),
    ("truncated.pdf", _truncated_pdf, "truncated.pdf is a damaged PDF: "),
    ("header-only.pdf", lambda: b"%PDF-1.4\n", "header-only.pdf is a damaged PDF: "),
    ("mangled.pdf", _pdf_with_mangled_xref_entry, "mangled.pdf is a damaged PDF: "),
    ("huge.pdf", _pdf_with_huge_xref_count, "huge.pdf is a damaged PDF: "),
    ("cut.docx", lambda: samples.docx_bytes()[:500], "cut.docx is not a valid Word document: "),
    ("deflate.docx", _docx_with_corrupt_deflate_stream, "deflate.docx is not a valid Word document: "),
    ("nobody.docx", _docx_missing_document_part, "nobody.docx is not a valid Word document: "),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_mislabelled_or_damaged_file_fails_clearly(name, make, message):
    with pytest.raises(UnsupportedFile) as caught:
        extract(name, make())
    text = caught.value.message
    assert text.startswith(message)
    assert caught.value.code == "unsupported_file"
    # One line a person can read: the file's name, no Python repr of an exception.
    assert "\n" not in text and len(text) < 300
    assert "Traceback" not in text and "Error(" not in text
    assert len(text) > len(message) or message.endswith(".")


def test_plain_zip_named_docx_says_what_is_missing():
    with pytest.raises(UnsupportedFile, match=r"There is no item named '\[Content_Types\]\.xml'"):
        extract("archive.docx", samples.plain_zip_bytes())


def test_huge_csv_field_fails_clearly():
    with pytest.raises(UnsupportedFile, match=r"^big\.csv is not valid CSV: field larger than field limit"):
        extract("big.csv", b'a,"b\n' + b"x" * 200_000)
