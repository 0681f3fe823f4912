"""Broker transports: the embedded SQLite one, and kombu's Redis transport made to survive a restart.

The embedded broker is kombu's SQLAlchemy transport on a SQLite file, tuned. kombu passes every transport
option of its SQLAlchemy transport to ``create_engine``, so the polling interval cannot be set as an option;
this subclass sets it (0.1 s instead of 1 s) and opens SQLite in WAL mode with a busy timeout. The URL
scheme ``curatore-sqla+sqlite:///path`` selects it.

For ``redis://`` URLs, ``celery_app`` sets Celery's ``broker_transport`` to ``curatore-redis``: see
:class:`RedisChannel`.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from queue import Empty
from time import monotonic

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as _redis
from kombu.transport import virtual as _virtual
from kombu.transport.sqlalchemy import Channel as _Channel
from kombu.transport.sqlalchemy import Transport as _Transport
from sqlalchemy import event

from backend.db.engine import private_file

ALIAS = "curatore-sqla"
logger = logging.getLogger(__name__)


class QoS(_virtual.QoS):
    """kombu's QoS, which also wakes the consuming loop when a delivery is acknowledged (see :class:`Transport`)."""

    def ack(self, delivery_tag: object) -> None:
        super().ack(delivery_tag)
        self.channel.connection.slot_freed.set()

    def reject(self, delivery_tag: object, requeue: bool = False) -> None:
        super().reject(delivery_tag, requeue=requeue)
        self.channel.connection.slot_freed.set()


class Channel(_Channel):
    QoS = QoS

    def _engine_from_config(self):  # type: ignore[no-untyped-def]
        engine = super()._engine_from_config()
        if engine.dialect.name == "sqlite":
            if engine.url.database and engine.url.database != ":memory:":
                try:
                    private_file(Path(engine.url.database))  # queued messages carry run ids and configs
                except OSError:
                    pass  # a path that cannot be a file: SQLite's own error says so when the broker opens it
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Transport(_Transport):
    """The SQLite transport, polled every 0.1 s while its queues are empty, and again at once when a task ends.

    kombu's polling loop sleeps a whole interval whenever it gets nothing, also when it got nothing because the
    worker's processes were all busy (the prefetch limit): then a process that finished its task 2 ms later
    waited up to 100 ms for its next one. Here that wait ends when a delivery is acknowledged."""

    Channel = Channel
    polling_interval = 0.1

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.slot_freed = threading.Event()

    def drain_events(self, connection: object, timeout: float | None = None) -> None:
        started = monotonic()
        interval = self.polling_interval
        if timeout and interval and interval > timeout:
            interval = timeout
        while True:
            self.slot_freed.clear()  # an ack from now on ends the wait below at once
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                if timeout is not None and monotonic() - started >= timeout:
                    raise socket.timeout() from None
                self.slot_freed.wait(interval)


TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"


class RedisQoS(_redis.QoS):
    """Acknowledgements through a channel whose connection broke are dropped, not fatal.

    A task that was running while the connection broke finishes after the consumer has reconnected on
    a new channel; its late ack still goes to the old one. The message then stays unacknowledged in
    Redis, and a later redelivery of it does nothing: only the run's current dispatch attempt starts.
    """

    def ack(self, delivery_tag: object) -> None:
        if self.channel.detached:
            logger.warning("ack of delivery %s dropped: its broker connection was lost", delivery_tag)
            return
        super().ack(delivery_tag)

    def reject(self, delivery_tag: object, requeue: bool = False) -> None:
        if self.channel.detached:
            logger.warning("reject of delivery %s dropped: its broker connection was lost", delivery_tag)
            return
        super().reject(delivery_tag, requeue=requeue)


class RedisChannel(_redis.Channel):
    QoS = RedisQoS
    """kombu's Redis channel, whose ``close()`` can be called again after its connection was collected.

    When the broker connection drops while a task is in flight (acks_late), Celery's consumer first
    ``collect()``s the connection: closing the channel there fails on the dead socket before the channel
    counts as closed, and the transport is detached from its client. Celery then closes the connection
    again, and the channel, trying once more to put the unacknowledged message back, builds a Redis pool
    from the detached transport: ``AttributeError`` on ``None.hostname``, which Celery treats as
    unrecoverable, and the worker stops consuming for good (celery 5.7.0, kombu 5.7.0).

    Here a channel whose transport has lost its client closes without that restore. Nothing is lost:
    the message stays in Redis' unacked index, and the run it carries is the database's business
    (its lease, and the dispatch attempt that makes a late redelivery a no-op).
    """

    def close(self) -> None:
        if self.detached:
            self.do_restore = False
        super().close()

    def _create_client(self, asynchronous: bool = False):  # type: ignore[no-untyped-def]
        """kombu makes a new Redis client object (a copy of redis-py's 170 response callbacks) for every publish
        and acknowledgement; one per connection pool does (a client is its pool's: thread-safe, no state of
        its own). A pool replaced after a reconnect gets a client of its own."""
        if asynchronous:
            return super()._create_client(asynchronous=True)
        pool = self.pool
        client = self.__dict__.get("_pool_client")
        if client is None or client.connection_pool is not pool:
            client = self.__dict__["_pool_client"] = super()._create_client()
        return client

    @property
    def detached(self) -> bool:
        """Whether the transport this channel came from was collected (the broker connection broke)."""
        return self.connection is None or self.connection.client is None


class RedisTransport(_redis.Transport):
    Channel = RedisChannel


REDIS_TRANSPORT = "curatore-redis"  # Celery's broker_transport for redis:// URLs (celery_app.configure)
TRANSPORT_ALIASES[REDIS_TRANSPORT] = f"{__name__}:RedisTransport"
