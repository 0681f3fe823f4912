"""Outbound HTTP for every connector and the scraper: httpx with timeouts, retries with backoff on
429/5xx and connection errors (honouring Retry-After), and a guard that refuses loopback, private and
link-local addresses unless ``CURATORE_ALLOW_PRIVATE_FETCH`` is set (SPEC 8.2)."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from backend.config import get_settings
from backend.errors import CuratoreError

RETRY_STATUSES = {429, 500, 502, 503, 504}


class FetchRefused(CuratoreError):
    """That address may not be fetched."""

    code = "fetch_refused"


class FetchFailed(CuratoreError):
    """The remote service did not answer successfully."""

    code = "fetch_failed"
    retryable = True


def check_address(url: str) -> None:
    """Refuse URLs whose host resolves to a loopback, private, link-local or otherwise internal address."""
    if get_settings().allow_private_fetch:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(f"Only http and https URLs can be fetched, not {url!r}.")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise FetchFailed(f"Cannot resolve {parts.hostname}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        # not is_global also covers shared address space (100.64.0.0/10, where some clouds keep their
        # metadata service) and the documentation ranges, which is_private does not.
        if (not address.is_global or address.is_private or address.is_loopback or address.is_link_local
                or address.is_reserved or address.is_multicast or address.is_unspecified):
            raise FetchRefused(
                f"Refusing to fetch {url}: {parts.hostname} is an internal address ({address}). "
                "Set CURATORE_ALLOW_PRIVATE_FETCH=true to allow it."
            )


def retry_after_seconds(response: httpx.Response, default: float) -> float:
    value = response.headers.get("Retry-After")
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return default


class HttpClient:
    """A small wrapper over ``httpx.Client`` used by all connectors."""

    def __init__(
        self,
        base_url: str = "",
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        on_retry: Callable[[str, int, float], None] | None = None,
    ) -> None:
        self.client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, follow_redirects=False)
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.on_retry = on_retry  # (reason, attempt, delay) -> None, e.g. a log line on the run

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        full = str(self.client.build_request(method, url).url)
        check_address(full)
        for attempt in range(1, self.max_attempts + 1):
            delay = min(self.backoff_seconds * 2 ** (attempt - 1), self.max_backoff_seconds)
            try:
                response = self.client.request(method, url, **kwargs)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if attempt == self.max_attempts:
                    raise FetchFailed(f"{method} {full} failed after {attempt} attempts: {exc}") from None
                self._wait(f"{type(exc).__name__}", attempt, delay)
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_attempts:
                wait = min(retry_after_seconds(response, delay), self.max_backoff_seconds)
                self._wait(f"HTTP {response.status_code}", attempt, wait)
                continue
            if response.is_error:
                error = FetchFailed(f"{method} {full} answered HTTP {response.status_code}: {response.text[:200]}",
                                    status=response.status_code, url=full, body=response.text[:2000])
                error.retryable = response.status_code in RETRY_STATUSES or response.status_code >= 500
                raise error
            return response
        raise AssertionError("unreachable")

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def _wait(self, reason: str, attempt: int, delay: float) -> None:
        if self.on_retry:
            self.on_retry(reason, attempt, delay)
        time.sleep(delay)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "HttpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
