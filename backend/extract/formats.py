"""Text out of files: PDF, DOCX, HTML, Markdown, plain text and CSV.

The format comes from the file's name and is checked against its content: a
file whose bytes say something else than its name fails with a clear message.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from html.parser import HTMLParser
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

from backend.errors import UnsupportedFile

SIGNATURES: list[tuple[bytes, str]] = [
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"MZ", "a Windows executable"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office document"),
]

EXTENSIONS = {
    ".txt": "text", ".text": "text", ".log": "text", ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html", ".csv": "csv", ".pdf": "pdf", ".docx": "docx",
}


@dataclass
class Extracted:
    text: str
    format: str
    meta: dict[str, Any] = field(default_factory=dict)


def format_of(filename: str) -> str:
    """The format a file's name promises; unknown names are read as plain text if they are text."""
    return EXTENSIONS.get(PurePath(filename).suffix.lower(), "text")


PageHook = Callable[[int, int], None]


def extract(filename: str, data: bytes, on_page: PageHook | None = None) -> Extracted:
    """The text of a file. ``on_page(done, total)`` is called after each page of a PDF (the one format
    long enough to need it): for progress, and to stop by raising (a cancel) between pages."""
    fmt = format_of(filename)
    if fmt == "pdf":
        return _pdf(filename, data, on_page)
    return {"docx": _docx}.get(fmt, _textual)(filename, data, fmt)


def _sniff(data: bytes) -> str | None:
    for magic, what in SIGNATURES:
        if data.startswith(magic):
            return what
    return None


def decode_text(filename: str, data: bytes) -> str:
    what = _sniff(data)
    if what:
        raise UnsupportedFile(f"{filename} is not a text file: its content is {what}.")
    if b"\x00" in data[:8192]:
        raise UnsupportedFile(f"{filename} is not a text file: it contains binary data.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("cp1252", errors="replace")
    sample = text[:8192]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\t\r\n\f")
    if sample and controls / len(sample) > 0.05:
        raise UnsupportedFile(f"{filename} is not a text file: it contains binary data.")
    return text


def _textual(filename: str, data: bytes, fmt: str) -> Extracted:
    text = decode_text(filename, data)
    if fmt == "html":
        return _html(text)
    if fmt == "csv":
        return _csv(filename, text)
    return Extracted(text.strip(), fmt, {"lines": text.count("\n") + 1})


class _TextOfHTML(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "svg"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "table"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skip:
            self._skip -= 1
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skip:
            self.parts.append(data)


def _html(text: str) -> Extracted:
    parser = _TextOfHTML()
    parser.feed(text)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    body = "\n".join(line for line in lines if line)
    return Extracted(body, "html", {"title": parser.title.strip()})


def _csv(filename: str, text: str) -> Extracted:
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise UnsupportedFile(f"{filename} is not valid CSV: {exc}") from None
    body = "\n".join(" | ".join(cell.strip() for cell in row) for row in rows if row)
    columns = rows[0] if rows else []
    return Extracted(body, "csv", {"rows": max(len(rows) - 1, 0), "columns": columns[:50]})


def _pdf(filename: str, data: bytes, on_page: PageHook | None) -> Extracted:
    if not data.startswith(b"%PDF-"):
        raise UnsupportedFile(f"{filename} is named like a PDF but is {_sniff(data) or 'not a PDF'}.")
    from pypdf import PdfReader

    def damaged(exc: Exception) -> UnsupportedFile:  # pypdf raises TypeError, LimitReachedError... on damage
        return UnsupportedFile(f"{filename} is a damaged PDF: {_reason(exc)}")

    try:
        reader = PdfReader(io.BytesIO(data))
        total = len(reader.pages)
    except Exception as exc:  # noqa: BLE001
        raise damaged(exc) from None
    pages: list[str] = []
    for number in range(total):
        try:
            pages.append(reader.pages[number].extract_text() or "")
        except Exception as exc:  # noqa: BLE001
            raise damaged(exc) from None
        if on_page is not None:
            on_page(number + 1, total)  # outside the try: what it raises (a cancel) is not damage
    return Extracted("\n\n".join(p.strip() for p in pages).strip(), "pdf", {"pages": total})


def _docx(filename: str, data: bytes, fmt: str) -> Extracted:
    if not data.startswith(b"PK\x03\x04"):
        raise UnsupportedFile(f"{filename} is named like a Word document but is {_sniff(data) or 'not one'}.")
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
        paragraphs = [p.text for p in document.paragraphs if p.text.strip()]
        for table in document.tables:
            for row in table.rows:
                paragraphs.append(" | ".join(cell.text.strip() for cell in row.cells))
    except Exception as exc:  # noqa: BLE001 - zipfile, zlib, lxml and python-docx each raise their own types
        raise UnsupportedFile(f"{filename} is not a valid Word document: {_reason(exc)}") from None
    return Extracted("\n".join(paragraphs), "docx", {"paragraphs": len(document.paragraphs)})


def _reason(exc: Exception) -> str:
    """The parser's own words, or the name of its exception when it gave none."""
    said = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # a KeyError's str() is quoted
    text = " ".join(str(said).split())
    return text or type(exc).__name__
