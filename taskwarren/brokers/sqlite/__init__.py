"""The embedded broker: durable queues in one SQLite file, shared by the processes of one machine.

Every message is a row; a delay is a ``ready_at`` in the future, so nothing waits in
memory. A consumer leases the rows it takes and its ``poll`` extends the leases; a lease
that runs out, or whose owner process is gone, puts the row back as redelivered. Idle
consumers sleep on a Unix datagram socket until a publisher names one of their queues.

Modules, one concept each:

- :mod:`.store`: schema, connections, busy handling, the statements on rows; sqlite3's
  errors become :class:`~taskwarren.errors.BrokerError` there.
- :mod:`.owners`: owner names and liveness, lease watching (no clocks compared across
  processes), fork safety.
- :mod:`.wakeup`: the wake-up sockets.
- :mod:`.broker`: :class:`SQLiteBroker`.
- :mod:`.consumer`: :class:`SQLiteConsumer`, the lease consumer.
"""

from __future__ import annotations

from taskwarren.brokers.sqlite.broker import SQLiteBroker
from taskwarren.brokers.sqlite.consumer import (
    CONSUMER_BUSY_SHARE,
    GIVE_UP_S,
    PRESENCE_WRITE_S,
    SQLiteConsumer,
)
from taskwarren.brokers.sqlite.owners import HOUSEKEEPING_S, LEASE_S
from taskwarren.brokers.sqlite.store import BUSY_TIMEOUT_S, SCHEMA_VERSION
from taskwarren.brokers.sqlite.wakeup import MAX_SOCKET_PATH, wake_dir

__all__ = [
    "BUSY_TIMEOUT_S",
    "CONSUMER_BUSY_SHARE",
    "GIVE_UP_S",
    "HOUSEKEEPING_S",
    "LEASE_S",
    "MAX_SOCKET_PATH",
    "PRESENCE_WRITE_S",
    "SCHEMA_VERSION",
    "SQLiteBroker",
    "SQLiteConsumer",
    "wake_dir",
]
