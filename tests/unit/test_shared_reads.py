"""SharedReads: one list read per scope for every watcher of it, never older than what a watcher needs."""

from __future__ import annotations

import asyncio
import threading
import time

from curatore_ui.live import SharedReads
from tests.support import run_async


class Source:
    """A stand-in for the database: each read returns the outbox position it saw and counts itself."""

    def __init__(self, delay: float = 0.05) -> None:
        self.position = 0
        self.reads = 0
        self.delay = delay
        self.lock = threading.Lock()
        self.starts: list[float] = []
        self.ends: list[float] = []

    def read(self) -> int:
        with self.lock:
            self.reads += 1
        self.starts.append(time.monotonic())
        seen = self.position
        time.sleep(self.delay)
        self.ends.append(time.monotonic())
        return seen


def test_many_watchers_of_one_scope_cost_one_read() -> None:
    shared, source = SharedReads(0.0), Source()
    source.position = 7

    async def main() -> list[int]:
        return await asyncio.gather(*[shared.get("scope", 7, source.read, lambda: source.position)
                                      for _ in range(50)])

    assert run_async(main) == [7] * 50
    assert source.reads == 1 and shared.computations == 1


def test_distinct_scopes_are_read_separately() -> None:
    shared, source = SharedReads(0.0), Source(0.0)

    async def main() -> None:
        await asyncio.gather(shared.get(("org-a", 1), 0, source.read, lambda: 0),
                             shared.get(("org-b", 1), 0, source.read, lambda: 0))

    run_async(main)
    assert source.reads == 2


def test_a_watcher_needing_a_newer_position_than_the_read_in_flight_gets_a_newer_read() -> None:
    shared, source = SharedReads(0.0), Source(0.1)
    source.position = 5

    async def main() -> tuple[int, int]:
        first = asyncio.ensure_future(shared.get("scope", 5, source.read, lambda: source.position))
        await asyncio.sleep(0.03)  # the first read is under way, at position 5
        source.position = 6  # an event the first read may not reflect
        second = await shared.get("scope", 6, source.read, lambda: source.position)
        return await first, second

    assert run_async(main) == (5, 6)
    assert source.reads == 2


def test_a_result_that_is_recent_enough_is_reused_without_reading() -> None:
    shared, source = SharedReads(0.0), Source(0.0)
    source.position = 9

    async def main() -> None:
        await shared.get("scope", 9, source.read, lambda: source.position)
        assert await shared.get("scope", 3, source.read, lambda: source.position) == 9

    run_async(main)
    assert source.reads == 1


def test_reads_of_one_scope_are_spaced_by_the_interval() -> None:
    shared, source = SharedReads(0.2), Source(0.0)

    async def main() -> None:
        for position in (1, 2, 3):
            source.position = position
            assert await shared.get("scope", position, source.read, lambda: source.position) == position

    run_async(main)
    assert source.reads == 3
    gaps = [start - end for start, end in zip(source.starts[1:], source.ends[:-1])]
    assert all(gap >= 0.2 for gap in gaps), gaps


def test_a_failed_read_reaches_every_waiter_and_is_not_kept() -> None:
    shared = SharedReads(0.0)
    calls = []

    def broken() -> int:
        calls.append(1)
        raise RuntimeError("database away")

    async def main() -> list[object]:
        return await asyncio.gather(*[shared.get("scope", 1, broken, lambda: 1) for _ in range(3)],
                                    return_exceptions=True)

    outcomes = run_async(main)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert len(calls) == 1

    async def again() -> int:
        return await shared.get("scope", 1, lambda: 42, lambda: 1)

    assert run_async(again) == 42
