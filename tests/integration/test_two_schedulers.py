"""Two ``curatore scheduler`` processes at once (a second one started for failover, or by mistake): every
occurrence of a scheduled task still starts one run (each tick claims an occurrence with one conditional
UPDATE; the loser changes nothing)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Backend, WorkerProcess
from tests.processes import ROOT, stop_group
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_second_scheduler_beside_the_first_doubles_no_scheduled_run(pg_backend: Backend, tmp_path: Path) -> None:
    from backend import schedules

    worker = WorkerProcess(pg_backend, tmp_path / "worker.log")
    beats = []
    for n in (1, 2):
        data_dir = tmp_path / f"scheduler-{n}"  # each keeps its own beat state, as on its own host
        data_dir.mkdir()
        env = {**os.environ, **pg_backend.env, "CURATORE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        log = open(tmp_path / f"scheduler-{n}.log", "wb")  # noqa: SIM115 - closed below
        beats.append((subprocess.Popen([sys.executable, "-m", "backend.cli", "scheduler", "-l", "info"], cwd=ROOT,
                                       env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))
    try:
        worker.wait_ready()

        def ticks_done() -> int:
            return len(re.findall(r"Task curatore\.scheduler\.tick\[[^\]]+\] succeeded", worker.output()))

        # Each scheduler sends a tick at start and every 10 s: wait for two from each.
        wait_for(lambda: ticks_done() >= 4, timeout=90, interval=0.5, what="four ticks from two schedulers")
        sent = [len(re.findall(r"Sending due task", (tmp_path / f"scheduler-{n}.log").read_text())) for n in (1, 2)]
        assert all(count >= 1 for count in sent), sent  # both schedulers really ticked
    finally:
        for proc, log in beats:
            stop_group(proc, signal.SIGTERM, 10)
            log.close()
        worker.stop()
    assert len(schedules.history("maintenance-hourly")) == 1
    assert len(schedules.history("retention-daily")) == 1
