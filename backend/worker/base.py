"""The task base: drives a run's lifecycle around a job's executor.

``execute`` marks the run running (only for its current dispatch attempt),
gives the executor a :class:`JobContext`, heartbeats while it works, and marks
the run completed, failed, timed out or cancelled. Errors raised on purpose
(``CuratoreError``) become the run's error message; anything else becomes a
short message with the traceback kept in the log's context.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task
from celery.exceptions import Reject
from sqlalchemy import select

from backend.config import Settings, get_settings
from backend.db.engine import in_transaction, patience
from backend.db.models import Asset, Run
from backend.db.states import LogLevel, RunStatus
from backend.errors import CuratoreError, DatabaseUnavailable, JobCancelled, JobHandedBack, LeaseLost, NotFound
from backend.jobtypes.registry import JobType, get_registry
from backend.queues import dispatcher
from backend.queues.dispatch import dispatch_after_commit, schedule_retry
from backend.queues.dispatcher import kick, kick_if_waiting
from backend.runs import groups, service
from backend.runs.progress import ProgressTracker

log = logging.getLogger(__name__)
S = RunStatus


HELD = (S.RUNNING, S.STALE, S.CANCELLING)  # the statuses in which a worker holds its run

# Set in a pool process when its worker is stopping (see ``install_hand_back_signal``): the job hands its run
# back at its next ``check_cancelled()``.
_hand_back_requested = threading.Event()


def request_hand_back(*_: object) -> None:
    """Ask the job running in this process (and any later one) to hand its run back to the queue."""
    _hand_back_requested.set()


def install_hand_back_signal() -> None:
    """In a pool process (``worker_process_init``): SIGTERM does not kill it (a warm shutdown, even when the
    whole process group gets SIGTERM, as systemd sends it by default), and ``HAND_BACK_SIGNAL``, sent by the
    main process when the worker is told to stop (``backend.worker.celery_app``), asks its job to hand its run
    back at its next ``check_cancelled()``, and any job it still receives to go back unstarted.

    The main process waits (``CURATORE_SHUTDOWN_GRACE_SECONDS``) while the jobs hand their runs back; a job
    that has not stopped by then is handed back by the main process, which kills its pool process. billiard
    resets SIGTERM's handler after this runs unless it is ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(HAND_BACK_SIGNAL, request_hand_back)


# A real-time signal: nothing else sends it, and billiard, which replaces the handlers of the usual signals
# (SIGUSR1/2 included) when it sets a pool process up, leaves it alone.
HAND_BACK_SIGNAL = signal.SIGRTMIN + 2 if hasattr(signal, "SIGRTMIN") else signal.SIGURG


class RunTask(Task):
    """Celery task class of every job type; ``job_key`` names the registry entry."""

    job_key: str = ""
    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True


class JobContext:
    """What an executor gets: progress, log, cancellation checks, children, assets."""

    def __init__(self, run: Run, job_type: JobType, settings: Settings, worker: str = "") -> None:
        self.run = run
        self.run_id: uuid.UUID = run.id
        self.dispatch_attempt: int = run.dispatch_attempt  # the dispatch this process holds (its lease)
        self.worker = worker
        self._lost = threading.Event()  # the run's current dispatch is no longer this process's
        self._held_at = time.monotonic()  # when this process last knew it held the run (start, a renewal)
        self._lease = max(settings.lease_seconds, settings.heartbeat_seconds * 2)
        self.organization_id: uuid.UUID = run.organization_id
        self.job_type = job_type
        self.settings = settings
        self.results: dict[str, Any] = {}
        self._tracker = ProgressTracker(run.id, settings.progress_min_interval)
        self._cancel_seen = threading.Event()
        self._cancel_checked_at = float("-inf")
        self._group_id: uuid.UUID | None = None
        self._children = 0
        self._child_keys: dict[str, uuid.UUID] | None = None  # set when continuing a group: what already exists
        self._finishing = False  # the executor returned or raised: the heartbeat must not kill the process
        self._queue_waiting: bool | None = None  # read when the run ended, in its last transaction

    # progress and log ---------------------------------------------------------------
    def progress(
        self,
        current: int | float | None = None,
        total: int | float | None = None,
        *,
        phase: str | None = None,
        item: str | None = None,
        unit: str | None = None,
        **extra: Any,
    ) -> None:
        self._tracker.update(current, total, phase=phase, item=item, unit=unit, **extra)

    def phase(self, name: str) -> None:
        self._tracker.update(phase=name)

    def log(self, level: LogLevel | str, event_type: str, message: str, **context: Any) -> None:
        service.add_log(self.run_id, level, event_type, message, context)

    def info(self, message: str, event_type: str = "info", **context: Any) -> None:
        self.log(LogLevel.INFO, event_type, message, **context)

    def warn(self, message: str, event_type: str = "warning", **context: Any) -> None:
        self.log(LogLevel.WARN, event_type, message, **context)

    # cancellation, hand-back and ownership ----------------------------------------------
    def check_cancelled(self, *, every: float = 0.0) -> None:
        """Stop here if the run should not go on. Call it between units of work.

        Raises :class:`JobCancelled` if a cancel was requested; :class:`LeaseLost` if this process no longer
        holds the run's current dispatch (it was re-queued after this process froze, or ended elsewhere):
        then nothing more is written to the run; :class:`JobHandedBack` if this worker is stopping: the run
        goes back to the queue for another worker (see ``install_hand_back_signal``).
        Between many small units (pages, rows), ``every`` reads the run at most once per that many seconds;
        what the heartbeat has already seen, and a hand-back request, count at once.
        """
        hand_back = _hand_back_requested.is_set()
        if not (self._cancel_seen.is_set() or self._lost.is_set()):
            now = time.monotonic()
            if hand_back or every <= 0 or now - self._cancel_checked_at >= every:
                self._cancel_checked_at = now
                self._read_ownership()
        if self._cancel_seen.is_set():
            raise JobCancelled("Stopped at the cancel request")
        if self._lost.is_set():
            raise LeaseLost(f"This process no longer holds dispatch {self.dispatch_attempt} of the run")
        if hand_back:
            raise JobHandedBack(f"Its worker{f' {self.worker}' if self.worker else ''} is stopping")

    def ensure_held(self) -> None:
        """Raise :class:`LeaseLost` if this process may have lost the run: called before each request a job
        sends. It reads the run only when no heartbeat renewed the lease for a lease period (the process was
        frozen, or the database away): before that, no sweep can have re-queued the run."""
        if not self._lost.is_set() and time.monotonic() - self._held_at >= self._lease:
            self._read_ownership()
        if self._lost.is_set():
            raise LeaseLost(f"This process no longer holds dispatch {self.dispatch_attempt} of the run")

    def _read_ownership(self) -> None:
        try:
            status, attempt = in_transaction(
                lambda s: s.execute(select(Run.status, Run.dispatch_attempt).where(Run.id == self.run_id)).one(),
                read_only=True)
        except DatabaseUnavailable:  # away for a moment (a restart): the heartbeat passes a change on later
            return
        self._saw(RunStatus(status), attempt == self.dispatch_attempt)

    def _saw(self, status: RunStatus, held: bool) -> None:
        """What a read of the run (or a heartbeat) found: the lease still ours, a cancel, or the run lost."""
        if not held or status not in (*HELD, S.CANCELLED):
            self._lost.set()
        elif status in (S.CANCELLING, S.CANCELLED):
            self._cancel_seen.set()

    # children -----------------------------------------------------------------------
    def use_group(self, hook: str, hook_config: dict[str, Any]) -> None:
        """Make this run's group (before the first child) one of a kind: see ``backend.runs.groups``."""
        if self._group_id is not None:
            if self._child_keys is not None:  # executed again: it continues the group it made before
                return
            raise RuntimeError("this run already has its group")
        self._group_id = groups.create_group(self.run_id, hook=hook, hook_config=hook_config).id

    def spawn_child(self, run_type: str, config: dict[str, Any], *, display_name: str | None = None) -> Run:
        """Create a child run in this run's group; it is dispatched when created."""
        if self._group_id is None:
            self._group_id = groups.create_group(self.run_id).id
        if self._child_keys is not None:  # continuing its group: a child spawned before is not spawned again
            clean = get_registry().validate_config(run_type, config, self.organization_id)
            existing = self._child_keys.get(groups.child_key(run_type, clean))
            if existing is not None:
                return in_transaction(lambda s: s.get(Run, existing))

        def write(s: Any) -> Run:
            child = groups.add_child(self._group_id, run_type, config, display_name=display_name, session=s)
            dispatch_after_commit(s, child.id)
            return child

        child = in_transaction(write)
        self._children += 1
        return child

    @property
    def children_spawned(self) -> int:
        return self._children

    def _continue_group(self) -> None:
        """A parent executed again (its worker was lost while it spawned) continues the group it made: one group
        per parent, and only the children not spawned yet are spawned (:meth:`spawn_child`)."""
        if not self.run.is_group_parent:
            return
        group = groups.group_of(self.run_id)
        if group is None:
            return
        self._group_id, self._children = group.id, group.expected
        self._child_keys = groups.child_keys(group.id)
        self.info(f"Continuing its run group: {group.expected} child run{'' if group.expected == 1 else 's'} "
                  "spawned before; only the missing ones are spawned", "group_continued",
                  group_id=group.id, children=group.expected)

    # assets -------------------------------------------------------------------------
    def asset(self, asset_id: uuid.UUID | str) -> Asset:
        asset = in_transaction(lambda s: s.get(Asset, uuid.UUID(str(asset_id))))
        if asset is None or asset.organization_id != self.organization_id:
            raise NotFound(f"Asset {asset_id} does not exist.")
        return asset

    # internals ----------------------------------------------------------------------
    def _flush(self) -> None:
        self._tracker.flush()


class Heartbeat(threading.Thread):
    """Renews the lease of the run this process executes, and enforces what others decided:

    - a cancel request is passed to ``check_cancelled()``; if the executor has not stopped
      ``CURATORE_CANCEL_GRACE_SECONDS`` later, the run is marked cancelled and this process is killed;
    - a run ended or re-queued by someone else (force-kill, the sweeper) kills this process at once.

    Killing its own process is what makes sure only this run's work is hit: Celery replaces the
    pool process, and a redelivered message finds the run ended and does nothing.

    One thread per executing thread (a prefork pool process has one), started with its first run and kept for
    the next ones (:meth:`watch` a run, :meth:`stop` after it): a thread started and joined for every run cost a
    tenth of a short run's time.
    """

    _of_executor: dict[tuple[int, int], Heartbeat] = {}
    _create_lock = threading.Lock()

    def __init__(self) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self._changed = threading.Condition()
        self._beating = threading.Lock()  # held while a beat runs: stop() waits for it
        self.ctx: JobContext | None = None
        self.interval = self.lease = self.grace = 0.0
        self._due = 0.0
        self._cancel_seen_at: float | None = None

    @classmethod
    def watch(cls, ctx: JobContext, interval: float, lease: float, grace: float) -> Heartbeat:
        """This process's heartbeat, now beating for ``ctx``'s run every ``interval`` seconds."""
        executor = (os.getpid(), threading.get_ident())  # a forked pool process starts its own
        with cls._create_lock:
            beat = cls._of_executor.get(executor)
            new = beat is None or not beat.is_alive()
            if new:
                beat = cls._of_executor[executor] = cls()
        with beat._changed:
            beat.ctx, beat.interval, beat.lease, beat.grace = ctx, interval, lease, grace
            beat._cancel_seen_at = None
            beat._due = time.monotonic() + interval
            # Not woken: it is waiting until its last run's beat was due, or, idle, at most an interval (both
            # before this one's), and then waits on to this due time. A run costs its thread no wake-up.
        if new:
            beat.start()
        return beat

    def stop(self) -> None:
        """No more beats for the run (a beat under way finishes first)."""
        with self._beating, self._changed:
            self.ctx = None

    def run(self) -> None:
        while True:
            with self._changed:
                while self.ctx is None or self._due > time.monotonic():
                    self._changed.wait(self.interval if self.ctx is None else self._due - time.monotonic())
                ctx = self.ctx
                self._due = time.monotonic() + self.interval
            with self._beating:
                if self.ctx is ctx:  # not stopped meanwhile
                    self._beat(ctx)

    def _beat(self, ctx: JobContext) -> None:
        try:
            status, held = service.renew_lease(ctx.run_id, self.lease, ctx.dispatch_attempt)
            if held:
                ctx._held_at = time.monotonic()
                ctx._flush()
        except Exception as exc:  # the database may be briefly away; the lease tells the sweeper
            log.warning("heartbeat for run %s failed: %s", ctx.run_id, exc)
            return
        if not ctx._finishing:
            self._enforce(ctx, status, held)

    def _enforce(self, ctx: JobContext, status: RunStatus, held: bool = True) -> None:
        if not held:
            # The lease is ownership: the run was re-queued (this process froze past its lease, say) or
            # ended; another process may be running it now. Stop before the next unit of work.
            ctx._lost.set()
            log.warning("run %s: this process no longer holds dispatch %s (the run is %s); stopping its process",
                        ctx.run_id, ctx.dispatch_attempt, status.value)
            self._kill(ctx)
        elif status is S.CANCELLING:
            ctx._cancel_seen.set()
            now = time.monotonic()
            self._cancel_seen_at = self._cancel_seen_at or now
            if now - self._cancel_seen_at >= self.grace:
                service.mark_cancelled(ctx.run_id, f"Forced: still running {self.grace:g} s after the cancel "
                                                   "request; its process was killed", stage="forced")
                self._kill(ctx)
        elif status not in (S.RUNNING, S.STALE):
            log.warning("run %s is %s elsewhere; stopping its process", ctx.run_id, status.value)
            self._kill(ctx)

    @staticmethod
    def _kill(ctx: JobContext) -> None:
        if ctx._finishing:
            return
        os.kill(os.getpid(), signal.SIGKILL)


def execute(run_id: str, dispatch_attempt: int, job_key: str, worker: str | None = None) -> str:
    settings = get_settings()
    job_type = get_registry().resolve(job_key)
    rid = uuid.UUID(run_id)
    lease = max(settings.lease_seconds, settings.heartbeat_seconds * 2)
    worker = worker or socket.gethostname()
    if _hand_back_requested.is_set():  # this worker is stopping: the run goes to another one, unstarted
        # (no dispatch pass from here: it could send the run straight back to this worker, still consuming;
        # the other nodes' housekeeping dispatches it within CURATORE_SWEEP_SECONDS)
        service.claim(rid, S.SUBMITTED, dispatch_attempt, S.PENDING, f"Its worker {worker} is stopping; back to "
                      "the queue before it started", event_type=service.HANDED_BACK,
                      values={"celery_task_id": None, "worker_hostname": None})
        return "handed_back"
    run = _start(rid, dispatch_attempt, worker, lease)
    if run is None:
        return "skipped"
    ctx = JobContext(run, job_type, settings, worker)
    beat = Heartbeat.watch(ctx, settings.heartbeat_seconds, lease, settings.cancel_grace_seconds)
    try:
        with patience(lease):  # its writes ride out a database blip of up to a lease
            return _run_executor(ctx)
    finally:
        ctx._finishing = True
        beat.stop()
        ctx._tracker.close()
        # This run's slot is free: let the next one in (a pass only if runs wait).
        if ctx._queue_waiting is None:
            kick_if_waiting(job_type.queue)
        elif ctx._queue_waiting:
            kick(job_type.queue)


def _start(run_id: uuid.UUID, dispatch_attempt: int, worker: str, lease: float) -> Run | None:
    """Start the run, riding out a database blip of up to a lease; if the database stays away, the message goes
    back to the broker (rejected, requeued) instead of being acknowledged with the run left submitted."""
    try:
        with patience(lease):
            return service.start_and_load(run_id, dispatch_attempt, worker, lease)
    except DatabaseUnavailable as exc:
        log.warning("could not start run %s: %s; its message goes back to the queue", run_id, exc.message)
        raise Reject(exc.message, requeue=True) from exc


def _run_executor(ctx: JobContext) -> str:
    job_type, rid = ctx.job_type, ctx.run_id
    try:
        ctx._continue_group()
        config = job_type.config_model.model_validate(ctx.run.config)
        returned = job_type.load_executor()(ctx, config)
        ctx._finishing = True
        ctx.ensure_held()  # a process that froze past its lease and lost the run does not complete it
        ctx._flush()
        results = {**ctx.results, **(returned or {})}
        return _finish(ctx, results)
    except LeaseLost as exc:
        ctx._finishing = True  # the run is someone else's now: nothing more is written to it
        log.warning("run %s: %s; stopped without writing to it", rid, exc.message)
        return "lost"
    except JobHandedBack as exc:
        ctx._finishing = True
        _flush_quietly(ctx)
        _hand_back(ctx, f"{exc.message}: handed back to the queue at a check between units of work; "
                        "another worker continues it")
        return "handed_back"
    except JobCancelled as exc:
        ctx._finishing = True
        ctx._flush()
        service.mark_cancelled(rid, exc.message, stage="acknowledged")
        _seal_after_early_end(ctx)
        return "cancelled"
    except SoftTimeLimitExceeded:
        ctx._finishing = True
        ended = service.time_out(rid, f"Ran longer than the {job_type.label} time limit of {job_type.timeout_seconds} s")
        _seal_after_early_end(ctx)
        _auto_retry(ctx, ended)
        return "timed_out"
    except CuratoreError as exc:
        ctx._finishing = True
        if not _still_held(ctx):
            return "lost"
        _flush_quietly(ctx)
        ended = service.fail(rid, exc.message, results=ctx.results or None)
        _seal_after_early_end(ctx)
        _auto_retry(ctx, ended and exc.retryable)
        return "failed"
    except Exception as exc:
        ctx._finishing = True
        if not _still_held(ctx):
            log.warning("run %s: %s: %s, after this process lost the run", rid, type(exc).__name__, exc)
            return "lost"
        _flush_quietly(ctx)
        log.exception("run %s failed", rid)
        ended = service.fail(rid, f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                             results=ctx.results or None)
        _seal_after_early_end(ctx)
        _auto_retry(ctx, ended)
        return "failed"


def _still_held(ctx: JobContext) -> bool:
    """Whether this process may still end the run (a frozen process that lost it must not)."""
    try:
        ctx.ensure_held()
    except LeaseLost:
        log.warning("run %s: this process no longer holds dispatch %s; its outcome is not recorded", ctx.run_id,
                    ctx.dispatch_attempt)
        return False
    return True


def _hand_back(ctx: JobContext, message: str) -> None:
    """Its worker is stopping: the run goes back to pending at once (not after its lease), for this dispatch
    only; the dispatch pass after ``execute`` sends it to another worker."""
    if service.hand_back(ctx.run_id, ctx.dispatch_attempt, message):
        log.warning("run %s handed back to the queue: its worker %s is stopping", ctx.run_id, ctx.worker)
    elif service.claim(ctx.run_id, S.CANCELLING, ctx.dispatch_attempt, S.CANCELLED, "Stopped at the cancel request "
                       "(its worker is stopping)", context={"stage": "acknowledged"}):
        log.info("run %s: cancelled while its worker stopped", ctx.run_id)
    else:  # ended meanwhile: its status says what happened
        log.info("run %s was not handed back: it is no longer running here", ctx.run_id)


def _auto_retry(ctx: JobContext, eligible: bool) -> None:
    """Per the type's retry policy, a failed or timed-out run gets a new attempt after a backoff."""
    if not eligible or ctx.run.attempt >= ctx.job_type.retry_policy.max_attempts:
        return
    try:
        schedule_retry(ctx.run_id)
    except Exception:  # noqa: BLE001 - the failure itself is recorded; a manual retry remains possible
        log.exception("could not schedule an automatic retry of run %s", ctx.run_id)


def _seal_after_early_end(ctx: JobContext) -> None:
    """A parent that ended early (failed, cancelled, timed out) after spawning children seals its group,
    so the group still ends, once, with its last child (the parent, already ended, keeps its status)."""
    if ctx._group_id is None:
        return
    try:
        groups.seal(ctx._group_id)
    except Exception:  # noqa: BLE001 - the run's own outcome is already recorded
        log.exception("could not seal the run group of run %s", ctx.run_id)


def _flush_quietly(ctx: JobContext) -> None:
    try:
        ctx._flush()
    except Exception:  # noqa: BLE001 - the failure itself is what gets recorded
        pass


def _finish(ctx: JobContext, results: dict[str, Any]) -> str:
    rid = ctx.run_id
    # A run that never made a group (this time, or in an earlier delivery) has none to read.
    group = groups.group_of(rid) if ctx._group_id is not None or ctx.run.is_group_parent else None
    if group is not None:
        service.set_results(rid, results)
        n = ctx.children_spawned
        service.add_log(rid, LogLevel.INFO, "children_spawned",
                        f"Spawned {n} child run{'' if n == 1 else 's'}; the run ends when its children have ended",
                        {"children": n})
        groups.seal(group.id)
        return "sealed"
    # The usual case, a run in no group, in one statement (PostgreSQL; a group's child ends in a transaction,
    # with its group's count).
    waiting = service.complete_alone(rid, results) if ctx.run.group_id is None else None
    if waiting is not None:
        ctx._queue_waiting = waiting
        return "completed"

    def complete(s: Any) -> bool:
        done = service.complete(rid, results, session=s)
        waiting = s.info.get(service.QUEUE_WAITING, {}).get(rid)  # read back by the completing UPDATE
        ctx._queue_waiting = dispatcher.waiting(s, ctx.job_type.queue) if waiting is None else waiting
        return done

    if in_transaction(complete):
        return "completed"
    if service.mark_cancelled(rid, "Finished its work after the cancel request; kept as cancelled"):
        return "cancelled"
    return "refused"
