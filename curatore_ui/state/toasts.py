"""Toasts for runs that end, with the registry's texts: every run the signed-in person created, whatever the door
(UI, REST API, ``curatore submit --as``), and every run they have open on a job page.

One :class:`ToastState` per client follows the organizations the person sees (a watch that lives beside the
page's, so it survives navigation); pages call :func:`follow_my_runs` from their ``on_load``. Each run ends
with one toast per person: a claim (Redis ``SET NX`` when ``CURATORE_REDIS_URL`` is set, else this process's
memory) decides which of their open tabs shows it, and Sonner's toast id (the run's) keeps one tab from showing it twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from typing import Any

import reflex as rx
from sqlalchemy import select

from backend.config import get_settings
from backend.db.engine import in_transaction
from backend.db.models import Run
from backend.jobtypes.registry import get_registry
from curatore_ui.live import Watch, bridge, current_seq

ENDED = ("completed", "failed", "timed_out")
CLAIM_SECONDS = 24 * 3600


def end_toast(run_id: str, run_type: str, status: str, message: str, name: str | None = None) -> Any | None:
    job_type = get_registry().find(run_type)
    if status == "completed":
        text = job_type.toast("completed", name=name) if job_type else "Job completed"
        return rx.toast.success(text, id=f"run-{run_id}")
    if status in ("failed", "timed_out"):
        text = job_type.toast("failed", name=name, error=message) if job_type else f"Job failed: {message}"
        return rx.toast.error(text, id=f"run-{run_id}")
    return None


# ---------------------------------------------------------------------- who created a run (it never changes)
_CREATORS: OrderedDict[str, str] = OrderedDict()


def creators(run_ids: list[str]) -> dict[str, str]:
    """``created_by`` of these runs, read once per run per process."""
    missing = [r for r in run_ids if r not in _CREATORS]
    if missing:
        ids = [uuid.UUID(r) for r in missing]
        rows = in_transaction(lambda s: s.execute(select(Run.id, Run.created_by).where(Run.id.in_(ids))).all(),
                              read_only=True)
        for rid, by in rows:
            _CREATORS[str(rid)] = by or ""
        while len(_CREATORS) > 20_000:
            _CREATORS.popitem(last=False)
    return {r: _CREATORS.get(r, "") for r in run_ids}


# ---------------------------------------------------------------------- one toast per person and run
_LOCAL_CLAIMS: dict[str, float] = {}
_creators_lock = asyncio.Lock()
_redis = None


def claim(person: str, run_id: str) -> bool:
    """True for the first of a person's tabs to ask about a run's end."""
    global _redis
    key = f"curatore:toast:{person}:{run_id}"
    url = get_settings().redis_url
    if url:
        try:
            if _redis is None:
                import redis

                _redis = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
            return bool(_redis.set(key, b"1", nx=True, ex=CLAIM_SECONDS))
        except Exception:  # Redis away for a moment: this process decides alone
            _redis = None
    now = time.monotonic()
    if len(_LOCAL_CLAIMS) > 50_000:
        for k, at in list(_LOCAL_CLAIMS.items()):
            if now - at > CLAIM_SECONDS:
                del _LOCAL_CLAIMS[k]
    if key in _LOCAL_CLAIMS:
        return False
    _LOCAL_CLAIMS[key] = now
    return True


class ToastState(rx.State):
    live_seq: int = 0
    _person: str = ""
    _open: list[str] = []  # the runs this tab has open (job pages visited)

    async def follow(self, principal: Any, open_run_id: str = "") -> None:
        if principal is None:
            return
        if open_run_id and open_run_id not in self._open:
            self._open = [*self._open[-49:], open_run_id]
        if self._person == principal.name and self.live_seq:
            return
        self._person = principal.name
        self.live_seq = await asyncio.to_thread(current_seq)
        bridge.watch(self.router.session.client_token,
                     Watch(ToastState, all_organizations=True, since_seq=self.live_seq, page=False,
                           visible_orgs=bridge.scope(principal), kinds=("status",)))

    async def apply_live(self, events: list[dict[str, Any]]) -> list[Any] | None:
        ended = [e for e in events if e["kind"] == "status" and e["payload"].get("status") in ENDED]
        if not ended or not self._person or not bridge.connected(self.router.session.client_token):
            return None  # a closed tab claims nothing: an open one shows the toast
        async with _creators_lock:  # every tab asks at once: the first reads, the others find it cached
            by = await asyncio.to_thread(creators, [e["run_id"] for e in ended])
        out = []
        for event in ended:
            rid = event["run_id"]
            if by.get(rid) != self._person and rid not in self._open:
                continue
            if not await asyncio.to_thread(claim, self._person, rid):
                continue
            run = event["payload"].get("run", {})
            message = event["payload"].get("event", {}).get("message", "")
            toast = end_toast(rid, run.get("run_type", ""), event["payload"]["status"], message,
                              name=run.get("display_name"))
            if toast is not None:
                out.append(toast)
        return out


async def follow_my_runs(state: rx.State, principal: Any, open_run_id: str = "") -> None:
    """Called by a page's ``on_load``: toasts for this person's runs (and ``open_run_id``) in this tab."""
    await (await state.get_state(ToastState)).follow(principal, open_run_id)
