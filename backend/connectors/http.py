"""Outbound HTTP for every connector and the scraper: httpx with timeouts, retries with backoff on
429/5xx and connection errors (honouring Retry-After), a guard that refuses loopback, private and
link-local addresses unless ``CURATORE_ALLOW_PRIVATE_FETCH`` is set, and a byte limit on every
response body (SPEC 8.2).

The guard is enforced where the connection is made: :class:`PinnedBackend` resolves the host once,
refuses internal addresses and connects to the address it checked, so a DNS answer that changes
between the check and the connection (rebinding) cannot reach an internal service. TLS still sends
and verifies the host name. :func:`check_address` refuses earlier, before anything is sent, with the
same words.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpcore
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


class ResponseTooLarge(FetchFailed):
    """The response is larger than this fetch may read."""

    code = "response_too_large"
    retryable = False  # the same resource will be as large next time


def mib(size: int) -> str:
    """``5242880`` → ``5 MiB``: limits are set in MiB, so messages name them in MiB."""
    return f"{size / 2**20:.4g} MiB"


def is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # not is_global also covers shared address space (100.64.0.0/10, where some clouds keep their
    # metadata service) and the documentation ranges, which is_private does not.
    return (not address.is_global or address.is_private or address.is_loopback or address.is_link_local
            or address.is_reserved or address.is_multicast or address.is_unspecified)


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order (one DNS answer)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def internal_among(addresses: list[str]) -> str | None:
    """The first internal address of ``addresses``, None when every one is public or private fetches
    are allowed."""
    if get_settings().allow_private_fetch:
        return None
    return next((a for a in addresses if is_internal(ipaddress.ip_address(a))), None)


def check_address(url: str) -> None:
    """Refuse URLs whose host resolves to a loopback, private, link-local or otherwise internal address,
    before anything is sent (the connection itself is guarded again by :class:`PinnedBackend`)."""
    if get_settings().allow_private_fetch:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchRefused(f"Only http and https URLs can be fetched, not {url!r}.")
    try:
        addresses = resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchFailed(f"Cannot resolve {parts.hostname}: {exc}") from None
    if address := internal_among(addresses):
        raise FetchRefused(f"Refusing to fetch {url}: {parts.hostname} is an internal address ({address}). "
                           "Set CURATORE_ALLOW_PRIVATE_FETCH=true to allow it.")


class PinnedBackend(httpcore.SyncBackend):
    """httpcore's network backend with the address guard at connect time: the host is resolved once,
    every address checked, and the socket connected to a checked address, never to the name (which
    a second DNS answer could point elsewhere). httpcore still gives TLS the host name (SNI and
    certificate verification)."""

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        try:
            addresses = resolve(host, port)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"Cannot resolve {host}: {exc}") from None
        if address := internal_among(addresses):
            raise FetchRefused(f"Refusing to connect to {host}: it is an internal address ({address}). "
                               "Set CURATORE_ALLOW_PRIVATE_FETCH=true to allow it.", host=host)
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure


class PinnedTransport(httpx.HTTPTransport):
    """httpx's default transport (certificate verification, HTTP/1.1, connection pool) over
    :class:`PinnedBackend`, and never through a proxy: every connection goes to a checked address."""

    def __init__(self) -> None:
        # Not the parent's __init__: it would build its pool over httpcore's own backend.
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=PinnedBackend())


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


def read_bounded(response: httpx.Response, limit: int, what: str) -> None:
    """Read a streamed response's body, decompressed, stopping past ``limit`` bytes: a declared
    Content-Length over the limit is refused before anything is read, and an undeclared or false one
    once the bytes received pass it (at most one network chunk over)."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(response, limit, what, f"it declares {int(declared):,} bytes, so it was not read")
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise _too_large(response, limit, what, f"it was cut off after {size:,} bytes")
        chunks.append(chunk)
    # What Response.read() does once the stream is consumed; the body is complete and within the limit.
    response._content = b"".join(chunks)


def _too_large(response: httpx.Response, limit: int, what: str, how: str) -> ResponseTooLarge:
    return ResponseTooLarge(f"{what} is larger than {mib(limit)} (the limit for this fetch): {how}.",
                            status=response.status_code, url=str(response.request.url), limit=limit)


class HttpClient:
    """A small wrapper over ``httpx.Client`` used by all connectors and the scraper: every connection
    through :class:`PinnedTransport`, every body read within a byte limit."""

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
        before_send: Callable[[], None] | None = None,
    ) -> None:
        # No redirects followed here (callers follow them through ``request``, so each hop is checked)
        # and no proxy or .netrc from the environment (trust_env=False).
        self.client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, follow_redirects=False,
                                   transport=PinnedTransport(), trust_env=False)
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.on_retry = on_retry  # (reason, attempt, delay) -> None, e.g. a log line on the run
        # Called before every request goes out (each retry too); a run's client passes the job's ownership
        # check there (``JobContext.ensure_held``), so a process that lost its run sends nothing more.
        self.before_send = before_send

    def request(self, method: str, url: str, *, max_bytes: int | None = None, **kwargs: Any) -> httpx.Response:
        """Send with retries; the body is read (at most ``max_bytes``, else ``CURATORE_FETCH_MAX_BYTES``)
        before the response is returned, so ``.content``, ``.text`` and ``.json()`` work as usual."""
        full = str(self.client.build_request(method, url).url)
        check_address(full)
        limit = max_bytes or get_settings().fetch_max_bytes
        for attempt in range(1, self.max_attempts + 1):
            delay = min(self.backoff_seconds * 2 ** (attempt - 1), self.max_backoff_seconds)
            if self.before_send is not None:
                self.before_send()
            try:
                response = self._send(method, url, f"{method} {full}", limit, **kwargs)
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

    def _send(self, method: str, url: str, what: str, limit: int, **kwargs: Any) -> httpx.Response:
        response = self.client.send(self.client.build_request(method, url, **kwargs), stream=True)
        try:
            read_bounded(response, limit, what)
        finally:
            response.close()
        return response

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
