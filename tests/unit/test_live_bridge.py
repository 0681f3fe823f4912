"""The live bridge's delivery: per-client queues, in order, coalesced; nothing for a closed tab; a slow client
holds up no one else. (The app is a stand-in exposing the two things the bridge uses: the connected tokens and
``modify_state``; the browser tests run the real one.)"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import reflex as rx

from curatore_ui.live import Bridge, Watch
from tests.support import run_async


class ListState(rx.State):
    live_seq: int = 0


class Client:
    def __init__(self, delay: float = 0.0) -> None:
        self.live_seq = 0
        self.batches: list[list[int]] = []
        self.delay = delay

    async def apply_live(self, events: list[dict[str, Any]]) -> None:
        self.batches.append([e["seq"] for e in events])
        await asyncio.sleep(self.delay)


class App:
    def __init__(self, clients: dict[str, Client], connected: set[str]) -> None:
        self.clients, self.token_to_sid = clients, {t: "sid-" + t for t in connected}
        self.event_namespace = self

    @contextlib.asynccontextmanager
    async def modify_state(self, token: Any):  # type: ignore[no-untyped-def]
        client = self.clients[token.ident]

        class Root:
            async def get_state(self, cls: Any) -> Client:
                return client

        yield Root()


def event(seq: int, org: str = "org-1") -> dict[str, Any]:
    return {"seq": seq, "kind": "progress", "run_id": f"run-{seq}", "organization_id": org, "payload": {}}


async def _settle(bridge: Bridge) -> None:
    while bridge._senders:
        await asyncio.gather(*list(bridge._senders.values()))


def _bridge(clients: dict[str, Client], connected: set[str]) -> Bridge:
    bridge = Bridge()
    bridge.app = App(clients, connected)  # type: ignore[assignment]
    bridge._loop = asyncio.get_running_loop()
    for token in clients:
        bridge.watch(token, Watch(ListState, all_organizations=True))
    return bridge


def test_a_closed_tab_gets_nothing_and_the_others_get_everything_in_order() -> None:
    clients = {"open": Client(), "closed": Client()}

    async def main() -> None:
        bridge = _bridge(clients, connected={"open"})
        bridge._fan_out([event(1), event(2)])
        bridge._fan_out([event(3)])
        await _settle(bridge)

    run_async(main)
    assert [s for batch in clients["open"].batches for s in batch] == [1, 2, 3]
    assert clients["closed"].batches == []


def test_events_for_a_busy_client_coalesce_and_a_slow_client_holds_up_no_one() -> None:
    clients = {"slow": Client(delay=0.3), "fast": Client()}

    async def main() -> None:
        bridge = _bridge(clients, connected={"slow", "fast"})
        bridge._fan_out([event(1)])
        await asyncio.sleep(0.05)  # both got seq 1; the slow one is still applying it
        for seq in (2, 3, 4):
            bridge._fan_out([event(seq)])
            await asyncio.sleep(0.01)
        assert [s for b in clients["fast"].batches for s in b] == [1, 2, 3, 4]  # not waiting for the slow one
        await _settle(bridge)

    run_async(main)
    assert clients["slow"].batches == [[1], [2, 3, 4]]  # what arrived meanwhile came as one delivery


def test_events_a_client_state_already_has_are_not_applied_again() -> None:
    clients = {"tab": Client()}
    clients["tab"].live_seq = 2  # its snapshot was read at seq 2

    async def main() -> None:
        bridge = _bridge(clients, connected={"tab"})
        bridge._fan_out([event(1), event(2), event(3)])
        await _settle(bridge)

    run_async(main)
    assert clients["tab"].batches == [[3]]
