"""Coalesced progress: a job may report progress as often as it likes; the
database sees at most one write per ``min_interval`` per run, plus every phase
change and the final value."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from backend.db.models import empty_progress
from backend.runs import service


class ProgressTracker:
    def __init__(self, run_id: uuid.UUID, min_interval: float) -> None:
        self.run_id = run_id
        self.min_interval = min_interval
        self.state: dict[str, Any] = empty_progress()
        self._written_at = 0.0
        self._dirty = False
        self._lock = threading.Lock()

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
            due = time.monotonic() - self._written_at >= self.min_interval
            self._dirty = True
            write_now = phase_changed or finished or due
        if phase_changed:
            service.log_phase(self.run_id, phase, previous_phase)  # type: ignore[arg-type]
        if write_now:
            self.flush()

    def flush(self) -> None:
        """Write the latest progress if anything changed since the last write."""
        with self._lock:
            if not self._dirty:
                return
            snapshot = {**self.state, "extra": dict(self.state["extra"])}
            self._dirty = False
            self._written_at = time.monotonic()
        service.set_progress(self.run_id, snapshot)


def _percent(current: float | None, total: float | None) -> float | None:
    if not total or current is None:
        return None
    return round(max(0.0, min(100.0, 100.0 * current / total)), 1)
