"""Helpers for tests: waits on the database, never on a clock alone."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.05, what: str = "") -> object:
    """Wait until ``predicate()`` is truthy (it reads the database: the signal, not a clock)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def wait_terminal(run_id: uuid.UUID, timeout: float = 60):  # type: ignore[no-untyped-def]
    from backend.db.states import RunStatus
    from backend.runs.queries import get_run

    def done():  # type: ignore[no-untyped-def]
        run = get_run(run_id)
        return run if RunStatus(run.status).is_terminal else None

    return wait_for(done, timeout, what=f"run {run_id} to end")


def run_async(main: Callable[[], Any]) -> Any:
    """``asyncio.run(main())`` in a thread of its own: the browser tests' Playwright (its sync API) keeps an event
    loop running in the main thread for the whole session, where ``asyncio.run`` refuses to start."""
    import asyncio
    import threading

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="run-async")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")
