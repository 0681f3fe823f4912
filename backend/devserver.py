"""``curatore dev``: the web app, a worker and the scheduler in one process group.

Each child gets its own process group; on Ctrl-C, SIGTERM, or the death of any
child, every group gets SIGTERM, then SIGKILL after a grace period (a Reflex
process does not always stop on SIGTERM).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from backend.auth.bootstrap import ensure_first_admin
from backend.auth.orgs import ensure_org
from backend.config import PROJECT_ROOT, get_settings
from backend.db.migrate import upgrade
from backend.demo.servers import DEMO_SERVERS, demo_environment

GRACE_SECONDS = 8.0
DEMO_PORTS_FROM = 8701  # the stand-ins of Graph, SAM.gov, a forecast API and a website: 8701-8704 for --port 3000


def demo_servers_port(port: int) -> int:
    """The first of the demo servers' ports for an app on ``port``: a block of its own for each app port (8701
    for 3000, 8705 for 3001, 8801 for 3025, ...), so instances on different ports never share one; the next free
    block when those are taken."""
    base = DEMO_PORTS_FROM + ((port - 3000) * len(DEMO_SERVERS)) % 40_000
    for _ in range(1000):
        if all(_free(base + i) for i in range(len(DEMO_SERVERS))):
            return base
        base = DEMO_PORTS_FROM + (base - DEMO_PORTS_FROM + len(DEMO_SERVERS)) % 40_000
    raise OSError("no free ports for the demo servers")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def children(port: int, backend_port: int, ui: bool, reload: bool = False, host: str = "127.0.0.1",
             demo_port: int | None = None) -> list[Child]:
    settings = get_settings()
    py = sys.executable
    result = [
        Child("worker", [py, "-m", "backend.cli", "worker", "--concurrency", "4", "-n", f"dev-{port}@%h"]),
        Child("scheduler", [py, "-m", "backend.cli", "scheduler"]),
        Child("demo servers", [py, "-m", "backend.demo.servers", "--port", str(demo_port or demo_servers_port(port))]),
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
    demo_port = demo_servers_port(port)
    print(f"curatore dev: demo servers on ports {demo_port}-{demo_port + len(DEMO_SERVERS) - 1}", flush=True)
    procs = children(port, backend_port, ui, reload, host, demo_port)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    env = reflex_env()
    env.update(demo_environment(demo_port, env))  # the samples' connections point at the demo servers
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


# --------------------------------------------------------------------------- curatore serve (production web)


def serve_command(port: int, host: str, workers: int | None, backend_only: bool) -> tuple[list[str], dict[str, str]]:
    """The Reflex production server ``curatore serve`` runs, and its environment.

    One port serves the built frontend, the websocket and the API (``--backend-only``: the websocket and the
    API, for a proxy that serves the frontend build itself). With ``CURATORE_REDIS_URL`` set, Reflex keeps client
    state and socket ownership in that Redis (``REFLEX_REDIS_URL``, unless set otherwise), so several backend
    processes, on this machine (``--workers``) or others, serve the same clients; each process's live bridge
    pushes only to the sockets it holds. Without Redis there is one backend process."""
    settings = get_settings()
    env = reflex_env()
    if settings.redis_url:
        env.setdefault("REFLEX_REDIS_URL", settings.redis_url)
    # Reflex empties its states folder when it starts: one per port, so servers started together on one host
    # do not delete each other's files.
    env.setdefault("REFLEX_STATES_WORKDIR", str(settings.data_dir / f"reflex-states-{port}"))
    if workers is not None:
        if workers < 1:
            raise ValueError("--workers must be at least 1.")
        if workers > 1 and not env.get("REFLEX_REDIS_URL"):
            raise ValueError("Several backend processes share client state through Redis: set CURATORE_REDIS_URL "
                             "(or REFLEX_REDIS_URL), or use --workers 1.")
        env["GRANIAN_WORKERS"] = str(workers)
    argv = [sys.executable, "-m", "reflex", "run", "--env", "prod", "--backend-host", host, "--loglevel", "info"]
    if backend_only:
        argv += ["--backend-only", "--backend-port", str(port)]
    else:
        argv += ["--single-port", "--frontend-port", str(port), "--backend-port", str(port)]
    return argv, env


def run_serve(port: int, host: str, workers: int | None, backend_only: bool) -> None:
    """Replace this process with the Reflex production server (signals reach it directly)."""
    argv, env = serve_command(port, host, workers, backend_only)
    get_settings().ensure_dirs()
    os.chdir(PROJECT_ROOT)
    os.execve(argv[0], argv, env)
