"""A real worker crawls a small local site (a stdlib HTTP server in this process): links, robots.txt,
off-site links, a 404, a PDF, a 500 and a 429 that pass on retry, depth and page limits, the private-address
guard, a cancel in the middle of the crawl, and 400 MB pages skipped unread within a bounded memory."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.db.states import RunStatus
from backend.queues.dispatch import submit_run
from backend.runs.queries import get_logs, get_run
from backend.runs.service import request_cancel
from backend.search import search
from tests.peak_memory import pool_peak_rss
from tests.support import wait_for, wait_terminal

pytestmark = pytest.mark.integration
ALLOW_PRIVATE = {"CURATORE_ALLOW_PRIVATE_FETCH": "true"}


def _page(title: str, body: str, *links: str) -> bytes:
    anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (f"<!doctype html><html><head><title>{title}</title></head>"
            f"<body><h1>{title}</h1><p>{body}</p><ul>{anchors}</ul></body></html>").encode()


PAGES = {
    "/": _page("Home", "Welcome to the test site.", "/about", "/docs/", "/private/secret", "http://elsewhere.example/",
               "/missing", "/report.pdf", "/flaky", "/busy", "#top", "mailto:someone@example.com", "/about#team"),
    "/about": _page("About", "About the team.", "/about/team", "/"),
    "/about/team": _page("Team", "The team page, two links deep.", "/about/team/deep"),
    "/about/team/deep": _page("Deep", "Three links deep: beyond max_depth 2."),
    "/docs/": _page("Docs", "Documentation index.", "intro", "../"),
    "/docs/intro": _page("Intro", "Photosynthesis explained for crawlers."),
    "/private/secret": _page("Secret", "robots.txt keeps crawlers out of here."),
    "/flaky": _page("Flaky", "Answered after one server error."),
    "/busy": _page("Busy", "Answered after one Too Many Requests."),
}
ROBOTS = b"User-agent: *\nDisallow: /private\n"


class Site:
    """The local site: pages, robots.txt, failures on cue, a request log and an optional gate."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, float]] = []
        self.counts: Counter[str] = Counter()
        self.gate = threading.Event()
        self.gated: set[str] = set()
        self.streamed: dict[str, tuple[int, bool]] = {}  # path → (size, whether Content-Length declares it)
        self.sent: Counter[str] = Counter()  # bytes of streamed pages the client accepted
        self.lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path
                with site.lock:
                    site.requests.append((path, time.monotonic()))
                    site.counts[path] += 1
                    n = site.counts[path]
                if path in site.gated:
                    site.gate.wait(30)
                if path in site.streamed:
                    return self._stream(path, *site.streamed[path])
                if path == "/robots.txt":
                    return self._send(200, "text/plain", ROBOTS)
                if path == "/flaky" and n == 1:
                    return self._send(500, "text/plain", b"try again")
                if path == "/busy" and n == 1:
                    return self._send(429, "text/plain", b"slow down", {"Retry-After": "1"})
                if path == "/report.pdf":
                    return self._send(200, "application/pdf", b"%PDF-1.4 not really")
                body = site.pages.get(path)
                if body is None:
                    return self._send(404, "text/plain", b"no such page")
                return self._send(200, "text/html; charset=utf-8", body)

            def _send(self, status: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _stream(self, path: str, size: int, declared: bool) -> None:
                """A page of ``size`` bytes generated as it is sent, 64 KiB at a time, until the client
                hangs up; without a Content-Length its end is the end of the connection (HTTP/1.0)."""
                chunk = b"<p>" + b"x" * (65536 - 8) + b"</p>\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                if declared:
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for _ in range(size // len(chunk)):
                        self.wfile.write(chunk)
                        with site.lock:
                            site.sent[path] += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.pages = dict(PAGES)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def paths(self) -> list[str]:
        with self.lock:
            return [path for path, _ in self.requests]


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    s.thread.start()
    yield s
    s.gate.set()
    s.server.shutdown()
    s.server.server_close()


def _scrape(org, site: Site, path: str = "/", timeout: float = 60, **config):  # type: ignore[no-untyped-def]
    run = submit_run("scrape", {"start_url": site.url + path, **config}, organization_id=org.id)
    return wait_terminal(run.id, timeout)


def _assets(collection: str) -> list[Asset]:
    return in_transaction(lambda s: list(s.execute(
        select(Asset).where(Asset.collection_id == collection, Asset.deleted_at.is_(None))).scalars()))


def test_crawl_stores_pages_respects_robots_and_retries(backend, org, site, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    done = _scrape(org, site, max_depth=2)
    assert RunStatus(done.status) is RunStatus.COMPLETED, done.error_message
    r = done.results_summary
    expected = {"/", "/about", "/docs/", "/flaky", "/busy", "/about/team", "/docs/intro"}
    assert r["pages_stored"] == len(expected) == r["pages_extracted"]
    assert r["skipped"] == {"robots": 1, "off_site": 1, "non_html": 1, "too_large": 0}
    assert r["errors"] == 1 and r["failed_pages"][0]["url"] == site.url + "/missing"
    assert "HTTP 404" in r["failed_pages"][0]["error"]
    assert r["collection_id"] == f"scrape-{done.id}"

    paths = site.paths()
    assert "/private/secret" not in paths and "/about/team/deep" not in paths  # robots.txt and max_depth
    assert paths[0] == "/robots.txt" and paths.count("/") == 1 and paths.count("/about") == 1
    assert site.counts["/flaky"] == 2 and site.counts["/busy"] == 2  # retried once each
    busy = [t for p, t in site.requests if p == "/busy"]
    assert busy[1] - busy[0] >= 0.95  # Retry-After: 1 was waited out

    stored = _assets(r["collection_id"])
    assert {a.external_id for a in stored} == {site.url + p for p in expected}
    assert all(a.source == a.external_id and a.extraction_status == "completed" for a in stored)
    assert {a.filename for a in stored} >= {"index.html", "about.html", "docs_index.html", "docs_intro.html"}
    intro = next(a for a in stored if a.external_id.endswith("/docs/intro"))
    assert "Photosynthesis explained" in intro.extracted_text and intro.extraction_meta["title"] == "Intro"
    assert [h.asset_id for h in search(org.id, "photosynthesis")] == [intro.id]

    logs = get_logs(done.id)
    retries = [e.message for e in logs if e.event_type == "retry"]
    assert any("HTTP 500" in m for m in retries) and any("HTTP 429" in m for m in retries)
    assert [e.context["phase"] for e in logs if e.event_type == "phase"] == ["crawling", "extracting"]
    assert done.progress["phase"] == "extracting" and done.progress["current"] == done.progress["total"] == 7


def test_limits_collection_reuse_robots_off_and_bad_start(backend, org, site, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    shallow = _scrape(org, site, max_depth=0)
    assert shallow.results_summary["pages_stored"] == 1 and shallow.results_summary["not_crawled"] == 0
    assert set(site.paths()) == {"/robots.txt", "/"}

    first = _scrape(org, site, max_pages=3, collection_id="handbook")
    r = first.results_summary
    assert (r["pages_stored"], r["pages_unchanged"], r["collection_id"]) == (3, 0, "handbook")
    assert r["not_crawled"] > 0
    ids = {a.external_id: a.id for a in _assets("handbook")}
    assert set(ids) == {site.url + p for p in ("/", "/about", "/docs/")}

    site.pages["/about"] = _page("About", "About the team, rewritten.", "/about/team")
    again = _scrape(org, site, max_pages=3, collection_id="handbook")
    assert (again.results_summary["pages_stored"], again.results_summary["pages_unchanged"]) == (3, 2)
    now = {a.external_id: a.id for a in _assets("handbook")}  # still one asset per URL; the changed page replaced
    assert set(now) == set(ids) and now[site.url + "/"] == ids[site.url + "/"]
    assert now[site.url + "/about"] != ids[site.url + "/about"]
    assert [h.asset_id for h in search(org.id, "rewritten")] == [now[site.url + "/about"]]

    unrestricted = _scrape(org, site, max_depth=1, respect_robots=False)
    assert unrestricted.results_summary["skipped"]["robots"] == 0
    assert site.counts["/private/secret"] == 1

    bad = _scrape(org, site, "/missing")
    assert RunStatus(bad.status) is RunStatus.FAILED
    assert bad.error_message.startswith(f"The start URL {site.url}/missing could not be fetched")
    assert "HTTP 404" in bad.error_message

    blocked = _scrape(org, site, "/private/secret")
    assert RunStatus(blocked.status) is RunStatus.FAILED and "does not allow crawling" in blocked.error_message


def test_private_address_refused_without_the_setting(backend, org, site, worker):
    done = _scrape(org, site)
    assert RunStatus(done.status) is RunStatus.FAILED
    assert done.error_message.startswith(f"Refusing to fetch {site.url}/: 127.0.0.1 is an internal address")
    assert site.paths() == []


def test_cancel_mid_crawl_stops_fetching(backend, org, site, start_worker):
    start_worker(extra_env=ALLOW_PRIVATE)
    site.gated.add("/docs/")  # the crawl reaches /docs/ after / and /about, then waits for the test
    run = submit_run("scrape", {"start_url": site.url + "/", "max_depth": 3}, organization_id=org.id)
    wait_for(lambda: "/docs/" in site.paths(), what="the crawl to reach the gated page")
    assert request_cancel(run.id, by="test") is RunStatus.CANCELLING
    seen = len(site.paths())
    site.gate.set()
    done = wait_terminal(run.id)
    assert RunStatus(done.status) is RunStatus.CANCELLED, done.error_message
    assert len(site.paths()) == seen and site.paths()[-1] == "/docs/"  # nothing fetched after the cancel
    assert get_run(run.id).progress["phase"] == "crawling"
    events = [e.event_type for e in get_logs(run.id)]
    assert "cancelled" in events and "complete" not in events


def test_huge_pages_are_skipped_unread_in_bounded_memory(backend, org, site, start_worker):
    worker = start_worker(extra_env=ALLOW_PRIVATE)  # a fresh worker: its pool's peak memory is this test's
    size = 400 * 10**6
    site.streamed = {"/huge": (size, False), "/declared": (size, True)}
    site.pages["/"] = _page("Home", "A site with two huge pages.", "/huge", "/declared", "/about")
    done = _scrape(org, site, max_depth=1)
    assert RunStatus(done.status) is RunStatus.COMPLETED, done.error_message
    r = done.results_summary
    assert r["skipped"]["too_large"] == 2 and r["errors"] == 0
    assert {a.external_id for a in _assets(r["collection_id"])} == {site.url + "/", site.url + "/about"}
    skipped = {e.context["url"]: e.message for e in get_logs(done.id) if e.context.get("reason") == "too_large"}
    assert set(skipped) == {site.url + "/huge", site.url + "/declared"}
    assert all("larger than 5 MiB" in message for message in skipped.values())

    # The crawler hung up after the limit: the server could hand over little more than 5 MiB and the
    # kernel's socket buffers, and nothing of the page whose Content-Length announced 400 MB.
    assert site.sent["/huge"] < 40 * 2**20, site.sent
    assert site.sent["/declared"] < 35 * 2**20, site.sent
    assert site.sent["/huge"] > 5 * 2**20  # it did stream past the limit before being cut off
    peak = pool_peak_rss(worker.proc.pid)
    assert peak < 200 * 2**20, f"the worker's pool peaked at {peak / 2**20:.0f} MiB"
