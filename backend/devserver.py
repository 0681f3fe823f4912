"""``curatore dev``: the web app, a worker and the scheduler in one process group.

Each child gets its own process group; on Ctrl-C, SIGTERM, or the death of any
child, every group gets SIGTERM, then SIGKILL after a grace period (a Reflex
process does not always stop on SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from backend.auth.bootstrap import ensure_first_admin
from backend.auth.orgs import ensure_org
from backend.config import PROJECT_ROOT, get_settings
from backend.db.migrate import upgrade
from backend.demo.servers import demo_environment

GRACE_SECONDS = 8.0
DEMO_SERVERS_PORT = 8701  # local stand-ins of Graph, SAM.gov, a forecast API and a website, for the samples


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None


def reflex_env() -> dict[str, str]:
    """Environment for running Reflex on these machines (offline: the system's bun)."""
    env = dict(os.environ)
    env.setdefault("REFLEX_TELEMETRY_ENABLED", "false")
    env.setdefault("REFLEX_CHECK_LATEST_VERSION", "false")
    env.setdefault("REFLEX_USE_SYSTEM_BUN", "1")
    tools_bin = PROJECT_ROOT / ".tools" / "node_modules" / ".bin"
    if tools_bin.is_dir():
        env["PATH"] = f"{tools_bin}{os.pathsep}{env.get('PATH', '')}"
    return env


def children(port: int, backend_port: int, ui: bool, reload: bool = False, host: str = "127.0.0.1") -> list[Child]:
    settings = get_settings()
    py = sys.executable
    result = [
        Child("worker", [py, "-m", "backend.cli", "worker", "--concurrency", "4", "-n", "dev@%h"]),
        Child("scheduler", [py, "-m", "backend.cli", "scheduler"]),
        Child("demo servers", [py, "-m", "backend.demo.servers", "--port", str(DEMO_SERVERS_PORT)]),
    ]
    if ui and reload:  # Reflex's dev mode: hot reload, frontend and backend on two ports
        result.append(Child("ui", [py, "-m", "reflex", "run", "--frontend-port", str(port),
                                   "--backend-port", str(backend_port), "--backend-host", host,
                                   "--loglevel", "info"]))
    elif ui:  # one port, a production build, no file watcher
        result.append(Child("ui", [py, "-m", "reflex", "run", "--env", "prod", "--single-port",
                                   "--frontend-port", str(port), "--backend-port", str(port), "--backend-host", host,
                                   "--loglevel", "info"]))
    settings.ensure_dirs()
    return result


def run_dev(port: int = 3000, backend_port: int = 8000, ui: bool = True, reload: bool = False,
            host: str = "127.0.0.1") -> int:
    upgrade()
    settings = get_settings()
    org = ensure_org(settings.default_org_slug, "Demo")
    email, password = ensure_first_admin(org, settings.data_dir)
    print(f"curatore dev: database ready; organization '{org.slug}'", flush=True)
    procs = children(port, backend_port, ui, reload, host)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    env = reflex_env()
    env.update(demo_environment(DEMO_SERVERS_PORT, env))  # the samples' connections point at the demo servers
    env.setdefault("CURATORE_ALLOW_PRIVATE_FETCH", "true")  # the samples fetch from the local demo servers
    for child in procs:
        child.proc = subprocess.Popen(child.argv, cwd=PROJECT_ROOT, env=env, start_new_session=True)
        print(f"curatore dev: started {child.name} (pid {child.proc.pid})", flush=True)
    if ui:
        print(f"curatore dev: open http://localhost:{port}/ and sign in as {email} with password "
              f"{password or '(the one you set)'}", flush=True)
    code = 0
    while not stopping:
        for child in procs:
            if child.proc and child.proc.poll() is not None:
                print(f"curatore dev: {child.name} exited with {child.proc.returncode}; stopping", flush=True)
                code = child.proc.returncode or 1
                stopping = True
        time.sleep(0.3)
    stop_all(procs)
    return code


def stop_all(procs: list[Child]) -> None:
    """SIGTERM to each child (it stops its own), then SIGKILL to every group after the grace period."""
    for child in procs:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for child in procs:
        if child.proc is None:
            continue
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(child, signal.SIGKILL)
        child.proc.wait()


def _signal_group(child: Child, sig: int) -> None:
    if child.proc is None:
        return
    try:
        os.killpg(child.proc.pid, sig)
    except ProcessLookupError:
        pass
