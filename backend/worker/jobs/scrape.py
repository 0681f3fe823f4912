"""scrape: a same-site crawl from a start URL, breadth first, within depth and page limits.

Crawling fetches pages (robots.txt respected unless the config says otherwise), keeps each HTML page
once per URL as an asset of the run's collection and follows its ``<a href>`` links on the same scheme
and host. Extracting then turns each stored page into text and puts it in the search index.
Every fetch goes through :class:`HttpClient`: retries, Retry-After, the private-address guard and a
byte limit (a page over 5 MiB is skipped without being read).
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import uuid
from collections import deque
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit, urlunsplit
from urllib.robotparser import RobotFileParser

from sqlalchemy import select, update

from backend.connectors.common import load_state, save_state
from backend.connectors.http import FetchFailed, HttpClient, ResponseTooLarge, check_address, mib
from backend.db.engine import in_transaction
from backend.db.models import Asset
from backend.db.types import utcnow
from backend.errors import CuratoreError, UnsupportedFile
from backend.extract.formats import extract
from backend.jobtypes.configs import ScrapeConfig
from backend.search import index_asset, unindex_asset
from backend.storage import assets
from backend.worker.base import JobContext

USER_AGENT = "CuratoreBot/1.0"
HTML_TYPES = ("text/html", "application/xhtml+xml")
MAX_PAGE_BYTES = 5 * 1024 * 1024  # a larger page is not read: the fetch stops at this many bytes
MAX_ROBOTS_BYTES = 512 * 1024  # what the large crawlers read of a robots.txt
DEFAULT_PORTS = {"http": 80, "https": 443}


# --------------------------------------------------------------------------- URLs and links


def normalize(url: str) -> str | None:
    """Absolute http(s) URL without fragment, lowercase scheme and host, no default port; None otherwise."""
    url = urldefrag(url.strip())[0]
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname.lower()
    netloc = f"[{host}]" if ":" in host else host
    if port and port != DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def site_of(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class _Links(HTMLParser):
    """The ``href`` of every ``<a>`` (and ``<base href>``) of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.hrefs: list[str] = []
        self.base: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if not href:
            return
        if tag == "a":
            self.hrefs.append(href)
        elif tag == "base" and self.base is None:
            self.base = href


def links_of(page_url: str, html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    parser.close()
    base = urljoin(page_url, parser.base) if parser.base else page_url
    found = (normalize(urljoin(base, href)) for href in parser.hrefs)
    return list(dict.fromkeys(u for u in found if u))


def filename_for(url: str) -> str:
    """``/docs/intro`` → ``docs_intro.html``; ``/`` → ``index.html``; always an .html name (it is HTML)."""
    path = unquote(urlsplit(url).path)
    if path.endswith("/"):
        path += "index"
    stem = "_".join(p for p in posixpath.normpath(path).split("/") if p not in ("", ".", ".."))
    stem = re.sub(r"\.x?html?$", "", re.sub(r"[^\w.\-]+", "-", stem), flags=re.I).strip(".-_") or "index"
    return stem[:200] + ".html"


# --------------------------------------------------------------------------- the crawl


class CrawlRefused(CuratoreError):
    """The site's robots.txt does not allow this crawl."""

    code = "crawl_refused"


CHECKPOINT = "scrape-checkpoint"  # connector state per run: what a redelivery of the run continues from


class Crawl:
    def __init__(self, ctx: JobContext, config: ScrapeConfig) -> None:
        self.ctx, self.config = ctx, config
        self.start = normalize(str(config.start_url)) or str(config.start_url)
        self.site = site_of(self.start)
        self.collection = config.collection_id or f"scrape-{ctx.run_id}"
        self.client = HttpClient(headers={"User-Agent": USER_AGENT}, timeout=20.0, on_retry=self._on_retry,
                                 before_send=getattr(ctx, "ensure_held", None))  # no request after losing the run
        self.robots: RobotFileParser | None = None
        self.queue: deque[tuple[str, int]] = deque([(self.start, 0)])
        self.seen = {self.start}
        self.off_site: set[str] = set()
        self.stored: list[tuple[uuid.UUID, str]] = []  # (asset id, url)
        self.skipped = {"robots": 0, "off_site": 0, "non_html": 0, "too_large": 0}
        self.errors: list[dict[str, Any]] = []
        self.fetched = self.unchanged = self.redirects = 0
        self.crawled = False  # the crawl is done; what is left is extraction
        self._current = ""

    # checkpoint: a run handed back or redelivered continues its crawl -----------------------------------
    def restore(self) -> bool:
        """Continue from this run's checkpoint, if an earlier execution of it left one (a hand-back, a worker
        lost): the pages it kept are not fetched again."""
        state = load_state(self.ctx.organization_id, CHECKPOINT, str(self.ctx.run_id))
        if not state:
            return False
        self.queue = deque((url, depth) for url, depth in state["queue"])
        self.seen, self.off_site = set(state["seen"]), set(state["off_site"])
        self.stored = [(uuid.UUID(asset_id), url) for asset_id, url in state["stored"]]
        self.skipped, self.errors = dict(state["skipped"]), list(state["errors"])
        self.fetched, self.unchanged, self.redirects = state["fetched"], state["unchanged"], state["redirects"]
        self.crawled = bool(state.get("crawled"))
        self.ctx.info(f"Continuing from the checkpoint of an earlier delivery: {len(self.stored)} pages kept, "
                      f"{len(self.queue)} queued" + ("; the crawl was done" if self.crawled else ""), "crawl_resumed",
                      pages=len(self.stored), queued=len(self.queue))
        return True

    def checkpoint(self) -> None:
        save_state(self.ctx.organization_id, CHECKPOINT, str(self.ctx.run_id), {
            "queue": list(self.queue), "seen": sorted(self.seen), "off_site": sorted(self.off_site),
            "stored": [(str(asset_id), url) for asset_id, url in self.stored], "skipped": self.skipped,
            "errors": self.errors[-50:], "fetched": self.fetched, "unchanged": self.unchanged,
            "redirects": self.redirects, "crawled": self.crawled})

    def forget(self) -> None:
        save_state(self.ctx.organization_id, CHECKPOINT, str(self.ctx.run_id), {})

    def _on_retry(self, reason: str, attempt: int, delay: float) -> None:
        self.ctx.warn(f"{reason} from {self._current}; attempt {attempt + 1} in {delay:.1f} s", "retry",
                      url=self._current, attempt=attempt, delay=delay)

    # robots.txt ------------------------------------------------------------------
    def load_robots(self) -> None:
        scheme, netloc = self.site
        url = f"{scheme}://{netloc}/robots.txt"
        self.robots = RobotFileParser(url)
        self._current = url
        try:
            response = self.client.get(url, max_bytes=MAX_ROBOTS_BYTES)
        except FetchFailed as exc:
            status = exc.details.get("status")
            if isinstance(status, int) and 400 <= status < 500 and status not in (401, 403):
                self.robots.allow_all = True  # no robots.txt: everything is allowed
                self.ctx.info(f"No robots.txt at {url} (HTTP {status}); every page is allowed", "robots")
                return
            self.robots.disallow_all = True  # unreachable or forbidden: crawl nothing, as robots.txt asks
            self.ctx.warn(f"robots.txt at {url} could not be read, so no page may be crawled: {exc.message}",
                          "robots")
            return
        if response.status_code != 200:
            self.robots.allow_all = True
            self.ctx.info(f"robots.txt at {url} answered HTTP {response.status_code}; every page is allowed", "robots")
            return
        self.robots.parse(response.text.splitlines())
        self.ctx.info(f"Read robots.txt at {url}", "robots")

    def allowed(self, url: str) -> bool:
        return self.robots is None or self.robots.can_fetch(USER_AGENT, url)

    # crawling --------------------------------------------------------------------
    def crawl(self) -> None:
        ctx, limit = self.ctx, self.config.max_pages
        ctx.progress(0, 1, phase="crawling", item=self.start, unit="pages")
        while self.queue and len(self.stored) < limit:
            ctx.check_cancelled()
            url, depth = self.queue.popleft()
            if not self.allowed(url):
                if url == self.start:
                    raise CrawlRefused(f"robots.txt of {self.site[1]} does not allow crawling the start URL {url}.")
                self.skipped["robots"] += 1
                ctx.info(f"robots.txt disallows {url}", "skipped", url=url, reason="robots")
                continue
            self.visit(url, depth)
            self.checkpoint()  # before the next check_cancelled(): a hand-back there loses no page
            total = min(limit, len(self.stored) + len(self.queue))
            ctx.progress(len(self.stored), max(total, 1), phase="crawling", item=url)

    def visit(self, url: str, depth: int) -> None:
        self._current = url
        try:
            response = self.client.get(url, max_bytes=MAX_PAGE_BYTES)
        except ResponseTooLarge:
            self.skipped["too_large"] += 1
            self.ctx.warn(f"{url} is larger than {mib(MAX_PAGE_BYTES)}; larger pages are not read or kept", "skipped",
                          url=url, reason="too_large")
            return
        except FetchFailed as exc:
            if url == self.start:
                raise FetchFailed(f"The start URL {url} could not be fetched: {exc.message}") from None
            self.errors.append({"url": url, "error": exc.message[:300]})
            self.ctx.warn(f"Could not fetch {url}: {exc.message[:300]}", "page_failed", url=url,
                          status=exc.details.get("status"))
            return
        self.fetched += 1
        if hasattr(self.ctx, "ensure_held"):
            self.ctx.ensure_held()  # a process that froze past its lease while fetching keeps nothing of it
        if response.is_redirect and response.headers.get("Location"):
            self.redirects += 1
            self.discover(url, [response.headers["Location"]], depth - 1)  # a redirect is not a step deeper
            return
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in HTML_TYPES:
            self.skipped["non_html"] += 1
            self.ctx.info(f"{url} is {content_type or 'of no declared type'}, not HTML; not kept", "skipped",
                          url=url, reason="non_html")
            return
        self.store(url, response.content)
        if depth < self.config.max_depth:
            self.discover(url, links_of(url, response.text), depth)

    def discover(self, page_url: str, hrefs: list[str], depth: int) -> None:
        for href in hrefs:
            link = normalize(urljoin(page_url, href))
            if link is None or link in self.seen:
                continue
            if site_of(link) != self.site:
                if link not in self.off_site:
                    self.off_site.add(link)
                    self.skipped["off_site"] += 1
                continue
            self.seen.add(link)
            self.queue.append((link, depth + 1))

    def store(self, url: str, body: bytes) -> None:
        """Keep the page once per URL in the collection: an unchanged page keeps its asset, a changed one
        replaces it."""
        org = self.ctx.organization_id
        existing = in_transaction(lambda s: s.execute(
            select(Asset).where(Asset.organization_id == org, Asset.collection_id == self.collection,
                                Asset.external_id == url[:500], Asset.deleted_at.is_(None))
        ).scalars().first())
        if existing is not None and existing.sha256 == hashlib.sha256(body).hexdigest():
            self.unchanged += 1
            self.stored.append((existing.id, url))
            return
        asset = assets.store_bytes(org, filename_for(url), body, source=url)

        def tag(s: Any) -> None:
            s.execute(update(Asset).where(Asset.id == asset.id)
                      .values(collection_id=self.collection, external_id=url[:500]))
            if existing is not None:
                s.execute(update(Asset).where(Asset.id == existing.id).values(deleted_at=utcnow()))
                unindex_asset(s, existing.id)

        in_transaction(tag)
        self.stored.append((asset.id, url))

    # extracting ------------------------------------------------------------------
    def extract_all(self) -> int:
        ctx, total, done = self.ctx, len(self.stored), 0
        ctx.progress(0, total, phase="extracting", unit="pages")
        for n, (asset_id, url) in enumerate(self.stored, 1):
            ctx.check_cancelled()
            asset = ctx.asset(asset_id)
            try:
                result = extract(asset.filename, assets.read_bytes(asset))
            except UnsupportedFile as exc:
                assets.save_extraction(asset.id, None, {"error": exc.message, "url": url}, "failed")
                self.errors.append({"url": url, "error": exc.message})
                ctx.warn(f"No text from {url}: {exc.message}", "page_failed", url=url)
            else:
                meta = {"format": result.format, "url": url, **result.meta}
                assets.save_extraction(asset.id, result.text, meta, "completed")
                title = result.meta.get("title") or ""
                index_asset(None, asset.id, asset.organization_id, asset.filename, f"{title}\n{url}\n{result.text}")
                done += 1
            ctx.progress(n, total, phase="extracting", item=url)
        return done

    def results(self, extracted: int) -> dict[str, Any]:
        return {
            "start_url": self.start,
            "collection_id": self.collection,
            "pages_stored": len(self.stored),
            "pages_unchanged": self.unchanged,
            "pages_extracted": extracted,
            "fetched": self.fetched,
            "redirects": self.redirects,
            "skipped": dict(self.skipped),
            "not_crawled": len(self.queue),  # still queued when the page limit was reached
            "errors": len(self.errors),
            "failed_pages": self.errors[:20],
        }


def run(ctx: JobContext, config: ScrapeConfig) -> dict[str, Any]:
    crawl = Crawl(ctx, config)
    check_address(crawl.start)  # a refused start URL fails the run with the guard's own words
    ctx.info(f"Crawling {crawl.start} (depth {config.max_depth}, at most {config.max_pages} pages) "
             f"into collection {crawl.collection}", "crawl_started", collection_id=crawl.collection)
    crawl.restore()
    if not crawl.crawled:
        with crawl.client:
            if config.respect_robots:
                crawl.load_robots()
            crawl.crawl()
        crawl.crawled = True
        crawl.checkpoint()
        ctx.info(f"Crawled {len(crawl.stored)} pages; {sum(crawl.skipped.values())} skipped, "
                 f"{len(crawl.errors)} failed", "crawled", **crawl.skipped)
    extracted = crawl.extract_all()
    crawl.forget()
    return crawl.results(extracted)
