"""Who is signed in: the HttpOnly session cookie, as the request that opened this websocket presented it.

Sign-in and sign-out are plain form posts to ``/auth/login`` and ``/auth/logout`` (``backend/api/signin.py``),
which set and clear the cookie and answer with a full page load, so the websocket reconnects with the new
cookie. No session secret is ever a state var: :class:`SessionGuard` reads the cookie from the websocket
handshake's headers (Reflex takes them from the ASGI scope on the server, whatever an event's payload says,
and never sends the cookie header to the browser) before every event, looks the session up, and

- resets every state of the client when the session is not the one its vars were filled for (a new socket
  presenting only an old client token, a sign-out, a revoked, expired or disabled session): nothing loaded
  for one session is ever shown to another, or to nobody;
- keeps the event's :class:`~backend.auth.access.Principal` for :func:`principal_or_redirect`, which every
  page's ``on_load`` and every action handler calls first.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import reflex as rx
from reflex.istate.delta import _resolve_delta
from reflex.middleware import Middleware
from reflex.state import StateUpdate
from reflex_base.event import Event
from reflex_base.event.processor.base_state_processor import _hydrate_event_names

from backend.api.signin import LOGOUT_PATH, safe_next, session_secret
from backend.auth import users
from backend.auth.access import Principal
from curatore_ui.state.permissions import may_administer_queues

if TYPE_CHECKING:
    from reflex.app import App

__all__ = ["SessionGuard", "SessionState", "backend_path", "principal_or_redirect", "safe_next"]


def backend_path(path: str) -> str:
    """``path`` on the backend: the same origin in the one-port build (``curatore dev``), the backend's own URL
    in Reflex's two-port ``--reload`` mode, whose frontend server does not forward form posts."""
    config = rx.config.get_config()
    api = urlsplit(config.api_url)
    if api.port is not None and str(api.port) != str(config.frontend_port):
        return config.api_url.rstrip("/") + path
    return path


def _look_up(cookie_header: str | None) -> tuple[str, Principal | None, list[dict[str, str]]]:
    """(session row id or '', principal, memberships) for the cookie this socket was opened with."""
    found = users.session_for(session_secret(cookie_header))
    if found is None:
        return "", None, []
    orgs = [{"slug": o.slug, "name": o.name, "role": role} for o, role in users.memberships(found.user.id)]
    return str(found.session_id), Principal.of(found.user), orgs


class SessionState(rx.State):
    email: str = ""
    is_system_admin: bool = False
    may_administer_queues: bool = False  # the Queues link (state/permissions.py decides)
    orgs: list[dict[str, str]] = []  # [{"slug", "name", "role"}]
    # The session row (its id, never its secret) the client's vars were filled for, and this event's principal.
    _session_id: str = ""
    _principal: Principal | None = None

    async def principal(self) -> Principal | None:
        return self._principal

    @rx.event
    def log_out(self):  # type: ignore[no-untyped-def]
        """Post the sign-out form: the server ends the session, clears the cookie and loads the login page."""
        return rx.call_script(
            "(() => { const f = document.createElement('form'); f.method = 'post'; "
            f"f.action = {backend_path(LOGOUT_PATH)!r}; document.body.appendChild(f); f.submit(); }})()")

    @rx.event
    async def home(self):  # type: ignore[no-untyped-def]
        """`/`: the jobs list the user may see."""
        principal = await self.principal()
        if principal is None:
            return rx.redirect("/login")
        if principal.is_system_admin or not self.orgs:
            return rx.redirect("/system/jobs")
        return rx.redirect(f"/orgs/{self.orgs[0]['slug']}/jobs")


class SessionGuard(Middleware):
    """Before every event: the session from the handshake's cookie; a different one than the client's vars
    were filled for resets them all (see the module's docstring)."""

    async def preprocess(self, app: App, state: Any, event: Any) -> StateUpdate | None:
        root = state._get_root_state()
        session = await root.get_state(SessionState)
        session_id, principal, orgs = await asyncio.to_thread(_look_up, root.router.headers.cookie)
        lost = bool(session._session_id) and not session_id
        if session_id != session._session_id:
            hydrated = root.is_hydrated
            root.reset()  # every loaded state of this client, back to its defaults
            root.is_hydrated = hydrated
            session._session_id = session_id
        session._principal = principal
        if lost and event.name not in _hydrate_event_names() and root.router.url.path != "/login":
            # Signed out elsewhere, disabled, expired: whatever the event, the page is emptied and goes to login.
            delta = await _resolve_delta(root.get_delta())
            root._clean()
            path = quote(root.router.url.path or "/")
            return StateUpdate(delta=delta, events=Event.from_event_type(rx.redirect(f"/login?next={path}")))
        if principal is not None:
            if session.email != principal.name:
                session.email = principal.name
            if session.is_system_admin != principal.is_system_admin:
                session.is_system_admin = principal.is_system_admin
            if session.may_administer_queues != may_administer_queues(principal):
                session.may_administer_queues = may_administer_queues(principal)
            if session.orgs != orgs:
                session.orgs = orgs
        return None


async def principal_or_redirect(state: rx.State) -> tuple[Principal | None, Any]:
    """The signed-in principal, or (None, a redirect to the login page that comes back here)."""
    session = await state.get_state(SessionState)
    principal = await session.principal()
    if principal is None:
        path = state.router.url.path or "/"
        return None, rx.redirect(f"/login?next={quote(path)}")
    return principal, None
