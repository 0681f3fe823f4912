"""A SAM.gov Get Opportunities API (v2) client.

``GET {base}/opportunities/v2/search?api_key=…&postedFrom=MM/dd/yyyy&postedTo=MM/dd/yyyy&limit=…&offset=…``
(plus ``ncode``, ``title``, ``noticeid`` filters) answers ``{"totalRecords": N, "opportunitiesData": [...]}``.
``postedFrom`` and ``postedTo`` are mandatory and at most a year apart. Attachments are the URLs in each
opportunity's ``resourceLinks``; SAM.gov writes them with ``api_key=null``, to be replaced by the caller's key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from backend.connectors.common import RunHttpClient, as_error, filename_from
from backend.connectors.http import FetchFailed
from backend.errors import CuratoreError

DEFAULT_BASE_URL = "https://api.sam.gov"
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
    def __init__(self, http: RunHttpClient, api_key: str | None) -> None:
        self.http, self.api_key = http, api_key

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
        response = self._call(lambda: self.http.get_following(self._with_key(url)), "downloading an attachment")
        return Attachment(filename_from(response, fallback_name), response.content)

    def _with_key(self, url: str) -> str:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if self.api_key and any(k == "api_key" for k, _ in query):
            query = [(k, self.api_key if k == "api_key" else v) for k, v in query]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def _json(self, params: dict[str, Any]) -> dict[str, Any]:
        if self.api_key:
            params = {"api_key": self.api_key, **params}
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
                message = f"SAM.gov refused {what} (HTTP {status} {detail}). Check the API key in CURATORE_SAM_API_KEY."
            else:
                message = f"SAM.gov: {what} failed: {exc.message}"
            raise as_error(SamError, message, exc) from None


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
