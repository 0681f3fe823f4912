"""A synchronous HTTP client for an ASGI app, in-process (httpx's ASGITransport driven through an anyio portal).

Starlette's TestClient now warns that its httpx support is deprecated (and warnings are errors in this test
suite); this does the same job with the httpx the project already depends on.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import httpx
from anyio.from_thread import start_blocking_portal


class ApiClient:
    """``client.get("/api/v1/health")``; unexpected exceptions in the app propagate unless
    ``raise_app_exceptions=False`` (then they are the app's own 500 response)."""

    def __init__(self, app: Callable[..., Any], *, raise_app_exceptions: bool = True) -> None:
        self.app = app
        self._stack = ExitStack()
        self._portal = self._stack.enter_context(start_blocking_portal())
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        self._client = httpx.AsyncClient(transport=transport, base_url="http://testserver")

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(lambda: self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._portal.call(self._client.aclose)
        self._stack.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
