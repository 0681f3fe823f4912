"""Local servers that speak the connectors' protocols: a Microsoft Graph drive (delta listing and
downloads), the SAM.gov opportunities search (with attachment downloads) and a paged forecast API.

The connector tests run the jobs against them, and the jobs page starts sample jobs against them
(SPEC 9.1a). Each is a stdlib ``ThreadingHTTPServer`` on 127.0.0.1 with an ephemeral port:

    with GraphServer() as graph:          # or graph.start() ... graph.stop()
        graph.put_file("/Reports/q1.txt", b"...")
        graph.base_url                    # http://127.0.0.1:PORT/v1.0

Faults are injected per request path (a regular expression searched in ``path?query``):
``fail(pattern, status=500, times=2)`` answers the next two matching requests with HTTP 500,
``fail(pattern, 429, retry_after=1)`` adds a Retry-After header, and ``hold(pattern, after=2)`` lets two
matching requests through and then keeps the next ones waiting until the test calls ``release()``.
Every request is recorded in ``requests`` (``seen(pattern)`` filters them).

To play a hostile or broken service, links can point elsewhere: ``GraphServer.next_link_root``,
``delta_link_root`` and ``download_root``, ``SamServer.attachment_root`` and ``ForecastServer.next_link_root``
are the scheme://host:port their links use instead of the server's own. A :class:`Listener` stands in for
that elsewhere (an attacker): it records every request and answers each one alike.

The connector jobs reach these servers through connections (``backend/connectors/connections.py``):
``demo_environment`` gives ``curatore dev``'s processes connections to the sample servers.

``python -m backend.demo.servers`` serves all three with sample data until Ctrl-C.
"""

from __future__ import annotations

import json
import mimetypes
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

HOLD_TIMEOUT = 60.0  # a held request never waits longer than this, so a forgotten release cannot hang a run


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    @property
    def target(self) -> str:
        return f"{self.path}?{urlencode(self.query)}" if self.query else self.path


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


@dataclass
class _Fault:
    pattern: re.Pattern[str]
    response: Response
    times: int


class Hold:
    """Matching requests pass ``after`` times, then wait until :meth:`release`."""

    def __init__(self, pattern: str, after: int) -> None:
        self.pattern = re.compile(pattern)
        self.after, self.passed, self.waiting = after, 0, 0
        self._released = threading.Event()
        self._cond = threading.Condition()

    def release(self) -> None:
        self._released.set()

    def wait_blocked(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``count`` requests are being held."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.waiting >= count, timeout):
                raise TimeoutError(f"no request to hold after {timeout} s ({self.passed} passed)")

    def _enter(self) -> None:
        with self._cond:
            if self.passed < self.after or self._released.is_set():
                self.passed += 1
                return
            self.waiting += 1
            self._cond.notify_all()
        self._released.wait(HOLD_TIMEOUT)


class _Handler(BaseHTTPRequestHandler):
    server_version = "curatore-devserver/1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.owner._serve(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


class ProtocolServer:
    """The shared part: a threaded server, request log, faults and holds. Subclasses implement ``route``."""

    prefix = ""  # the path the API lives under, part of base_url

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._faults: list[_Fault] = []
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.root_url = ""

    # lifecycle ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.root_url + self.prefix

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.root_url = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self.base_url

    def stop(self) -> None:
        for hold in self._holds:
            hold.release()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ProtocolServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # faults and observation -----------------------------------------------------------
    def fail(self, pattern: str, status: int = 500, *, times: int = 1, retry_after: float | str | None = None,
             body: Any = None) -> None:
        """Answer the next ``times`` requests matching ``pattern`` with ``status``."""
        response = json_response(body if body is not None else {"error": {"code": "injected", "message":
                                                                           f"injected HTTP {status}"}}, status)
        if retry_after is not None:
            response.headers["Retry-After"] = str(retry_after)
        with self._lock:
            self._faults.append(_Fault(re.compile(pattern), response, times))

    def hold(self, pattern: str, after: int = 0) -> Hold:
        hold = Hold(pattern, after)
        with self._lock:
            self._holds.append(hold)
        return hold

    def seen(self, pattern: str = "") -> list[Request]:
        regex = re.compile(pattern)
        with self._lock:
            return [r for r in self.requests if regex.search(r.target)]

    def url(self, path: str) -> str:
        return self.root_url + path

    def route(self, request: Request) -> Response:
        raise NotImplementedError

    # internals ------------------------------------------------------------------------
    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        request = Request(handler.command, parts.path, dict(parse_qsl(parts.query, keep_blank_values=True)),
                          {k.lower(): v for k, v in handler.headers.items()})
        with self._lock:
            self.requests.append(request)
            holds = [h for h in self._holds if h.pattern.search(request.target)]
            fault = next((f for f in self._faults if f.times > 0 and f.pattern.search(request.target)), None)
            if fault:
                fault.times -= 1
        for hold in holds:
            hold._enter()
        try:
            response = fault.response if fault else self.route(request)
        except Exception as exc:  # noqa: BLE001 - a bug in a route answers 500, like a real server
            response = json_response({"error": {"code": "serverError", "message": repr(exc)}}, 500)
        handler.send_response(response.status)
        for name, value in {"Content-Length": str(len(response.body)), **response.headers}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(response.body)


# --------------------------------------------------------------------------- Microsoft Graph


@dataclass
class DriveItem:
    id: str
    name: str
    parent_id: str | None
    is_folder: bool
    content: bytes = b""
    version: int = 1
    seq: int = 0
    deleted: bool = False
    modified: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class GraphServer(ProtocolServer):
    """One drive. Each change gets a sequence number; a delta token is the number it was issued at."""

    prefix = "/v1.0"

    def __init__(self, drive_id: str = "drive-demo", *, token: str | None = None, page_size: int = 3) -> None:
        super().__init__()
        self.drive_id, self.token, self.page_size = drive_id, token, page_size
        # the scheme://host:port of the links it sends (None: its own), so a test can aim them elsewhere
        self.next_link_root: str | None = None
        self.delta_link_root: str | None = None
        self.download_root: str | None = None
        self._seq = 0
        self._expired_before = 0
        self._items: dict[str, DriveItem] = {"root": DriveItem("root", "root", None, True, seq=self._next())}

    # the dataset ----------------------------------------------------------------------
    def put_file(self, path: str, content: bytes) -> str:
        """Create or update the file at ``path`` (folders are created as needed); returns its item id."""
        with self._lock:
            *folders, name = [p for p in path.split("/") if p]
            parent = "root"
            for folder in folders:
                parent = self._child(parent, folder) or self._new(folder, parent, True).id
            item = self._child(parent, name)
            if item is None:
                return self._new(name, parent, False, content).id
            item = self._items[item]
            item.content, item.version, item.seq = content, item.version + 1, self._next()
            item.modified = datetime.now(timezone.utc)
            return item.id

    def delete(self, path: str) -> str:
        """Delete a file: the next delta reports it with a ``deleted`` facet."""
        with self._lock:
            item = self._items[self._find(path)]
            item.deleted, item.seq = True, self._next()
            return item.id

    def forget(self, path: str) -> str:
        """Remove a file without a trace in the delta feed: only a full listing notices it is gone."""
        with self._lock:
            return self._items.pop(self._find(path)).id

    def item_id(self, path: str) -> str:
        with self._lock:
            return self._find(path)

    def expire_delta_links(self) -> None:
        """Delta links issued until now answer 410 Gone (resyncRequired)."""
        with self._lock:
            self._expired_before = self._next()

    # the protocol -----------------------------------------------------------------------
    def route(self, request: Request) -> Response:
        path = request.path.removeprefix(self.prefix)
        if m := re.fullmatch(r"/download/([^/]+)", path):  # the pre-authenticated URL: no token needed
            return self._download(m.group(1), request.query.get("sig"))
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return _graph_error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
        m = re.fullmatch(r"/drives/([^/]+)(/.*)", path)
        if not m or m.group(1) != self.drive_id:
            return _graph_error(404, "itemNotFound", "The resource could not be found.")
        if m.group(2) == "/root/delta":
            return self._delta(request.query.get("token"))
        if c := re.fullmatch(r"/items/([^/]+)/content", m.group(2)):
            with self._lock:
                item = self._items.get(c.group(1))
            if item is None or item.deleted or item.is_folder:
                return _graph_error(404, "itemNotFound", "The resource could not be found.")
            download = f"{self.download_root or self.root_url}{self.prefix}/download/{item.id}?sig=v{item.version}"
            return Response(302, headers={"Location": download})
        return _graph_error(400, "invalidRequest", f"Unsupported request {path}")

    def _delta(self, token: str | None) -> Response:
        with self._lock:
            try:
                since, snapshot, offset = _parse_token(token, self._seq)
            except ValueError:
                return _graph_error(400, "invalidRequest", "Invalid delta token.")
            issued = snapshot if token and "." in token else since  # the sequence number it was issued at
            if token and issued < self._expired_before:
                return _graph_error(410, "resyncRequired", "Resync required. Replace any local items with the "
                                    "server's version (including deletes) if you're sure that the service was up "
                                    "to date with your local changes when you last sync'd.")
            changed = sorted((i for i in self._items.values()
                              if since < i.seq <= snapshot and (since > 0 or not i.deleted)), key=lambda i: i.seq)
            page = changed[offset:offset + self.page_size]
            body: dict[str, Any] = {"@odata.context": self.url(f"{self.prefix}/$metadata#Collection(driveItem)"),
                                    "value": [self._json(i) for i in page]}
            path = f"{self.prefix}/drives/{self.drive_id}/root/delta"
            if offset + self.page_size < len(changed):
                root = self.next_link_root or self.root_url
                body["@odata.nextLink"] = f"{root}{path}?token={since}.{snapshot}.{offset + self.page_size}"
            else:
                body["@odata.deltaLink"] = f"{self.delta_link_root or self.root_url}{path}?token={snapshot}"
            return json_response(body)

    def _download(self, item_id: str, sig: str | None) -> Response:
        with self._lock:
            item = self._items.get(item_id)
        if item is None or item.deleted or sig != f"v{item.version}":
            return Response(404, b"Not found")
        content_type = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
        return Response(200, item.content, {"Content-Type": content_type})

    def _json(self, item: DriveItem) -> dict[str, Any]:
        data: dict[str, Any] = {"id": item.id, "parentReference": {"driveId": self.drive_id, "id": item.parent_id}}
        if item.deleted:
            return data | {"deleted": {"state": "deleted"}}
        data |= {"name": item.name, "eTag": f'"{{{item.id}}},{item.version}"',
                 "cTag": f'"c:{{{item.id}}},{item.version}"',
                 "lastModifiedDateTime": item.modified.strftime("%Y-%m-%dT%H:%M:%SZ"), "size": len(item.content)}
        if item.id == "root":
            return data | {"root": {}, "folder": {"childCount": 0}, "parentReference": {"driveId": self.drive_id}}
        if item.is_folder:
            return data | {"folder": {"childCount": sum(1 for i in self._items.values() if i.parent_id == item.id)}}
        return data | {"file": {"mimeType": mimetypes.guess_type(item.name)[0] or "application/octet-stream"}}

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _new(self, name: str, parent: str, is_folder: bool, content: bytes = b"") -> DriveItem:
        seq = self._next()
        item = DriveItem(f"01ITEM{seq:04d}", name, parent, is_folder, content, seq=seq)
        self._items[item.id] = item
        return item

    def _child(self, parent: str, name: str) -> str | None:
        return next((i.id for i in self._items.values()
                     if i.parent_id == parent and i.name == name and not i.deleted), None)

    def _find(self, path: str) -> str:
        item = "root"
        for name in [p for p in path.split("/") if p]:
            found = self._child(item, name)
            if found is None:
                raise KeyError(f"no item at {path}")
            item = found
        return item


def _parse_token(token: str | None, current: int) -> tuple[int, int, int]:
    """(changes after, changes up to, offset): a deltaLink token is one number, a nextLink token three."""
    if not token:
        return 0, current, 0
    parts = [int(p) for p in token.split(".")]
    if len(parts) == 1:
        return parts[0], current, 0
    since, snapshot, offset = parts
    return since, snapshot, offset


def _graph_error(status: int, code: str, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status)


# --------------------------------------------------------------------------- SAM.gov


class SamServer(ProtocolServer):
    """``/opportunities/v2/search`` and attachment downloads under ``/api/prod/opps/v3/...``."""

    def __init__(self, *, api_key: str | None = None, max_limit: int = 1000) -> None:
        super().__init__()
        self.api_key, self.max_limit = api_key, max_limit
        self.attachment_root: str | None = None  # the scheme://host:port of attachment links (None: its own)
        self.opportunities: dict[str, dict[str, Any]] = {}
        self.files: dict[str, tuple[str, bytes]] = {}

    def add_opportunity(self, notice_id: str, title: str, *, posted: date | None = None, naics: str = "541512",
                        attachments: dict[str, bytes] | None = None, **fields: Any) -> dict[str, Any]:
        posted = posted or date.today()
        links = []
        for name, content in (attachments or {}).items():
            file_id = f"{notice_id}-{len(self.files) + 1:03d}"
            self.files[file_id] = (name, content)
            links.append(f"/api/prod/opps/v3/opportunities/resources/files/{file_id}/download?api_key=null")
        opportunity = {
            "noticeId": notice_id, "title": title, "solicitationNumber": f"SOL-{notice_id[:8].upper()}",
            "fullParentPathName": "GENERAL SERVICES ADMINISTRATION.FEDERAL ACQUISITION SERVICE",
            "postedDate": posted.isoformat(), "type": "Solicitation", "baseType": "Solicitation",
            "archiveType": "auto15", "responseDeadLine": (posted + timedelta(days=30)).isoformat() + "T17:00:00-04:00",
            "naicsCode": naics, "classificationCode": "D302", "active": "Yes",
            "uiLink": f"https://sam.gov/opp/{notice_id}/view", "resourceLinks": links or None, **fields,
        }
        with self._lock:
            self.opportunities[notice_id] = opportunity
        return opportunity

    def route(self, request: Request) -> Response:
        if refused := self._check_key(request.query.get("api_key")):
            return refused
        if request.path == "/opportunities/v2/search":
            return self._search(request.query)
        if m := re.fullmatch(r"/api/prod/opps/v3/opportunities/resources/files/([^/]+)/download", request.path):
            if m.group(1) not in self.files:
                return json_response({"errorCode": "404", "errorMessage": "Resource not found"}, 404)
            name, content = self.files[m.group(1)]
            return Response(200, content, {"Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
                                           "Content-Disposition": f'attachment; filename="{name}"'})
        return json_response({"errorCode": "404", "errorMessage": "Not found"}, 404)

    def _check_key(self, key: str | None) -> Response | None:
        if self.api_key is None or key == self.api_key:
            return None
        code, message = (("API_KEY_MISSING", "No api_key was supplied.") if not key or key == "null"
                         else ("API_KEY_INVALID", "An invalid api_key was supplied."))
        return json_response({"error": {"code": code, "message": f"{message} Get one at https://open.gsa.gov/api/"}},
                             403)

    def _search(self, q: dict[str, str]) -> Response:
        try:
            posted_from = datetime.strptime(q["postedFrom"], "%m/%d/%Y").date()
            posted_to = datetime.strptime(q["postedTo"], "%m/%d/%Y").date()
            limit, offset = int(q.get("limit", 1)), int(q.get("offset", 0))
        except (KeyError, ValueError):
            return json_response({"errorCode": "400", "errorMessage": "PostedFrom and PostedTo are mandatory "
                                  "(MM/dd/yyyy); limit and offset are numbers"}, 400)
        if not timedelta(0) <= posted_to - posted_from <= timedelta(days=366):
            return json_response({"errorCode": "400", "errorMessage": "Date range must be 1 year(s) apart"}, 400)
        with self._lock:
            found = [o for o in self.opportunities.values()
                     if posted_from <= date.fromisoformat(o["postedDate"]) <= posted_to
                     and q.get("ncode", o["naicsCode"]) == o["naicsCode"]
                     and q.get("noticeid", o["noticeId"]) == o["noticeId"]
                     and q.get("title", "").lower() in o["title"].lower()]
        limit = min(limit, self.max_limit)
        root = self.attachment_root or self.root_url
        page = [{**o, "resourceLinks": [root + link for link in o["resourceLinks"]] if o["resourceLinks"] else None}
                for o in found[offset:offset + limit]]  # links are kept as paths: the port is known once started
        return json_response({"totalRecords": len(found), "limit": limit, "offset": offset,
                              "opportunitiesData": page,
                              "links": [{"rel": "self", "href": self.url("/opportunities/v2/search")}]})


# --------------------------------------------------------------------------- forecasts


class ForecastServer(ProtocolServer):
    """``/api/forecasts?page=N``: ``{"count", "next", "previous", "results"}``, pages of ``page_size``."""

    def __init__(self, records: list[dict[str, Any]] | None = None, *, page_size: int = 2) -> None:
        super().__init__()
        self.records: list[Any] = list(records or [])
        self.page_size = page_size
        self.next_link_root: str | None = None  # the scheme://host:port of its next links (None: its own)

    def route(self, request: Request) -> Response:
        if request.path != "/api/forecasts":
            return json_response({"detail": "Not found."}, 404)
        try:
            page = int(request.query.get("page", 1))
        except ValueError:
            return json_response({"detail": "Invalid page."}, 404)
        with self._lock:
            records = list(self.records)
        pages = max(1, -(-len(records) // self.page_size))
        if not 1 <= page <= pages:
            return json_response({"detail": "Invalid page."}, 404)
        extra = {k: v for k, v in request.query.items() if k != "page"}

        def link(n: int) -> str | None:
            root = self.next_link_root or self.root_url
            return f"{root}/api/forecasts?{urlencode({**extra, 'page': n})}" if 1 <= n <= pages else None

        start = (page - 1) * self.page_size
        return json_response({"count": len(records), "next": link(page + 1), "previous": link(page - 1),
                              "results": records[start:start + self.page_size]})


# --------------------------------------------------------------------------- an attacker


class Listener(ProtocolServer):
    """Any path, any query: the request is recorded and answered with ``response`` (200, a few bytes)."""

    def __init__(self, response: Response | None = None) -> None:
        super().__init__()
        self.response = response or Response(200, b"listener content\n", {"Content-Type": "text/plain"})

    def route(self, request: Request) -> Response:
        return self.response


# --------------------------------------------------------------------------- sample data


def sample_graph() -> GraphServer:
    server = GraphServer("drive-demo")
    server.put_file("/Welcome.md", b"# Welcome\n\nThis drive is served by the local Microsoft Graph stand-in.\n")
    server.put_file("/Reports/q1-summary.txt", b"Quarter one: revenue up, costs flat.\n")
    server.put_file("/Reports/contacts.csv", b"name,email\nAda,ada@example.com\nGrace,grace@example.com\n")
    server.put_file("/Policies/travel.html", b"<html><body><h1>Travel</h1><p>Book economy.</p></body></html>")
    return server


def sample_sam() -> SamServer:
    server = SamServer()
    server.add_opportunity("demo0001", "Cloud hosting services", attachments={
        "statement-of-work.txt": b"The contractor shall provide cloud hosting.\n",
        "pricing.csv": b"item,price\nhosting,100\n"})
    server.add_opportunity("demo0002", "Help desk support", naics="541513",
                           attachments={"requirements.md": b"# Requirements\n\n24x7 support.\n"})
    server.add_opportunity("demo0003", "Data analytics platform")
    return server


def sample_forecasts() -> ForecastServer:
    return ForecastServer([
        {"id": f"FC-{n:03d}", "title": title, "agency": agency, "naics": naics, "fiscal_year": 2026,
         "estimated_value": value}
        for n, (title, agency, naics, value) in enumerate([
            ("Network modernization", "GSA", "541512", 2_500_000),
            ("Records digitization", "NARA", "518210", 900_000),
            ("Cybersecurity assessment", "DHS", "541519", 1_200_000),
            ("Facilities maintenance", "VA", "561210", 400_000),
            ("Training services", "DOL", "611430", 150_000),
        ], 1)
    ])


class SiteServer:
    """A small website for the scrape samples: linked pages, a robots.txt that keeps out /private/."""

    PAGES = {
        "/": ("Curatore demo site", "<p>Welcome. Read the <a href='/guide/'>guide</a>, the "
              "<a href='/news/'>news</a> or <a href='https://example.org/'>elsewhere</a>.</p>"),
        "/guide/": ("Guide", "<p>Jobs run in queues. See <a href='/guide/queues'>queues</a> and "
                    "<a href='/private/notes'>private notes</a>.</p>"),
        "/guide/queues": ("Queues", "<p>Each queue has a concurrency limit and runs by priority.</p>"),
        "/news/": ("News", "<p>Version 1 ships live progress. <a href='/'>Home</a>.</p>"),
        "/private/notes": ("Private", "<p>Robots must not read this.</p>"),
    }

    def __init__(self) -> None:
        self._httpd: ThreadingHTTPServer | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        pages = self.PAGES

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = urlsplit(self.path).path
                if path == "/robots.txt":
                    body, kind, status = b"User-agent: *\nDisallow: /private/\n", "text/plain", 200
                elif path in pages:
                    title, html = pages[path]
                    body = f"<html><head><title>{title}</title></head><body><h1>{title}</h1>{html}</body></html>"
                    body, kind, status = body.encode(), "text/html; charset=utf-8", 200
                else:
                    body, kind, status = b"not found", "text/plain", 404
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return f"http://{host}:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


DEMO_SERVERS = ("graph", "sam", "forecasts", "site")  # their ports: the base port, +1, +2, +3


# The connections the sample jobs name, by kind: (name, the demo server it points at).
DEMO_CONNECTIONS = {"sharepoint": ("demo-sharepoint", "graph"), "sam": ("demo-sam", "sam"),
                    "forecast": ("demo-forecasts", "forecasts")}


def demo_urls(base_port: int) -> dict[str, str]:
    urls = {name: f"http://127.0.0.1:{base_port + i}" for i, name in enumerate(DEMO_SERVERS)}
    urls["graph"] += GraphServer.prefix
    return urls


def demo_environment(base_port: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables that point the samples at the demo servers from ``base_port`` up: the port, and the demo
    connections added to the ``CURATORE_CONNECTIONS`` already in ``environ`` (an operator's entry of the same
    name wins). They hold no credential and are open to every organization: for a development machine only."""
    urls = demo_urls(base_port)
    demo = {name: {"kind": kind, "base_url": urls[server], "organizations": ["*"]}
            for kind, (name, server) in DEMO_CONNECTIONS.items()}
    configured = json.loads(environ.get("CURATORE_CONNECTIONS") or "{}")
    return {"CURATORE_DEMO_SERVERS_PORT": str(base_port), "CURATORE_CONNECTIONS": json.dumps({**demo, **configured})}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Local stand-ins of Microsoft Graph, SAM.gov, a forecast API "
                                                 "and a small website, with sample data.")
    parser.add_argument("--port", type=int, default=0, help="first port (graph; sam, forecasts, site follow); "
                                                            "0 picks free ports")
    args = parser.parse_args()
    servers = {"graph": sample_graph(), "sam": sample_sam(), "forecasts": sample_forecasts(), "site": SiteServer()}
    for i, (label, server) in enumerate(servers.items()):
        print(f"{label:10} {server.start(port=args.port + i if args.port else 0)}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
