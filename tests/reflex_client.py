"""A small client speaking Reflex's websocket protocol, for benchmarks and multi-process tests that need more
watchers than real browsers can afford (``bench/fanout.py``).

It does what the compiled frontend does on a page load: opens the Socket.IO connection at ``/_event`` with a
client token, sends the ``hydrate_and_load`` event in the CONNECT packet (which runs the page's ``on_load``
handlers on the server), then applies every state delta the server pushes, recording when each arrived.
Events the server asks the browser to run (scripts, redirects, toasts) are recorded, not run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import socketio

HYDRATE = "reflex___state____state.hydrate_and_load"
NAMESPACE = "/_event"


def sign_in(base_url: str, email: str, password: str) -> str:
    """The ``Cookie`` header of a signed-in session (the login form's post)."""
    response = httpx.post(f"{base_url}/auth/login", data={"email": email, "password": password, "next": "/"},
                          follow_redirects=False, timeout=30)
    cookie = response.cookies.get("curatore_session")
    if not cookie:
        raise RuntimeError(f"sign-in as {email} failed: HTTP {response.status_code} {response.text[:200]}")
    return f"curatore_session={cookie}"


def substate(name: str) -> str:
    """The key Reflex gives a state class (a direct subclass of ``rx.State``) in deltas:
    ``curatore_ui.pages.jobs_list_state.JobsListState`` ->
    ``reflex___state____state.curatore_ui___pages___jobs_list_state____jobs_list_state``."""
    module, _, cls = name.rpartition(".")
    snake = "".join("_" + c.lower() if c.isupper() else c for c in cls).lstrip("_")
    return "reflex___state____state." + module.replace(".", "___") + "____" + snake


@dataclass
class Update:
    at: float  # time.time() when it arrived
    delta: dict[str, dict[str, Any]]
    events: list[dict[str, Any]]


@dataclass
class ReflexClient:
    base_url: str
    path: str
    cookie: str = ""
    token: str = field(default_factory=lambda: str(uuid.uuid4()))
    updates: list[Update] = field(default_factory=list)
    vars: dict[str, dict[str, Any]] = field(default_factory=dict)  # substate key -> its vars, deltas applied

    def __post_init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.sio.on("event", self._on_event, namespace=NAMESPACE)
        self.changed = asyncio.Event()

    async def _on_event(self, update: dict[str, Any]) -> None:
        delta = update.get("delta") or {}
        self.updates.append(Update(time.time(), delta, update.get("events") or []))
        for key, values in delta.items():
            self.vars.setdefault(key, {}).update(values)
        self.changed.set()

    async def connect(self) -> None:
        """Open the page: connect and hydrate (the page's on_load runs on the server)."""
        path = self.path if self.path.endswith("/") else self.path + "/"
        auth = {"event": {"name": HYDRATE, "payload": {}, "router_data": {"pathname": path, "asPath": path}}}
        await self.sio.connect(f"{self.base_url}?token={self.token}", socketio_path="/_event",
                               namespaces=[NAMESPACE], transports=["websocket"],
                               headers={"Cookie": self.cookie} if self.cookie else {}, auth=auth, wait_timeout=30)

    async def disconnect(self) -> None:
        await self.sio.disconnect()

    def var(self, state: str, name: str, default: Any = None) -> Any:
        """A state var's current value (``state``: the class's dotted path)."""
        return self.vars.get(substate(state), {}).get(f"{name}_rx_state_", default)

    async def wait_for(self, predicate: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.path}: the condition did not hold within {timeout} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 1.0))
            except TimeoutError:
                pass
