"""The web edges shared by the API and the Reflex app: security headers on every response, which browser
origins may open the websocket, and who may scrape ``/metrics``. Pure ASGI and stdlib: no reflex imports."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "same-origin",
}


class SecurityHeaders:
    """ASGI middleware: every HTTP response carries :data:`SECURITY_HEADERS` (no framing, no MIME sniffing, no
    full URL in the Referer sent to other sites), whoever produced it (the API, Reflex, the frontend files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lowercased, as a browser sends it in ``Origin``."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


def origin_allowed(request_origin: str | None, host: str | None, public_urls: list[str]) -> bool:
    """May a browser page at ``request_origin`` open the websocket? Only a configured public URL's origin or
    the server's own (the Host it was reached at: one-port deployments). No Origin at all is a non-browser
    client, which cross-site scripts cannot be."""
    if not request_origin:
        return True
    wanted = request_origin.strip().lower()
    if wanted in {origin(u) for u in public_urls}:
        return True
    return bool(host) and urlsplit(wanted).netloc == str(host).lower() and urlsplit(wanted).scheme in ("http", "https")


def metrics_allowed(headers: Headers, client: str | None, token: str | None, allow: list[str]) -> bool:
    """May this request read ``/metrics``? With a token set, a matching ``Authorization: Bearer`` (compared in
    constant time) from anywhere; otherwise, or without the header, a client address in ``allow`` (CIDRs)."""
    if token:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in allow)
