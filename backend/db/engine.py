"""The database engine and transactions.

SQLite (the embedded default) is opened in WAL mode with a busy timeout, and
every transaction that may write starts with ``BEGIN IMMEDIATE`` so that concurrent
processes queue for the write lock instead of failing with "database is locked".
A read-only transaction (``in_transaction(..., read_only=True)``) starts with a plain
``BEGIN``: in WAL mode it reads a snapshot without taking the write lock, so status
checks and pages do not keep a cancel or another writer waiting.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import (DBAPIError, InvalidatePoolError, InvalidRequestError, OperationalError,
                            ProgrammingError)
from sqlmodel import Session

from backend.config import get_settings
from backend.errors import DatabaseNotMigrated, DatabaseUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)
_lock = threading.Lock()
RETRYABLE_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock
_engines: dict[str, Engine] = {}
_autocommit_engines: dict[Engine, Engine] = {}
READ_ONLY = "curatore_read_only"  # execution option: the transaction only reads


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            private_file(Path(path))
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    settings = get_settings()
    engine = create_engine(url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                           connect_args={"connect_timeout": 5})
    _ping_when_idle(engine)
    return engine


IDLE_PING_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's ``pool_pre_ping``, for connections that sat in the pool ``IDLE_PING_SECONDS`` or more: a
    database restart is noticed on checkout (the pool is then renewed), while a connection handed straight back
    and forth under load costs no extra round trip per transaction (a ping was one of a run's seven)."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection, record):  # type: ignore[no-untyped-def]
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection, record, _proxy):  # type: ignore[no-untyped-def]
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # noqa: BLE001 - any failure: this connection (and those before it) are gone
            raise InvalidatePoolError(f"ping failed: {exc}") from exc


def private_file(path: Path) -> None:
    """Make sure ``path`` exists readable by its owner only (0600, in a folder created 0700); SQLite gives
    its -wal and -shm files the database file's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url)
        return engine


def dispose_engines() -> None:
    """Close every pool (after a fork, or between tests)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _autocommit_engines.clear()


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once the transaction that ``session`` belongs to has committed."""
    session.info.setdefault("after_commit", []).append(callback)


@contextmanager
def transaction(read_only: bool = False) -> Iterator[Session]:
    """One database transaction: committed on success, rolled back on error.

    Callbacks registered with :func:`after_commit` run after the commit. ``read_only``: it must not write.
    """
    with _translated_errors():
        engine = get_engine()
        bind = engine.execution_options(**{READ_ONLY: True}) if read_only else engine
        with Session(bind, expire_on_commit=False) as session:
            with session.begin():
                yield session
            callbacks = session.info.pop("after_commit", [])
    for callback in callbacks:
        callback()


@contextmanager
def _translated_errors() -> Iterator[None]:
    """A missing schema and an unreachable database raised as :class:`DatabaseNotMigrated` and
    :class:`DatabaseUnavailable` (clear errors, and what :func:`patience` waits out)."""
    try:
        yield
    except (OperationalError, ProgrammingError) as exc:
        if _is_missing_table(exc):
            raise DatabaseNotMigrated(
                "The database has no Curatore tables (or an old schema): run `curatore migrate`."
            ) from exc
        if isinstance(exc, OperationalError) and _is_connection_error(exc):
            raise DatabaseUnavailable(f"The database could not be reached: {_first_line(exc.orig)}") from exc
        raise


def in_transaction(fn: Callable[[Session], T], session: Session | None = None, *, read_only: bool = False) -> T:
    """Run ``fn`` in ``session`` if given, else in a new transaction retried on deadlock (and, inside
    :func:`patience`, retried while the database cannot be reached).

    ``read_only=True`` for a ``fn`` that only reads: on SQLite it then does not queue for the write lock.
    """
    if session is not None:
        return fn(session)
    return _retried(lambda: _in_session(fn, read_only))


def _in_session(fn: Callable[[Session], T], read_only: bool) -> T:
    with transaction(read_only) as new_session:
        return fn(new_session)


def _retried(fn: Callable[[], T]) -> T:
    """``fn``, tried again (up to six times, after a doubling wait) when the database broke a deadlock or a
    serialization conflict by failing it, and, inside :func:`patience`, while the database cannot be reached."""
    waited = _Patience()
    while True:
        try:
            return _retried_on_conflict(fn)
        except DatabaseUnavailable as exc:
            waited.wait_or_raise(exc)


def _retried_on_conflict(fn: Callable[[], T]) -> T:
    for attempt in range(6):
        try:
            return fn()
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) not in RETRYABLE_SQLSTATES or attempt == 5:
                raise
            time.sleep(0.02 * 2**attempt)
    raise AssertionError("unreachable")


def lone_statement(statement: Any, params: dict[str, Any]) -> Any:
    """PostgreSQL: ``statement`` as a transaction of its own, its first row returned. It is sent in autocommit
    mode (PostgreSQL runs a lone statement atomically, in an implicit transaction), without a Session: one
    round trip instead of three (BEGIN, the statement, COMMIT), and none of a Session's bookkeeping. For the
    hot transitions that are one statement (a run's start and end). Retried and waited out like
    :func:`in_transaction`; nothing runs after a commit (the caller does what it needs). The statement goes
    straight to the driver (:class:`_Driven`), unless something listens to the engine's statements."""

    engine = get_engine()

    def once() -> Any:
        with _translated_errors():
            driven = None if _watched(engine) else _driven(engine, statement)
            if driven is not None:
                return driven.run(engine, params)
            with _autocommit(engine).connect() as connection:
                return connection.execute(statement, params).first()

    return _retried(once)


class LoneRow:
    """A row of :func:`lone_statement`: its columns as attributes, and ``_mapping`` (as a SQLAlchemy ``Row``)."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping

    def __getattr__(self, name: str) -> Any:
        try:
            return self._mapping[name]
        except KeyError:
            raise AttributeError(name) from None


class _Driven:
    """A statement compiled once and sent straight to the driver, on a pooled connection in autocommit mode: what
    SQLAlchemy's ``Connection.execute`` does for it (its parameters' and columns' type conversions; errors
    wrapped as SQLAlchemy's, a lost connection invalidated), without a ``Connection`` and a ``Result`` around
    it (half of a hot statement's CPU in the process sending it)."""

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string.encode()  # bytes, hashed once: psycopg's cache of converted queries is keyed by it
        self.embedded = compiled.params  # the values written into the statement
        self.required = frozenset(name for bind, name in compiled.bind_names.items() if bind.required)
        self.binds = [(name, process) for bind, name in compiled.bind_names.items()
                      if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None]
        self.columns = [(column.key, column.type.dialect_impl(dialect).result_processor(dialect, None))
                        for column in statement.selected_columns]

    def run(self, engine: Engine, params: dict[str, Any]) -> LoneRow | None:
        if not self.required <= params.keys():
            raise InvalidRequestError(f"A value is required for {', '.join(sorted(self.required - params.keys()))}")
        values = self.embedded | params
        for name, process in self.binds:
            values[name] = process(values[name])
        error = engine.dialect.loaded_dbapi.Error
        try:
            pooled = engine.raw_connection()
        except error as exc:  # refused (too many connections, the server away): as Engine.connect() raises it
            raise DBAPIError.instance(None, None, exc, error, dialect=engine.dialect,
                                      connection_invalidated=engine.dialect.is_disconnect(exc, None, None)) from exc
        connection = pooled.driver_connection
        try:
            connection.autocommit = True
            try:
                with connection.cursor() as cursor:
                    cursor.execute(self.sql, values)
                    row = cursor.fetchone()
            finally:
                connection.autocommit = False
        except error as exc:
            lost = engine.dialect.is_disconnect(exc, connection, None)
            if lost:  # as SQLAlchemy does: this connection, and the pool's others (opened before the loss), go
                pooled.invalidate(exc)
                engine.dispose()
            raise DBAPIError.instance(self.sql.decode(), values, exc, error, dialect=engine.dialect,
                                      connection_invalidated=lost) from exc
        finally:
            pooled.close()
        if row is None:
            return None
        return LoneRow({key: value if process is None or value is None else process(value)
                        for (key, process), value in zip(self.columns, row, strict=True)})


_driven_statements: dict[tuple[int, int], tuple[Any, _Driven | None]] = {}
DRIVEN_CACHE_SIZE = 256


def _driven(engine: Engine, statement: Any) -> _Driven | None:
    """The :class:`_Driven` form of ``statement`` (a ``SELECT``, PostgreSQL), kept while ``statement`` lives (the
    hot statements are built once); None for one it cannot take."""
    key = (id(engine.dialect), id(statement))
    cached = _driven_statements.get(key)
    if cached is not None and cached[0] is statement:
        return cached[1]
    if len(_driven_statements) >= DRIVEN_CACHE_SIZE:
        _driven_statements.clear()
    driven = None
    if engine.dialect.name == "postgresql" and hasattr(statement, "selected_columns"):
        if engine.dialect.server_version_info is None:  # compiled as Connection.execute would: after a connect
            engine.connect().close()
        driven = _Driven(statement, engine.dialect)
        if b"POSTCOMPILE" in driven.sql:  # an IN list, expanded at each execution: SQLAlchemy's to make
            driven = None
    _driven_statements[key] = (statement, driven)
    return driven


def _watched(engine: Engine) -> bool:
    """Whether something listens to the engine's statements (a test counting them, a tracer): then a lone statement
    goes through SQLAlchemy's ``Connection``, which tells them."""
    return bool(engine.dispatch.before_cursor_execute or engine.dispatch.after_cursor_execute)


def _autocommit(engine: Engine) -> Engine:
    """``engine`` with its connections in autocommit mode (the same pool: a connection is switched on checkout
    and back on checkin, in the driver, without a round trip)."""
    autocommit = _autocommit_engines.get(engine)
    if autocommit is None:
        autocommit = _autocommit_engines[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return autocommit


# --------------------------------------------------------------------------- riding out a database blip

_patience = threading.local()
PATIENCE_FIRST_WAIT = 0.1
PATIENCE_MAX_WAIT = 2.0


@contextmanager
def patience(seconds: float) -> Iterator[None]:
    """In this thread, a transaction that cannot reach the database (:class:`DatabaseUnavailable`: a restart,
    "too many clients") is tried again, with a doubling wait (0.1 s up to 2 s), for up to ``seconds`` before the
    error is raised. A job's thread runs inside it (``backend.worker.base.execute``: up to the lease), so its
    progress, log, asset and final writes ride out a blip; other threads (heartbeats) keep failing fast."""
    previous = getattr(_patience, "seconds", 0.0)
    _patience.seconds = seconds
    try:
        yield
    finally:
        _patience.seconds = previous


class _Patience:
    """One transaction's waiting, within this thread's :func:`patience`."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.wait = PATIENCE_FIRST_WAIT

    def wait_or_raise(self, exc: DatabaseUnavailable) -> None:
        seconds = getattr(_patience, "seconds", 0.0)
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + seconds
            if seconds > 0:
                log.warning("%s; trying again for up to %.0f s", exc.message, seconds)
        if now >= self.deadline:
            raise exc
        time.sleep(min(self.wait, self.deadline - now))
        self.wait = min(self.wait * 2, PATIENCE_MAX_WAIT)


def _first_line(error: object) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _is_missing_table(exc: OperationalError | ProgrammingError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate in ("42P01", "42703") or "no such table" in str(exc.orig) or "no such column" in str(exc.orig)


def _is_connection_error(exc: OperationalError) -> bool:
    return bool(getattr(exc, "connection_invalidated", False)) or "connect" in str(exc.orig).lower()
