"""Toasts for runs that end, with the registry's texts. The toast id is the run's, so the same run is never
toasted twice on one page (Sonner replaces a toast with the same id)."""

from __future__ import annotations

from typing import Any

import reflex as rx

from backend.jobtypes.registry import get_registry


def end_toast(run_id: str, run_type: str, status: str, message: str, name: str | None = None) -> Any | None:
    job_type = get_registry().find(run_type)
    if status == "completed":
        text = job_type.toast("completed", name=name) if job_type else "Job completed"
        return rx.toast.success(text, id=f"run-{run_id}")
    if status in ("failed", "timed_out"):
        text = job_type.toast("failed", name=name, error=message) if job_type else f"Job failed: {message}"
        return rx.toast.error(text, id=f"run-{run_id}")
    return None
