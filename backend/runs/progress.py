"""Coalesced progress: a job may report progress as often as it likes; the database sees at most one write
per interval per run, plus every phase change and the final value.

The interval adapts to load: it is ``min_interval`` while writes are quick, and grows with the time the last
write took (a database under load: up to one write per second, :data:`MAX_INTERVAL`). A change held back is
written by a timer when its interval has passed, so the page shows it within the interval even if the job
reports nothing more.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from backend.db.models import empty_progress
from backend.runs import service

MAX_INTERVAL = 1.0
LOAD_FACTOR = 25.0  # the interval is at least this many times the last write's duration


class ProgressTracker:
    def __init__(self, run_id: uuid.UUID, min_interval: float) -> None:
        self.run_id = run_id
        self.min_interval = min_interval
        self.state: dict[str, Any] = empty_progress()
        self.writes = 0
        self._written_at = 0.0
        self._write_seconds = 0.0
        self._dirty = False
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def interval(self) -> float:
        """Seconds between two writes now: ``min_interval``, longer while writes are slow (0: every update)."""
        if self.min_interval <= 0:
            return 0.0
        return min(MAX_INTERVAL, max(self.min_interval, self._write_seconds * LOAD_FACTOR))

    def update(
        self,
        current: int | float | None = None,
        total: int | float | None = None,
        *,
        phase: str | None = None,
        item: str | None = None,
        unit: str | None = None,
        **extra: Any,
    ) -> None:
        with self._lock:
            previous_phase = self.state["phase"]
            if current is not None:
                self.state["current"] = current
            if total is not None:
                self.state["total"] = total
            if unit is not None:
                self.state["unit"] = unit
            if item is not None:
                self.state["current_item"] = str(item)[:500]
            if extra:
                self.state["extra"] = {**self.state["extra"], **extra}
            phase_changed = phase is not None and phase != previous_phase
            if phase is not None:
                self.state["phase"] = phase
            self.state["percent"] = _percent(self.state["current"], self.state["total"])
            finished = self.state["total"] is not None and self.state["current"] >= self.state["total"]
            wait = self.interval - (time.monotonic() - self._written_at)
            self._dirty = True
            write_now = phase_changed or finished or wait <= 0
            if not write_now and self._timer is None:  # written when its interval has passed
                self._timer = threading.Timer(wait, self._flush_quietly)
                self._timer.daemon = True
                self._timer.start()
        if phase_changed:
            service.log_phase(self.run_id, phase, previous_phase)  # type: ignore[arg-type]
        if write_now:
            self.flush()

    def flush(self) -> None:
        """Write the latest progress if anything changed since the last write."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._dirty:
                return
            snapshot = {**self.state, "extra": dict(self.state["extra"])}
            self._dirty = False
            started = self._written_at = time.monotonic()  # an update meanwhile waits for the next interval
        service.set_progress(self.run_id, snapshot)
        with self._lock:
            self._write_seconds = time.monotonic() - started
            self.writes += 1

    def close(self) -> None:
        """No more timed writes (the run ended; its final progress was flushed)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _flush_quietly(self) -> None:
        with self._lock:
            self._timer = None
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - the next update or the heartbeat writes it
            with self._lock:
                self._dirty = True


def _percent(current: float | None, total: float | None) -> float | None:
    if not total or current is None:
        return None
    return round(max(0.0, min(100.0, 100.0 * current / total)), 1)
