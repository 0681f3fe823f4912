"""A Microsoft Graph drive client: the delta protocol and file downloads.

``GET /drives/{drive-id}/root/delta`` lists the drive; each page links to the next one with
``@odata.nextLink`` and the last page carries ``@odata.deltaLink``, which the next sync follows to get
only what changed since (files with a ``file`` facet, folders, and items with a ``deleted`` facet).
An expired delta link answers 410 Gone (``resyncRequired``): the caller then lists everything again.
``GET /drives/{drive-id}/items/{item-id}/content`` answers 302 to a pre-authenticated download URL.

The bearer token goes only to the connection's origin (the client adds it there): a next or delta link
on another origin is refused before anything is sent to it, and the pre-authenticated download URL,
usually on another host, is fetched without the token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from backend.connectors.common import RunHttpClient, as_error
from backend.connectors.connections import show_origin
from backend.connectors.http import FetchFailed
from backend.errors import CuratoreError


class GraphError(CuratoreError):
    """Microsoft Graph did not answer as expected."""

    code = "graph_error"


class DeltaExpired(GraphError):
    """The delta link expired (410 Gone); a full listing is needed."""

    code = "graph_resync_required"


@dataclass
class DeltaPage:
    items: list[dict[str, Any]]
    next_link: str | None
    delta_link: str | None


class GraphDrive:
    def __init__(self, http: RunHttpClient, drive_id: str) -> None:
        self.http, self.drive_id = http, drive_id

    def delta(self, delta_link: str | None = None) -> Iterator[DeltaPage]:
        """The pages of a delta listing: everything, or what changed since ``delta_link``."""
        url: str | None = delta_link or f"/drives/{quote(self.drive_id, safe='')}/root/delta"
        while url:
            data = self._json(url, "listing")
            page = DeltaPage(list(data.get("value") or []), data.get("@odata.nextLink"), data.get("@odata.deltaLink"))
            if page.next_link is None and page.delta_link is None:
                raise GraphError(f"Microsoft Graph answered a delta page of drive {self.drive_id} with neither "
                                 "@odata.nextLink nor @odata.deltaLink.")
            for name, link in (("@odata.nextLink", page.next_link), ("@odata.deltaLink", page.delta_link)):
                if link is not None:
                    self.check_link(link, name)
            yield page
            url = page.next_link

    def check_link(self, link: Any, name: str) -> None:
        """Refuse a link the token must not follow: not a string, or on another origin than the connection's."""
        if not isinstance(link, str):
            raise GraphError(f"Microsoft Graph sent an {name} that is not a URL.")
        if not self.http.on_origin(link):
            raise GraphError(f"Microsoft Graph sent an {name} to {show_origin(link)}, another origin than the "
                             f"connection's ({show_origin(self.http.base_url)}); refusing to follow it with the token.")

    def download(self, item_id: str) -> bytes:
        path = f"/drives/{quote(self.drive_id, safe='')}/items/{quote(item_id, safe='')}/content"
        return self._call(lambda: self.http.get_following(path), f"downloading {item_id}").content

    def _json(self, url: str, what: str) -> dict[str, Any]:
        response = self._call(lambda: self.http.get(url), what)
        try:
            return response.json()
        except ValueError:
            raise GraphError(f"Microsoft Graph answered {what} with something that is not JSON "
                             f"(HTTP {response.status_code}, {response.headers.get('Content-Type')}).") from None

    def _call(self, fn: Any, what: str) -> Any:
        try:
            return fn()
        except FetchFailed as exc:
            status = exc.details.get("status")
            detail = _graph_error(exc.details.get("body") or "")
            drive = self.drive_id
            if status == 410:
                message, cls = f"Microsoft Graph: the delta link of drive {drive} expired ({detail})", DeltaExpired
            elif status in (401, 403):
                message, cls = (f"Microsoft Graph refused {what} on drive {drive} (HTTP {status} {detail}). "
                                f"Check the token of the connection ({self._setting()})."), GraphError
            elif status == 404:
                message, cls = f"Microsoft Graph: {what} on drive {drive}: not found (HTTP 404 {detail}).", GraphError
            else:
                message, cls = f"Microsoft Graph: {what} on drive {drive} failed: {exc.message}", GraphError
            raise as_error(cls, message, exc) from None

    def _setting(self) -> str:
        connection = self.http.connection
        return f"{connection.name!r}, {connection.setting}" if connection else "none configured"


def _graph_error(body: str) -> str:
    """``code: message`` from a Graph error body ``{"error": {"code": ..., "message": ...}}``."""
    try:
        error = json.loads(body).get("error") or {}
        return f"{error.get('code', 'error')}: {error.get('message', '')}".strip(": ")
    except (ValueError, AttributeError):
        return body[:200]
