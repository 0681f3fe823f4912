"""Shared fixtures: a fresh migrated database per test, on SQLite and on PostgreSQL,
and real Celery worker processes.

PostgreSQL and Redis tests skip with a visible reason when those servers are
unreachable, except under ``CI=true``, where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.processes import stop_group

ROOT = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("CURATORE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CURATORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
TEMPLATE_DB = f"curatore_test_template_{os.getpid()}"  # one per test run: parallel runs do not collide


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL unreachable at {PG_ADMIN_URL}: {exc}"


def _redis_reachable() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"Redis unreachable at {REDIS_URL}: {exc}"


def require(reason: str | None) -> None:
    """Skip (locally) or fail (under CI=true) when a needed server is missing."""
    if reason is None:
        return
    if CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def _sqlalchemy_pg_url(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


@dataclass
class Backend:
    """One test's database, broker and data folder, and the environment that points at them."""

    kind: str
    database_url: str
    broker_url: str
    redis_url: str | None
    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    saved: dict[str, str | None] = field(default_factory=dict)  # this process's values, put back after the test

    def extend(self, env: dict[str, str]) -> None:
        """More environment for this test: in this process, and in the workers started afterwards."""
        for key in env:
            self.saved.setdefault(key, os.environ.get(key))
        self.env.update(env)
        self.apply()

    def apply(self) -> None:
        os.environ.update(self.env)
        if self.redis_url is None:
            os.environ.pop("CURATORE_REDIS_URL", None)
        reset_process_state()


def restore_environ(saved: dict[str, str | None]) -> None:
    """Put back environment variables as ``saved`` recorded them (None: it was unset)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def reset_process_state() -> None:
    """Forget cached settings, registry, database pools and broker connections (after an env change)."""
    from backend.config import reset_settings
    from backend.db.engine import dispose_engines
    from backend.jobtypes.registry import reset_registry

    reset_settings()
    reset_registry()
    dispose_engines()
    _reset_celery_app()


def _reset_celery_app() -> None:
    """Point the already-imported Celery app at this test's broker (the worker's tasks too, when loaded)."""
    if "backend.queues.celery_link" in sys.modules:
        from kombu import pools

        from backend.queues.celery_link import celery_app, configure

        if celery_app._pool is not None:
            celery_app._pool.force_close_all()
        celery_app._pool = None
        celery_app.amqp._producer_pool = None
        pools.reset()
        configure(celery_app)
    if "backend.worker.celery_app" in sys.modules:
        from backend.worker.celery_app import celery_app as worker_app
        from backend.worker.celery_app import configure as configure_worker

        configure_worker(worker_app)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from backend.db.migrate import upgrade

    path = tmp_path_factory.mktemp("template") / "curatore.db"
    upgrade(f"sqlite:///{path}")
    from backend.db.engine import dispose_engines

    dispose_engines()
    return path


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    require(_pg_reachable())
    from backend.db.migrate import upgrade

    _pg_admin(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{TEMPLATE_DB}"')
    url = _sqlalchemy_pg_url(TEMPLATE_DB)
    upgrade(url)
    from backend.db.engine import dispose_engines

    dispose_engines()
    yield TEMPLATE_DB
    _pg_admin(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)')


def _make_backend(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if kind == "sqlite":
        template = request.getfixturevalue("_sqlite_template")
        shutil.copy(template, data_dir / "curatore.db")
        backend = Backend(
            kind,
            database_url=f"sqlite:///{data_dir / 'curatore.db'}",
            broker_url=f"curatore-sqla+sqlite:///{data_dir / 'broker.db'}",
            redis_url=None,
            data_dir=data_dir,
        )
        dbname = None
    else:
        template = request.getfixturevalue("_pg_template")
        require(_redis_reachable())
        dbname = f"curatore_t_{uuid.uuid4().hex[:12]}"
        _pg_admin(f'CREATE DATABASE "{dbname}" TEMPLATE "{template}"')
        backend = Backend(
            kind,
            database_url=_sqlalchemy_pg_url(dbname),
            broker_url=REDIS_URL,
            redis_url=REDIS_URL,
            data_dir=data_dir,
        )
    backend.env = {
        "CURATORE_ENV": "test",
        "CURATORE_DATA_DIR": str(data_dir),
        "CURATORE_DATABASE_URL": backend.database_url,
        "CURATORE_BROKER_URL": backend.broker_url,
        "CURATORE_HEARTBEAT_SECONDS": "1",
        "CURATORE_PROGRESS_MIN_INTERVAL": "0.05",
    }
    if backend.redis_url:
        backend.env["CURATORE_REDIS_URL"] = backend.redis_url
        backend.env["CURATORE_BROKER_KEY_PREFIX"] = f"{dbname}:"
    backend.saved = {k: os.environ.get(k) for k in [*backend.env, "CURATORE_REDIS_URL"]}
    backend.apply()
    try:
        yield backend
    finally:
        from backend.db.engine import dispose_engines

        dispose_engines()
        restore_environ(backend.saved)
        if dbname:
            _pg_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, migrated database (and broker) for this test, on each backend."""
    yield from _make_backend(request.param, tmp_path, request)


@pytest.fixture
def sqlite_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend("sqlite", tmp_path, request)


@pytest.fixture
def pg_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _make_backend("postgres", tmp_path, request)


@pytest.fixture
def org(backend: Backend):  # type: ignore[no-untyped-def]
    from backend.auth.orgs import ensure_org

    return ensure_org("acme", "Acme")


# --------------------------------------------------------------------------- real worker processes


class WorkerProcess:
    """A real ``curatore worker`` subprocess, in its own process group."""

    def __init__(self, backend: Backend, log_path: Path, concurrency: int = 2, queues: str | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "backend.cli", "worker", "--concurrency", str(concurrency),
                "-n", f"test-{uuid.uuid4().hex[:8]}@%h", "--loglevel", "info"]
        if queues:
            argv += ["--queues", queues]
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115
        env = {**os.environ, **backend.env, **(extra_env or {}), "PYTHONUNBUFFERED": "1"}
        if backend.redis_url is None:
            env.pop("CURATORE_REDIS_URL", None)
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            if " ready." in self.output():
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Cold shutdown (SIGQUIT: the tests are done with it), then SIGKILL to the group."""
        stop_group(self.proc, signal.SIGQUIT, 15)
        self._log.close()


@pytest.fixture
def start_worker(backend: Backend, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**kwargs: object) -> WorkerProcess:
        worker = WorkerProcess(backend, tmp_path / f"worker-{len(started)}.log", **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One real worker with two processes, consuming every queue."""
    return start_worker()
