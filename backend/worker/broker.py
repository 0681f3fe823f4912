"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, tuned.

kombu passes every transport option of its SQLAlchemy transport to
``create_engine``, so the polling interval cannot be set as an option; this
subclass sets it (0.1 s instead of 1 s) and opens SQLite in WAL mode with a
busy timeout. The
URL scheme ``curatore-sqla+sqlite:///path`` selects it.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from sqlalchemy import event
from kombu.transport.sqlalchemy import Channel as _Channel
from kombu.transport.sqlalchemy import Transport as _Transport

ALIAS = "curatore-sqla"


class Channel(_Channel):
    def _engine_from_config(self):  # type: ignore[no-untyped-def]
        engine = super()._engine_from_config()
        if engine.dialect.name == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Transport(_Transport):
    Channel = Channel
    polling_interval = 0.1


TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
