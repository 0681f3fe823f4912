"""A SAM.gov Get Opportunities API (v2) client.

``GET {base}/opportunities/v2/search?api_key=…&postedFrom=MM/dd/yyyy&postedTo=MM/dd/yyyy&limit=…&offset=…``
(plus ``ncode``, ``title``, ``noticeid`` filters) answers ``{"totalRecords": N, "opportunitiesData": [...]}``.
``postedFrom`` and ``postedTo`` are mandatory and at most a year apart. Attachments are the URLs in each
opportunity's ``resourceLinks``; SAM.gov writes them with ``api_key=null``, to be replaced by the caller's key.

The key goes only to the connection's origin (the client puts it in the query there, replacing the
``api_key=null`` placeholder). An attachment link on another origin is still fetched, through the address
guard, but without the key: a public file downloads, one that needs the key fails and is counted as such.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from backend.connectors.common import RunHttpClient, as_error, filename_from
from backend.connectors.http import FetchFailed, FetchRefused
from backend.errors import CuratoreError

PAGE_LIMIT = 1000  # the API's maximum page size


class SamError(CuratoreError):
    """The SAM.gov API did not answer as expected."""

    code = "sam_error"


@dataclass
class SearchPage:
    opportunities: list[dict[str, Any]]
    total: int
    offset: int


@dataclass
class Attachment:
    filename: str
    data: bytes


def sam_date(day: date) -> str:
    return day.strftime("%m/%d/%Y")


class SamClient:
    def __init__(self, http: RunHttpClient) -> None:
        self.http = http

    def __enter__(self) -> SamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def search(self, posted_from: date, posted_to: date, *, max_pages: int, **filters: str) -> Iterator[SearchPage]:
        """Pages of a search, by offset, until every record is read or ``max_pages`` pages were."""
        offset = 0
        for _ in range(max_pages):
            params = {"postedFrom": sam_date(posted_from), "postedTo": sam_date(posted_to), "limit": PAGE_LIMIT,
                      "offset": offset, **{k: v for k, v in filters.items() if v}}
            data = self._json(params)
            found = list(data.get("opportunitiesData") or [])
            page = SearchPage(found, int(data.get("totalRecords") or 0), offset)
            yield page
            offset += len(found)  # the server may cap the page below the limit asked for
            if not found or offset >= page.total:
                return

    def notice(self, notice_id: str, posted_from: date, posted_to: date) -> dict[str, Any] | None:
        page = next(self.search(posted_from, posted_to, max_pages=1, noticeid=notice_id))
        return next((o for o in page.opportunities if o.get("noticeId") == notice_id), None)

    def attachment(self, url: str, fallback_name: str) -> Attachment:
        """One attachment; a link the client refuses (embedded credentials, an internal address) is a SamError
        like a failed download, so the caller counts it and goes on."""
        if not isinstance(url, str):
            raise SamError("SAM.gov sent an attachment link that is not a URL.")
        try:
            response = self._call(lambda: self.http.get_following(url), "downloading an attachment")
        except FetchRefused as exc:
            raise SamError(f"SAM.gov: downloading an attachment was refused: {exc.message}") from None
        return Attachment(filename_from(response, fallback_name), response.content)

    def _json(self, params: dict[str, Any]) -> dict[str, Any]:
        response = self._call(lambda: self.http.get("/opportunities/v2/search", params=params), "searching")
        try:
            return response.json()
        except ValueError:
            raise SamError(f"SAM.gov answered a search with something that is not JSON "
                           f"(HTTP {response.status_code}, {response.headers.get('Content-Type')}).") from None

    def _call(self, fn: Any, what: str) -> Any:
        try:
            return fn()
        except FetchFailed as exc:
            status = exc.details.get("status")
            detail = _sam_error(exc.details.get("body") or "")
            if status in (401, 403):
                message = (f"SAM.gov refused {what} (HTTP {status} {detail}). Check the API key of the connection "
                           f"({self._setting()}).")
            else:
                message = f"SAM.gov: {what} failed: {exc.message}"
            raise as_error(SamError, message, exc) from None

    def _setting(self) -> str:
        connection = self.http.connection
        return f"{connection.name!r}, {connection.setting}" if connection else "none configured"


def _sam_error(body: str) -> str:
    """The message of an api.data.gov (``{"error": {"code", "message"}}``) or SAM (``errorMessage``) error."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    if not isinstance(data, dict):
        return body[:200]
    error = data.get("error")
    if isinstance(error, dict):
        return f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    return str(data.get("errorMessage") or data.get("message") or body[:200])
