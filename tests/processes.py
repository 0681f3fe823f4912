"""The app's processes for browser tests and benchmarks: the Reflex UI, restartable."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stop_group(proc: subprocess.Popen[bytes], sig: int, grace: float) -> None:
    """Signal a process (it stops its own children), wait ``grace`` seconds, then SIGKILL its whole group."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_answering(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float) -> None:
    """Until the Reflex app at ``url`` answers ``/ping`` (its output in the error when it exits or does not)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the app did not answer within {timeout} s:\n{log_path.read_text()[-4000:]}")


class UIProcess:
    """The Reflex app (`curatore dev`'s UI child), restartable."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        from backend.devserver import children, reflex_env

        self.env = {**reflex_env(), **env}
        self.port = port
        self.argv = next(c.argv for c in children(port, port, ui=True) if c.name == "ui")
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        wait_answering(self.proc, self.url, self.log_path, timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, signal.SIGTERM, 10)
