"""The live bridge: engine events (the outbox) → the browsers that watch them.

One listener per Reflex backend process reads outbox rows after its cursor,
woken by Redis pub/sub when ``CURATORE_REDIS_URL`` is set and polling every
``CURATORE_LIVE_POLL_SECONDS`` otherwise. Pages register what they watch
(a run, a run's children, a list scope, a resource) for their client token;
each batch of events is delivered with ``app.modify_state`` only to the
clients whose watches match, one batch per client (bursts coalesce).

A watch carries the outbox sequence number its page's snapshot was read at;
events the listener passed before the watch arrived are replayed to it, and a
state ignores events it has already applied, so nothing is missed or doubled
across reconnects and backend restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

import reflex as rx

from backend.config import get_settings
from backend.runs import outbox

log = logging.getLogger("curatore.live")
FORGET_AFTER_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Watch:
    """What one page state of one client wants to hear about."""

    state: type[rx.State]
    run_id: str | None = None  # events of this run
    parent_run_id: str | None = None  # events of this run's children
    organization_id: str | None = None  # a list scope
    all_organizations: bool = False  # a system-wide list scope
    resources: tuple[tuple[str, str], ...] = ()  # (resource_type, resource_id) pairs
    parent_run_ids: tuple[str, ...] = ()  # events of these runs' children
    since_seq: int = 0
    page: bool = True  # a page's watch; False for a panel's, which lives beside the page's
    visible_orgs: frozenset[str] | None = None  # the client's organizations (None: all, a system admin)
    kinds: tuple[str, ...] = ()  # only these event kinds (say, "status" for toasts); empty: all

    def matches(self, event: dict[str, Any]) -> bool:
        if self.visible_orgs is not None and event["organization_id"] not in self.visible_orgs:
            return False  # scoping comes before anything is pushed
        if self.kinds and event["kind"] not in self.kinds:
            return False
        run = event["payload"].get("run", {})
        if self.run_id and event["run_id"] == self.run_id:
            return True
        if self.parent_run_id and run.get("parent_run_id") == self.parent_run_id:
            return True
        if self.all_organizations or (self.organization_id and event["organization_id"] == self.organization_id):
            return True
        if self.resources and (run.get("resource_type"), run.get("resource_id")) in self.resources:
            return True
        if self.parent_run_ids and run.get("parent_run_id") in self.parent_run_ids:
            return True
        return False


class LiveState(Protocol):
    live_seq: int

    async def apply_live(self, events: list[dict[str, Any]]) -> list[Any] | None: ...


class Bridge:
    def __init__(self) -> None:
        self.watches: dict[str, dict[type[rx.State], Watch]] = {}
        self.cursor = 0
        self.app: rx.App | None = None
        self._wake = asyncio.Event()
        self._token_locks: dict[str, asyncio.Lock] = {}
        self._catch_ups: list[tuple[str, Watch]] = []
        self._seen: dict[str, float] = {}  # token -> when it was last seen connected
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ registry
    def watch(self, token: str, watch: Watch) -> None:
        """Register ``watch`` for a client. A page's watch replaces the client's previous page watch (it left
        that page); a panel's watch (``page=False``) lives beside it."""
        mine = self.watches.setdefault(token, {})
        if watch.page:
            for state, old in list(mine.items()):
                if old.page:
                    del mine[state]
        mine[watch.state] = watch
        self._catch_ups.append((token, watch))
        self.wake()

    @staticmethod
    def scope(principal: Any) -> frozenset[str] | None:
        """The ``visible_orgs`` of a watch for this principal."""
        orgs = principal.visible_orgs()
        return None if orgs is None else frozenset(str(o) for o in orgs)

    def connected(self, token: str) -> bool:
        """Whether the client is connected now (a closed tab's watches live on for a while)."""
        if self.app is None or self.app.event_namespace is None:
            return False
        return token in self.app.event_namespace.token_to_sid

    def wake(self) -> None:
        """Make the listener look at the outbox now (safe from any thread)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # ------------------------------------------------------------------ the loop
    async def run(self, app: rx.App) -> None:
        """The lifespan task: follow the outbox until cancelled."""
        self.app = app
        self._loop = asyncio.get_running_loop()
        self.cursor = await asyncio.to_thread(outbox.last_seq)
        settings = get_settings()
        redis_task = asyncio.create_task(self._redis_wakeups(settings.redis_url)) if settings.redis_url else None
        log.info("live bridge following the outbox from seq %s", self.cursor)
        try:
            while True:
                try:
                    events = await asyncio.to_thread(outbox.read_after, self.cursor)
                except Exception as exc:  # the database may be away for a moment
                    log.warning("live bridge could not read the outbox: %s", exc)
                    events = []
                if events:
                    self.cursor = events[-1]["seq"]
                    await self._fan_out(events)
                while self._catch_ups:
                    await self._catch_up(*self._catch_ups.pop(0))
                if len(events) >= 1000:
                    continue
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=settings.live_poll_seconds)
        finally:
            if redis_task:
                redis_task.cancel()

    async def _redis_wakeups(self, url: str) -> None:
        import redis.asyncio as aioredis

        while True:
            try:
                client = aioredis.Redis.from_url(url)
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(outbox.NOTIFY_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # polling carries on; try again shortly
                log.warning("live bridge lost Redis (%s); polling until it is back", exc)
                await asyncio.sleep(2)

    async def _fan_out(self, events: list[dict[str, Any]]) -> None:
        self._forget_disconnected()
        jobs = []
        for token, by_state in list(self.watches.items()):
            for watch in list(by_state.values()):
                matched = [e for e in events if watch.matches(e)]
                if matched:
                    jobs.append(self._deliver(token, watch.state, matched))
        if jobs:
            await asyncio.gather(*jobs)

    async def _catch_up(self, token: str, watch: Watch) -> None:
        """Deliver what the listener passed before this watch was registered."""
        if watch.since_seq >= self.cursor:
            return
        events = await asyncio.to_thread(outbox.read_after, watch.since_seq, 5000)
        matched = [e for e in events if e["seq"] <= self.cursor and watch.matches(e)]
        if matched:
            await self._deliver(token, watch.state, matched)

    async def _deliver(self, token: str, state_cls: type[rx.State], events: list[dict[str, Any]]) -> None:
        assert self.app is not None
        lock = self._token_locks.setdefault(token, asyncio.Lock())
        async with lock:
            try:
                async with self.app.modify_state(rx.BaseStateToken(ident=token, cls=state_cls)) as root:
                    state = await root.get_state(state_cls)
                    fresh = [e for e in events if e["seq"] > state.live_seq]
                    if not fresh:
                        return
                    follow_up = await state.apply_live(fresh)
                    state.live_seq = fresh[-1]["seq"]
                if follow_up:
                    await self._emit_events(token, follow_up)
            except Exception:
                log.exception("live update to %s failed", token)

    async def _emit_events(self, token: str, specs: Iterable[Any]) -> None:
        from reflex.state import StateUpdate
        from reflex_base.event import Event

        assert self.app is not None and self.app.event_namespace is not None
        events = Event.from_event_type(list(specs))
        await self.app.event_namespace.emit_update(StateUpdate(events=events), token)

    def _forget_disconnected(self) -> None:
        """Drop the watches of clients gone for a while (a reload reconnects with the same token, and its
        old socket's disconnect may be handled after the new one's connect)."""
        if self.app is None or self.app.event_namespace is None:
            return
        connected = self.app.event_namespace.token_to_sid
        now = time.monotonic()
        for token in list(self.watches):
            if token in connected:
                self._seen[token] = now
            elif now - self._seen.setdefault(token, now) > FORGET_AFTER_SECONDS:
                self.watches.pop(token, None)
                self._token_locks.pop(token, None)
                self._seen.pop(token, None)


bridge = Bridge()


def current_seq() -> int:
    """The outbox position to read a snapshot at (call before reading it)."""
    return outbox.last_seq()
