"""The SQLite file: schema, connections, busy handling, and the statements on its rows.

Every message is a row of ``messages``; a delay is a ``ready_at`` in the future. A
leased row has an ``owner`` and a ``lease_until`` stamp. Dead letters live in ``dead``.

Commits are durable before they return: WAL with ``synchronous=FULL`` fsyncs the log on
every commit (``NORMAL`` would only fsync at checkpoints, so a power cut could take back
messages that were already confirmed). sqlite3's errors become ours in :func:`mapped`.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from typing import Any

from taskwarren.brokers._local import dead_past_limit, hold_s
from taskwarren.errors import BrokerError, ConfigurationError
from taskwarren.message import Envelope
from taskwarren.topology import BROADCAST_EXCHANGE

#: Seconds a publisher's connection waits for another process's write lock before failing.
BUSY_TIMEOUT_S = 30.0
#: Schema version, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1
#: A WAL larger than this is truncated back after a checkpoint.
_WAL_LIMIT_BYTES = 64 * 1024 * 1024

_SCHEMA = (
    # AUTOINCREMENT never hands out a seq twice, so a late settlement that names the seq
    # of a message since deleted cannot hit a newer message.
    """CREATE TABLE IF NOT EXISTS messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        headers TEXT NOT NULL,
        content_type TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        ready_at REAL NOT NULL,
        owner TEXT,
        lease_until REAL,
        delivery_count INTEGER NOT NULL DEFAULT 0)""",
    # The dequeue walks this partial index in delivery order.
    """CREATE INDEX IF NOT EXISTS messages_ready
        ON messages (queue, ready_at, seq) WHERE owner IS NULL""",
    """CREATE INDEX IF NOT EXISTS messages_leased
        ON messages (owner, lease_until) WHERE owner IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS dead (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        queue TEXT NOT NULL,
        message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        headers TEXT NOT NULL,
        content_type TEXT NOT NULL,
        timestamp INTEGER NOT NULL,
        dead_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS dead_queue ON dead (queue, seq)",
    """CREATE TABLE IF NOT EXISTS consumers (
        owner TEXT NOT NULL,
        queue TEXT NOT NULL,
        PRIMARY KEY (owner, queue)) WITHOUT ROWID""",
    # What each live worker process last announced (``taskwarren workers``).
    """CREATE TABLE IF NOT EXISTS presence (
        owner TEXT PRIMARY KEY,
        info TEXT NOT NULL,
        seen_at REAL NOT NULL) WITHOUT ROWID""",
    # Event subscriptions: the topic exchange's bindings.
    """CREATE TABLE IF NOT EXISTS bindings (
        queue TEXT NOT NULL,
        pattern TEXT NOT NULL,
        PRIMARY KEY (queue, pattern)) WITHOUT ROWID""",
)
#: Prefix of a consumer's own broadcast queue (lives as long as the consumer).
BROADCAST_PREFIX = BROADCAST_EXCHANGE + "."

#: Inserts a row made by :func:`row` into ``messages``.
INSERT = """INSERT INTO messages
    (queue, message_id, body, headers, content_type, timestamp, ready_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
#: Inserts a row made by :func:`row` into ``dead``.
INSERT_DEAD = """INSERT INTO dead
    (queue, message_id, body, headers, content_type, timestamp, dead_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
#: The columns :func:`envelope` reads, in its order.
COLUMNS = "message_id, body, headers, content_type, timestamp"
#: Chooses rows by message id from a JSON array parameter (no limit on the list's length).
IDS = "message_id IN (SELECT value FROM json_each(?))"


# -- connections ------------------------------------------------------------------------


@contextlib.contextmanager
def mapped(what: str, kind: type[BrokerError] = BrokerError) -> Iterator[None]:
    """Raise sqlite3's errors as ours."""
    try:
        yield
    except sqlite3.Error as exc:
        raise kind(f"{what}: {exc}") from None


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction, its lock taken up front (a read upgraded later can deadlock)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def connect(path: str, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A connection in autocommit mode (we open transactions ourselves), WAL, fsync on commit."""
    conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None,
                           check_same_thread=False)
    try:
        _use_wal(conn)
        # On macOS fsync() leaves data in the drive's cache; ``PRAGMA fullfsync`` would
        # flush it at a large cost per commit. Linux's fsync() reaches the disk.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def patient(conn: sqlite3.Connection, busy_timeout_s: float) -> Iterator[None]:
    """Wait up to :data:`BUSY_TIMEOUT_S` for the write lock, then ``busy_timeout_s`` again.

    For a consumer's rare writes outside its rounds (registering, cancelling), which
    may wait as long as a publisher's and hold up no lease.
    """
    conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    try:
        yield
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch a new database to WAL, retrying: the switch does not wait for busy locks.

    Several processes opening a new database at once would otherwise fail with
    "database is locked"; once the file is in WAL mode it stays so.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() == "wal":
                return
            raise sqlite3.OperationalError(f"cannot use WAL mode here (journal mode {mode})")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(0.001, 0.02))


def init_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables of a new database; refuse one made by a newer taskwarren.

    Raises:
        ConfigurationError: ``path`` holds a newer schema than :data:`SCHEMA_VERSION`.
    """
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{path} holds taskwarren schema {version}; this version knows "
                f"{SCHEMA_VERSION}: upgrade taskwarren")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


# -- rows -------------------------------------------------------------------------------


def ready_at(delay_s: float) -> float:
    """When a message held back ``delay_s`` is due (a bad delay counts as none)."""
    return time.time() + hold_s(delay_s)


def envelope(row: Sequence[Any]) -> Envelope:
    """The envelope of a row starting with the :data:`COLUMNS`."""
    message_id, body, headers, content_type, timestamp = row[:5]
    return Envelope(str(message_id), bytes(body), json.loads(headers), str(content_type),
                    int(timestamp))


def row(queue: str, env: Envelope, at: float) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT` (``at``: ready at) or :data:`INSERT_DEAD` (dead at)."""
    headers = json.dumps(env.headers, separators=(",", ":"), default=str)
    return (queue, env.message_id, env.body, headers, env.content_type, env.timestamp, at)


# -- statements of a consumer's round (inside its transaction) --------------------------


def release(conn: sqlite3.Connection, where: str, params: tuple[Any, ...],
            delivery_limit: int) -> set[str]:
    """Return leased rows to their queues as redelivered; dead-letter those past the limit.

    Returns:
        the queues that got messages back.
    """
    rows = conn.execute(
        f"""UPDATE messages SET owner = NULL, lease_until = NULL,
                delivery_count = delivery_count + 1
            WHERE {where} RETURNING seq, queue, delivery_count""", params).fetchall()
    woke: set[str] = set()
    for seq, queue, count in rows:
        if count <= delivery_limit:
            woke.add(queue)
            continue
        found = conn.execute(f"SELECT {COLUMNS} FROM messages WHERE seq = ?", (seq,)).fetchone()
        dead = dead_past_limit(envelope(found), queue, count, delivery_limit)
        assert dead is not None
        conn.execute(INSERT_DEAD, row(queue, dead, time.time()))
        conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))
    return woke


def forget_owner(conn: sqlite3.Connection, owner: str) -> None:
    """Drop a consumer that is gone: its registrations, announcement and broadcast queue.

    Broadcasts were for that process alone: they die with it.
    """
    conn.execute("DELETE FROM messages WHERE queue = ?", (BROADCAST_PREFIX + owner,))
    conn.execute("DELETE FROM consumers WHERE owner = ?", (owner,))
    conn.execute("DELETE FROM presence WHERE owner = ?", (owner,))


def extend(conn: sqlite3.Connection, owner: str, stamp: float) -> int:
    """Renew every lease of ``owner`` to ``stamp``; how many rows it still holds."""
    return conn.execute("UPDATE messages SET lease_until = ? WHERE owner = ?",
                        (stamp, owner)).rowcount


def take(conn: sqlite3.Connection, owner: str, room: dict[str, int], now: float,
         stamp: float) -> list[Any]:
    """Lease up to ``room[queue]`` ready rows of each queue to ``owner``, oldest first.

    Returns:
        rows of the :data:`COLUMNS`, then seq, queue, delivery_count and ready_at.
    """
    rows: list[Any] = []
    for queue, n in room.items():
        rows += conn.execute(
            f"""UPDATE messages SET owner = ?1, lease_until = ?2
                WHERE seq IN (SELECT seq FROM messages
                    WHERE queue = ?3 AND owner IS NULL AND ready_at <= ?4
                    ORDER BY ready_at, seq LIMIT ?5)
                RETURNING {COLUMNS}, seq, queue, delivery_count, ready_at""",
            (owner, stamp, queue, now, n)).fetchall()
    return sorted(rows, key=lambda r: (r[8], r[5]))


def probe(conn: sqlite3.Connection, queues: list[str],
          now: float) -> tuple[set[str], float | None]:
    """Queues with a ready message, and when the earliest delayed one is due (a read)."""
    ready: set[str] = set()
    due: float | None = None
    for queue in queues:
        (first,) = conn.execute(
            "SELECT MIN(ready_at) FROM messages WHERE queue = ? AND owner IS NULL",
            (queue,)).fetchone()
        if first is None:
            continue
        if first <= now:
            ready.add(queue)
        elif due is None or first < due:
            due = first
    return ready, due
