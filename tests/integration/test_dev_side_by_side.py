"""Two ``curatore dev`` on one machine, each with its own --port and data folder, run side by side: each
derives its demo servers' ports from its own --port (or the next free ones) and prints them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.processes import ROOT, free_port, stop_group

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def start_dev(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATORE_")}
    env |= {"CURATORE_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "backend.cli", "dev", "--no-ui", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def demo_ports(log: Path, proc: subprocess.Popen[bytes], timeout: float = 90) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        found = re.search(r"demo servers on ports (\d+)-(\d+)", text)
        if found and "graph " in text:
            return int(found.group(1)), int(found.group(2))
        assert proc.poll() is None, text[-3000:]
        time.sleep(0.2)
    raise TimeoutError(log.read_text(errors="replace")[-3000:])


def test_two_dev_instances_run_side_by_side(tmp_path: Path) -> None:
    port_a = free_port()
    port_b = port_a + 1
    procs = []
    try:
        for name, port in (("a", port_a), ("b", port_b)):
            (tmp_path / name).mkdir()
            procs.append((start_dev(tmp_path / name, port, tmp_path / f"{name}.log"), tmp_path / f"{name}.log"))
        ranges = [demo_ports(log, proc) for proc, log in procs]
        (a_first, a_last), (b_first, b_last) = ranges
        assert a_last - a_first == b_last - b_first == 3
        assert a_last < b_first or b_last < a_first, ranges  # no port shared
        for first, _ in ranges:  # each instance's SharePoint stand-in answers on its own port
            with urllib.request.urlopen(f"http://127.0.0.1:{first}/v1.0/drives/drive-demo/root/delta", timeout=5) as r:
                assert r.status == 200
        time.sleep(2)
        for proc, log in procs:
            assert proc.poll() is None, log.read_text(errors="replace")[-3000:]  # neither died on a taken port
    finally:
        for proc, _ in procs:
            stop_group(proc, signal.SIGINT, 20)
    for proc, log in procs:
        assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
