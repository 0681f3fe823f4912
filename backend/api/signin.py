"""Browser sign-in and sign-out: plain HTML form posts to the app's own port, answered with a 303 redirect.

``POST /auth/login`` (``email``, ``password``, ``next``, form-encoded) checks the password through
:func:`backend.auth.users.authenticate` (lockout included, with the client's address), starts a session and
sets it in an HttpOnly, SameSite=Strict, Path=/ cookie (Secure over HTTPS or when ``CURATORE_ENV=prod``), then
redirects to ``next`` if it is a path of this site (:func:`safe_next`). A refusal redirects back to
``/login?error=<code>`` (``invalid`` for a wrong email or password alike, ``locked`` with ``wait`` seconds,
``missing``); the page turns the code into words, so nothing an attacker puts in a link is shown.
``POST /auth/logout`` ends the session in the database and clears the cookie.

Both refuse a cross-site page (``Origin`` not one of ``CURATORE_PUBLIC_URLS`` or the server's own host): a
forged login would sign a victim into the attacker's account. The Reflex state reads the same cookie from the
websocket's handshake headers (:func:`session_secret`); the secret never reaches any page script.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from starlette.requests import cookie_parser

from backend import audit
from backend.api.edges import origin_allowed
from backend.api.errors import error_response
from backend.auth import lockout, users
from backend.config import get_settings

COOKIE = "curatore_session"
LOGIN_PATH = "/auth/login"
LOGOUT_PATH = "/auth/logout"
MAX_FORM_BYTES = 16 * 1024
MAX_FIELD = 1024  # an email is at most 320 characters; nobody types a longer password than this

router = APIRouter(include_in_schema=False)


def safe_next(target: str) -> str:
    """Where to go after signing in: ``target`` if it is a path of this site, else ``/``. Browsers read ``\\`` as
    ``/`` and drop tabs and newlines, so ``/\\evil.example`` or ``/%5Cevil.example`` would leave the site: refused,
    as is anything whose decoded form is not a plain absolute path (``//host``, ``/%2F…``, a scheme, control
    characters)."""
    decoded = target
    for _ in range(3):  # a doubly encoded %255C is still a backslash to someone
        decoded = unquote(decoded)
    if not target.startswith("/") or not decoded.startswith("/") or decoded.startswith("//"):
        return "/"
    if "\\" in decoded or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c.isspace() for c in decoded):
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


def session_secret(cookie_header: str | None) -> str:
    """The session secret in a ``Cookie`` header ('' without one), parsed as the endpoints parse it."""
    return cookie_parser(cookie_header or "").get(COOKIE, "") if cookie_header else ""


def _same_site_page(request: Request) -> bool:
    """Did a page of this site send the form? A browser always sends Origin with a POST (``null`` from a
    sandboxed or cross-site redirected form, which is refused); a client without one is no browser page."""
    if request.headers.get("sec-fetch-site", "") == "cross-site":
        return False
    return origin_allowed(request.headers.get("origin"), request.headers.get("host"), get_settings().public_urls)


def _base(request: Request) -> str:
    """Where the pages are: '' (this host) unless the form came from another allowed origin (the two-port
    ``--reload`` mode, whose frontend is on another port than this endpoint)."""
    page = request.headers.get("origin", "").lower()
    if page and page != "null" and urlsplit(page).netloc != request.headers.get("host", "").lower():
        return page
    return ""


def _to_login(request: Request, error: str, next_path: str, **extra: object) -> RedirectResponse:
    query = urlencode({"error": error, **{k: str(v) for k, v in extra.items()}, "next": next_path})
    return RedirectResponse(f"{_base(request)}/login?{query}", status_code=303)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or get_settings().env == "prod"


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded form's first value per field, or None if the body is no such form (or too large)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in fields.items() if v}


def _client(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    if not _same_site_page(request):
        return error_response(403, "forbidden", "Sign in from this site's own login page.")
    form = await _form(request)
    if form is None:
        return error_response(400, "bad_request", "Send the sign-in form (application/x-www-form-urlencoded, "
                                                  f"at most {MAX_FORM_BYTES // 1024} KiB).")
    next_path = safe_next(form.get("next", "/")[:2048])
    email, password = form.get("email", "").strip(), form.get("password", "")
    if not email or not password or len(email) > MAX_FIELD or len(password) > MAX_FIELD:
        return _to_login(request, "missing", next_path)
    try:
        user = await run_in_threadpool(users.authenticate, email, password, _client(request))
    except lockout.TooManySignIns as exc:
        return _to_login(request, "locked", next_path, wait=exc.seconds)
    if user is None:
        return _to_login(request, "invalid", next_path)
    old = session_secret(request.headers.get("cookie"))
    if old:  # a new sign-in on this browser ends the session it had (no fixation, no orphan)
        await run_in_threadpool(users.end_session, old)
    secret = await run_in_threadpool(users.start_session, user.id)
    await run_in_threadpool(audit.record, user.email, "login", address=_client(request))
    response = RedirectResponse(f"{_base(request)}{next_path}", status_code=303)
    response.set_cookie(COOKIE, secret, max_age=int(get_settings().session_hours * 3600), path="/", httponly=True,
                        samesite="strict", secure=_secure(request))
    return response


@router.post(LOGOUT_PATH)
async def logout(request: Request) -> Response:
    if not _same_site_page(request):
        return error_response(403, "forbidden", "Sign out from this site's own pages.")
    secret = session_secret(request.headers.get("cookie"))
    found = await run_in_threadpool(users.session_for, secret) if secret else None
    if secret and await run_in_threadpool(users.end_session, secret) and found is not None:
        await run_in_threadpool(audit.record, found.user.email, "logout", address=_client(request))
    response = RedirectResponse(f"{_base(request)}/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=_secure(request))
    return response
