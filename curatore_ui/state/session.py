"""Who is logged in: a browser session kept in a cookie, checked against the database on each page load.

Pages call :func:`principal_or_redirect` first thing in their ``on_load``; it gives the page its
:class:`~backend.auth.access.Principal`, or an event that sends the browser to the login page.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import reflex as rx

from backend.auth import users
from backend.auth.access import Principal
from backend.errors import CuratoreError

SESSION_COOKIE = "curatore_session"


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


def _principal(secret: str) -> Principal | None:
    user = users.user_for_session(secret)
    return Principal.of(user) if user else None


class SessionState(rx.State):
    secret: str = rx.Cookie("", name=SESSION_COOKIE, max_age=users.SESSION_HOURS * 3600, same_site="strict")
    email: str = ""
    is_system_admin: bool = False
    orgs: list[dict[str, str]] = []  # [{"slug", "name", "role"}]
    login_error: str = ""

    async def principal(self) -> Principal | None:
        principal = await asyncio.to_thread(_principal, self.secret) if self.secret else None
        if principal is None:
            self.email, self.orgs, self.is_system_admin = "", [], False
            return None
        if self.email != principal.name:
            self.email, self.is_system_admin = principal.name, principal.is_system_admin
            rows = await asyncio.to_thread(users.memberships, principal.user_id)
            self.orgs = [{"slug": o.slug, "name": o.name, "role": role} for o, role in rows]
        return principal

    @rx.event
    async def log_in(self, form: dict[str, Any]):  # type: ignore[no-untyped-def]
        try:
            user = await asyncio.to_thread(users.authenticate, str(form.get("email", "")),
                                           str(form.get("password", "")), self.router.session.client_ip or None)
        except CuratoreError as exc:  # locked out: "try again in N s"
            self.login_error = exc.message
            return None
        if user is None:
            self.login_error = "That email and password do not match."
            return None
        self.secret = await asyncio.to_thread(users.start_session, user.id)
        self.login_error = ""
        await self.principal()
        return rx.redirect(safe_next(str(self.router.url.query_parameters.get("next", ""))))

    @rx.event
    async def log_out(self):  # type: ignore[no-untyped-def]
        if self.secret:
            await asyncio.to_thread(users.end_session, self.secret)
        self.secret, self.email, self.orgs, self.is_system_admin = "", "", [], False
        return rx.redirect("/login")

    @rx.event
    async def home(self):  # type: ignore[no-untyped-def]
        """`/`: the jobs list the user may see."""
        principal = await self.principal()
        if principal is None:
            return rx.redirect("/login")
        if principal.is_system_admin or not self.orgs:
            return rx.redirect("/system/jobs")
        return rx.redirect(f"/orgs/{self.orgs[0]['slug']}/jobs")


async def principal_or_redirect(state: rx.State) -> tuple[Principal | None, Any]:
    """The logged-in principal, or (None, a redirect to the login page that comes back here)."""
    session = await state.get_state(SessionState)
    principal = await session.principal()
    if principal is None:
        path = state.router.url.path or "/"
        return None, rx.redirect(f"/login?next={quote(path)}")
    return principal, None
