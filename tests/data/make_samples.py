"""Small, real sample files for every extraction format, built in code.

Each ``*_bytes`` function returns the bytes of one file. ``python -m tests.data.make_samples [DIR]``
writes them all (default: ``tests/data/samples/``) for trying the CLI by hand:

    curatore submit extraction --config '{"path": "tests/data/samples/report.pdf"}' --wait
"""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

PDF_PAGES = ("Quarterly report for Curatore", "Second page: totals (final)")
DOCX_HEADING = "Curatore sample document"
DOCX_PARAGRAPH = "Extraction turns stored files into searchable text."
CP1252_TEXT = "Café menu – “crème brûlée” costs 5 €\nNext line: naïve façade\n"


def _pdf_string(text: str) -> str:
    """A PDF literal string: backslash and parentheses escaped."""
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def pdf_bytes(pages: tuple[str, ...] = PDF_PAGES) -> bytes:
    """A valid PDF 1.4 with one line of Helvetica text per page and an exact cross-reference table."""
    n = len(pages)
    font_id = 3
    first_page_id = 4  # page i is object 4 + 2i, its content stream object 5 + 2i
    kids = " ".join(f"{first_page_id + 2 * i} 0 R" for i in range(n))
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    for i, text in enumerate(pages):
        content_id = first_page_id + 2 * i + 1
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> /Contents {content_id} 0 R >>".encode()
        )
        stream = f"BT\n/F1 18 Tf\n72 720 Td\n{_pdf_string(text)} Tj\nET\n".encode("latin-1")
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"  # each entry is exactly 20 bytes
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref_at)
    return bytes(out)


def docx_bytes() -> bytes:
    """A real Word document (python-docx): a heading, a paragraph, a blank paragraph and a 2x2 table."""
    import docx

    document = docx.Document()
    document.add_heading(DOCX_HEADING, level=1)
    document.add_paragraph(DOCX_PARAGRAPH)
    document.add_paragraph("")
    table = document.add_table(rows=2, cols=2)
    for r, row in enumerate([("Name", "Value"), ("pages", "12")]):
        for col, text in enumerate(row):
            table.cell(r, col).text = text
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def html_bytes() -> bytes:
    return (
        "<!DOCTYPE html>\n<html><head><title>Sample &amp; page</title>\n"
        "<style>body { color: red; } .hidden { display: none }</style>\n"
        "<script>var secret = 'SCRIPT_TEXT'; if (a < b) { alert(1); }</script>\n"
        "</head><body>\n"
        "<h1>Fish &amp; Chips</h1>\n"
        "<p>Price: 5&nbsp;&euro; &mdash; caf&eacute; &#8220;quoted&#8221; &lt;tag&gt;</p>\n"
        "<noscript>NOSCRIPT_TEXT</noscript>\n"
        "<ul><li>first item</li><li>second   item</li></ul>\n"
        "</body></html>\n"
    ).encode("utf-8")


def csv_bytes() -> bytes:
    return (
        'name,city,notes\r\n'
        'Alice,Paris,"likes, commas"\r\n'
        'Bob,Berlin,"said ""hi"""\r\n'
        'Chloé,Zürich,\r\n'
    ).encode("utf-8")


def markdown_bytes() -> bytes:
    return b"# Release notes\n\n- **Bold** change\n- `code` change\n\nSee [the docs](https://example.org).\n"


def cp1252_text_bytes() -> bytes:
    """Plain text in Windows-1252 (not valid UTF-8)."""
    return CP1252_TEXT.encode("cp1252")


def png_bytes() -> bytes:
    """A real 1x1 PNG image."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(
        b"IEND", b""
    )


def plain_zip_bytes() -> bytes:
    """A valid ZIP archive that is not a Word document."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "just a zip\n")
    return buffer.getvalue()


SAMPLES = {
    "report.pdf": pdf_bytes,
    "document.docx": docx_bytes,
    "page.html": html_bytes,
    "people.csv": csv_bytes,
    "notes.md": markdown_bytes,
    "legacy-cp1252.txt": cp1252_text_bytes,
}


def write_samples(directory: Path = HERE / "samples") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in SAMPLES.items():
        path = directory / name
        path.write_bytes(make())
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "samples"):
        print(written_path)
