"""The one place where errors become JSON: ``{"error": {"code": ..., "message": ...}}`` with a stable code.

- The engine's :class:`~backend.errors.CuratoreError` keeps its own ``code`` and ``http_status``.
- A request that does not validate (path, query or body) is 422 ``invalid_request``, naming the field.
- Routing errors (unknown path, wrong method) keep their status, with a JSON body, for every ``/api`` path
  (:class:`ApiPaths`; ``GET /runs/bulk-cancel`` is a 405, not an invalid run id); a body over
  :data:`~backend.validation.MAX_BODY_BYTES` is 413 ``too_large`` before it is read or parsed, and one nested
  too deep for the JSON parser is 422, as any other invalid body.
- A message never carries a character that cannot be encoded (it may quote the input): see ``error_response``.
- Anything else is 500 ``internal_error``: logged with its traceback, which the client never sees.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import CuratoreError, UnknownRunType
from backend.validation import MAX_BODY_BYTES, MAX_DEPTH, escape, size_text

log = logging.getLogger("curatore.api")

# In the API, a request naming an unknown job type is a request that cannot be processed (the CLI's exit
# status does not depend on this).
STATUS_OVERRIDES: dict[type[CuratoreError], int] = {UnknownRunType: 422}

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 406: "not_acceptable", 409: "conflict", 413: "too_large",
              415: "unsupported_media_type", 422: "invalid_request", 429: "rate_limited"}


SOURCES = ("path", "query", "header", "body", "cookie")


class Unauthorized(CuratoreError):
    """Authentication required: send ``Authorization: Bearer <token>``."""

    code = "unauthorized"
    http_status = 401


class InvalidRequest(CuratoreError):
    """The request is not valid."""

    code = "invalid_request"
    http_status = 422


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error; NUL and lone surrogates in the message (a field name from the body, say) are written
    as ``\\uXXXX`` so that the response can always be encoded."""
    return JSONResponse({"error": {"code": code, "message": escape(message)}}, status_code=status, headers=headers)


def status_of(exc: CuratoreError) -> int:
    for cls, status in STATUS_OVERRIDES.items():
        if isinstance(exc, cls):
            return status
    return exc.http_status


def describe_validation(errors: list[Any]) -> str:
    """``Invalid request: limit (query): Input should be less than or equal to 200; ...``"""
    parts = []
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ())]
        msg = err.get("msg", "invalid")
        if err.get("type") == "json_invalid":
            parts.append(f"body: {msg}")
        elif len(loc) >= 2 and loc[0] in SOURCES:
            parts.append(f"{'.'.join(loc[1:])} ({loc[0]}): {msg}")
        else:
            parts.append(f"{'.'.join(loc) or 'request'}: {msg}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "Invalid request: " + "; ".join(parts) + more


class BodyTooLarge(StarletteHTTPException):
    """Raised while a body without a Content-Length is read past the limit: FastAPI re-raises an
    HTTPException from reading the body, so it reaches :func:`install`'s handler as a JSON 413."""

    def __init__(self, max_bytes: int = MAX_BODY_BYTES) -> None:
        super().__init__(413, f"The request body is larger than the limit of {size_text(max_bytes)}.")


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is refused with a JSON 413 before anything parses it, from
    its Content-Length when it has one, else as soon as the bytes read pass the limit.

    (FastAPI's own ``max_body_size`` answers in plain text, even over the app's JSON error.)"""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            response = error_response(413, "too_large", BodyTooLarge(self.max_bytes).detail)
            await response(scope, receive, send)
            return
        read = 0

        async def limited() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            if read > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited, send)


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(request: Request, *, others_only: bool = False) -> list[str]:
    """The methods some route of the app answers at this request's path (only other methods than the request's
    when ``others_only``): what a 405's ``Allow`` names. Each method is probed through the routes' own
    ``matches``, so included routers count as the app routes them; a Mount (the Reflex app behind the API)
    answers any path and method, so it does not count."""
    routes = [r for r in request.app.router.routes if not isinstance(r, Mount)]
    found = []
    for method in METHODS:
        if others_only and method in (request.method, "HEAD"):
            continue
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            found.append(method)
    return found


def method_not_allowed(request: Request, methods: list[str]) -> JSONResponse:
    return error_response(405, "method_not_allowed", f"{request.method} is not allowed here; use {', '.join(methods)}.",
                          {"Allow": ", ".join(methods)})


class ApiPaths:
    """ASGI middleware: a request for an ``/api`` path that no route of the app answers is a JSON 404, or a 405
    (with ``Allow``) when the path has routes for other methods, here; never passed on to the Reflex app mounted
    behind the API, whose answers are HTML or plain text. Routes are read per request (tests add some later)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/api" or path.startswith("/api/")):
            request = Request(scope)
            methods = allowed_methods(request)
            if request.method not in methods:
                response = (method_not_allowed(request, methods) if methods
                            else error_response(404, "not_found", f"No such API path: {path}"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install(app: FastAPI) -> None:
    @app.exception_handler(CuratoreError)
    async def curatore_error(request: Request, exc: CuratoreError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return error_response(status_of(exc), exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # GET /runs/bulk-cancel matched GET /runs/{run_id} and failed its path parameter; but the path is a route
        # of its own, for another method: a wrong method, not a wrong id.
        if any(e.get("loc", ("",))[0] == "path" for e in exc.errors()) and (
                others := allowed_methods(request, others_only=True)):
            return method_not_allowed(request, others)
        return error_response(422, "invalid_request", describe_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request refused."
        if exc.status_code == 400:  # FastAPI's own "error parsing the body" (not UTF-8, say): invalid like any other
            if isinstance(exc.__cause__, RecursionError):
                message = f"the JSON is nested too deep to read (a config may hold {MAX_DEPTH} levels)"
            return error_response(422, "invalid_request", f"Invalid request: body: {message}")
        return error_response(exc.status_code, HTTP_CODES.get(exc.status_code, "error"), message,
                              dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "An unexpected error occurred; it has been logged.")
