"""The live bridge: engine events (the outbox) → the browsers that watch them.

One listener per Reflex backend process reads outbox rows after its cursor,
woken by Redis pub/sub when ``CURATORE_REDIS_URL`` is set and polling every
``CURATORE_LIVE_POLL_SECONDS`` otherwise. Pages register what they watch
(a run, a run's children, a list scope, a resource) for their client token;
each batch of events is delivered with ``app.modify_state`` only to the
connected clients whose watches match. Each (client, page state) has its own
delivery queue drained by its own task, in order: a slow client never holds
up the listener or another client, and events that arrive while a delivery
is under way coalesce into the next one. A closed tab costs nothing: events
are not delivered to a client whose socket is gone (a reconnect hydrates the
page again, which registers a new watch with a fresh snapshot).

Lists that every watcher would re-read after each event are read once per
scope instead (:class:`SharedReads`): a watch's ``prefetch`` gets the shared
result outside the client's state lock, and the state only shapes it for its
principal.

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
from collections.abc import Awaitable, Callable, Hashable, Iterable
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
    # Read what the state needs for these events before its lock is taken (a shared list read); the result
    # goes to ``apply_live(events, prefetched=...)``.
    prefetch: Callable[[list[dict[str, Any]]], Awaitable[Any]] | None = None

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


class SharedReads:
    """A read shared by every client that watches the same scope (a jobs-list page: organization, filters,
    page): at most one computation per key at a time, started no sooner than ``min_interval`` seconds after
    the previous one ended, and each caller gets the first result that reflects the outbox position it
    needs. So N watchers of one list cost one read per burst of events, not N."""

    def __init__(self, min_interval: float | Callable[[], float], keep_seconds: float = 60.0) -> None:
        self.min_interval = min_interval
        self.keep_seconds = keep_seconds
        self._done: dict[Hashable, tuple[int, float, Any]] = {}  # key -> (outbox seq it reflects, ended, value)
        self._flights: dict[Hashable, asyncio.Future[Any]] = {}
        self.computations = 0  # for tests and benchmarks

    async def get(self, key: Hashable, need_seq: int, compute: Callable[[], Any], position: Callable[[], int]) -> Any:
        """``compute()`` (run in a thread) for ``key``, or a result shared with others that reflects at least
        outbox position ``need_seq``; ``position()`` is the position every row visible from now on reflects
        (the live bridge's cursor)."""
        while True:
            done = self._done.get(key)
            if done is not None and done[0] >= need_seq:
                return done[2]
            flight = self._flights.get(key)
            if flight is None:
                flight = asyncio.ensure_future(self._compute(key, compute, position))
                self._flights[key] = flight
            await asyncio.shield(flight)  # a result older than needed: loop round for a newer one

    async def _compute(self, key: Hashable, compute: Callable[[], Any], position: Callable[[], int]) -> None:
        try:
            done = self._done.get(key)
            if done is not None:
                interval = self.min_interval() if callable(self.min_interval) else self.min_interval
                await asyncio.sleep(max(0.0, done[1] + interval - time.monotonic()))
            seq = position()
            value = await asyncio.to_thread(compute)
            self.computations += 1
            now = time.monotonic()
            self._done[key] = (seq, now, value)
            for old in [k for k, (_, ended, _) in self._done.items() if now - ended > self.keep_seconds]:
                del self._done[old]
        finally:
            self._flights.pop(key, None)


class Bridge:
    def __init__(self) -> None:
        self.watches: dict[str, dict[type[rx.State], Watch]] = {}
        self.cursor = 0
        self.app: rx.App | None = None
        self._wake = asyncio.Event()
        # per (client, state): events waiting for delivery, the outbox position to catch up from, the task
        self._queued: dict[tuple[str, type[rx.State]], list[dict[str, Any]]] = {}
        self._catch_up_from: dict[tuple[str, type[rx.State]], int] = {}
        self._senders: dict[tuple[str, type[rx.State]], asyncio.Task[None]] = {}
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
        key = (token, watch.state)
        self._queued.pop(key, None)  # what was queued for the state's previous watch is in its new snapshot
        self._catch_up_from[key] = watch.since_seq
        self._send(key)

    @staticmethod
    def scope(principal: Any) -> frozenset[str] | None:
        """The ``visible_orgs`` of a watch for this principal."""
        orgs = principal.visible_orgs()
        return None if orgs is None else frozenset(str(o) for o in orgs)

    def connected(self, token: str) -> bool:
        """Whether the client is connected to this process now (a closed tab's watches live on for a while)."""
        return token in self._connected_tokens()

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
                    self._fan_out(events)
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

    def _fan_out(self, events: list[dict[str, Any]]) -> None:
        """Queue each event for every connected client whose watch matches it."""
        self._forget_disconnected()
        connected = self._connected_tokens()
        for token, by_state in list(self.watches.items()):
            if token not in connected:
                continue  # a closed tab (or one reconnecting: its hydrate registers a fresh watch)
            for watch in list(by_state.values()):
                matched = [e for e in events if watch.matches(e)]
                if matched:
                    self._queued.setdefault((token, watch.state), []).extend(matched)
                    self._send((token, watch.state))

    def _send(self, key: tuple[str, type[rx.State]]) -> None:
        if key not in self._senders and self._loop is not None:
            self._senders[key] = self._loop.create_task(self._drain(key))

    async def _drain(self, key: tuple[str, type[rx.State]]) -> None:
        """Deliver a client state's queue in order until it is empty; what arrives meanwhile coalesces."""
        token, state_cls = key
        try:
            while key in self._catch_up_from or self._queued.get(key):
                events = await self._catch_up(key)
                events += self._queued.pop(key, [])
                watch = self.watches.get(token, {}).get(state_cls)
                if events and watch is not None:
                    await self._deliver(token, watch, sorted({e["seq"]: e for e in events}.values(),
                                                             key=lambda e: e["seq"]))
        finally:
            self._senders.pop(key, None)

    async def _catch_up(self, key: tuple[str, type[rx.State]]) -> list[dict[str, Any]]:
        """What the listener passed before this watch was registered (merged with what it queued since)."""
        since = self._catch_up_from.pop(key, None)
        if since is None or since >= self.cursor:
            return []
        upto = self.cursor
        try:
            events = await asyncio.to_thread(outbox.read_after, since, 5000)
        except Exception as exc:  # the database may be away for a moment: try again with the next events
            log.warning("live bridge could not catch up a watch: %s", exc)
            self._catch_up_from.setdefault(key, since)
            await asyncio.sleep(1.0)
            return []
        watch = self.watches.get(key[0], {}).get(key[1])
        return [e for e in events if e["seq"] <= upto and watch is not None and watch.matches(e)]

    async def _deliver(self, token: str, watch: Watch, events: list[dict[str, Any]]) -> None:
        assert self.app is not None
        try:
            prefetched = await watch.prefetch(events) if watch.prefetch is not None else None
            async with self.app.modify_state(rx.BaseStateToken(ident=token, cls=watch.state)) as root:
                state = await root.get_state(watch.state)
                fresh = [e for e in events if e["seq"] > state.live_seq]
                if not fresh:
                    return
                if watch.prefetch is not None:
                    follow_up = await state.apply_live(fresh, prefetched=prefetched)
                else:
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

    def _connected_tokens(self) -> set[str]:
        """The clients whose sockets this process holds. With several backend processes (Reflex's Redis token
        manager), the token table also caches other processes' sockets: those are theirs to push to."""
        if self.app is None or self.app.event_namespace is None:
            return set()
        manager = getattr(self.app.event_namespace, "_token_manager", None)
        records = getattr(manager, "token_to_socket", None)
        if records is None:
            return set(self.app.event_namespace.token_to_sid)
        return {token for token, record in list(records.items()) if record.instance_id == manager.instance_id}

    def _forget_disconnected(self) -> None:
        """Drop the watches of clients gone for a while (a reload reconnects with the same token, and its
        old socket's disconnect may be handled after the new one's connect)."""
        connected = self._connected_tokens()
        now = time.monotonic()
        for token in list(self.watches):
            if token in connected:
                self._seen[token] = now
            elif now - self._seen.setdefault(token, now) > FORGET_AFTER_SECONDS:
                for state_cls in self.watches.pop(token, {}):
                    self._queued.pop((token, state_cls), None)
                    self._catch_up_from.pop((token, state_cls), None)
                self._seen.pop(token, None)


bridge = Bridge()


def current_seq() -> int:
    """The outbox position to read a snapshot at (call before reading it)."""
    return outbox.last_seq()
