"""The embedded broker: durable queues in one SQLite file, shared by the processes of one machine.

Every message is a row of ``messages``; a delay is a ``ready_at`` in the future, so nothing
waits in memory. A consumer leases the rows it takes (``owner``, ``lease_until``) and its
``poll`` extends the leases; a lease that runs out, or whose owner process is gone, puts
the row back as redelivered with ``delivery_count + 1``. Dead letters live in ``dead``.

Commits are durable before :meth:`SQLiteBroker.publish` returns: WAL with
``synchronous=FULL`` fsyncs the log on every commit (``NORMAL`` would only fsync at
checkpoints, so a power cut could take back messages that were already confirmed).

Idle consumers sleep: each binds a Unix datagram socket in a directory next to the
database, and whoever makes messages ready sends every socket there the queue's name.

sqlite3's errors become :class:`~taskwarren.errors.BrokerError` here.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import math
import os
import random
import secrets
import select
import socket
import sqlite3
import stat
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import structlog

from taskwarren.brokers.base import (
    Ack,
    Action,
    Broker,
    Consumer,
    Delivery,
    QueueStats,
    Republish,
    Requeue,
)
from taskwarren.errors import BrokerError, ConfigurationError, PublishError
from taskwarren.message import Envelope, failure_headers, revived
from taskwarren.topology import BROADCAST_EXCHANGE, MAX_DELAY_S, delay_seconds, topic_matches

log = structlog.get_logger("taskwarren.sqlite")

#: Seconds a delivery stays leased to its consumer unless the consumer's poll extends it.
LEASE_S = 15.0
#: Seconds between a consumer's looks for expired leases and for owners that died.
HOUSEKEEPING_S = 2.0
#: Seconds a connection waits for another process's write lock before failing.
BUSY_TIMEOUT_S = 30.0
#: Seconds of failing polls after which a consumer gives up and raises.
GIVE_UP_S = 60.0
#: Shortest interval between two stored announcements of one consumer.
PRESENCE_WRITE_S = 5.0
#: Schema version, kept in ``PRAGMA user_version``.
SCHEMA_VERSION = 1
#: Longest socket path we bind (``sun_path`` holds 108 bytes on Linux, 104 on macOS).
MAX_SOCKET_PATH = 100
#: Upper bound of a socket file name: ``<owner>.sock``.
_SOCKET_NAME_MAX = 40
#: Where wake-up sockets go when the database's path is too long for them.
_TMP = "/tmp"
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
_BROADCAST_PREFIX = BROADCAST_EXCHANGE + "."

_INSERT = """INSERT INTO messages
    (queue, message_id, body, headers, content_type, timestamp, ready_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
_INSERT_DEAD = """INSERT INTO dead
    (queue, message_id, body, headers, content_type, timestamp, dead_at)
    VALUES (?, ?, ?, ?, ?, ?, ?)"""
_COLUMNS = "message_id, body, headers, content_type, timestamp"
#: Chooses rows by message id from a JSON array parameter (no limit on the list's length).
_IDS = "message_id IN (SELECT value FROM json_each(?))"


# -- fork safety ------------------------------------------------------------------------


class _ForkAware(Protocol):
    def _forsake(self) -> None: ...


#: Connections a forked child inherited. They are kept referenced, never used and never
#: closed: SQLite forbids using a connection across fork(), closing included.
_INHERITED: list[object] = []
#: Brokers and consumers alive in this process, so a forked child can forsake theirs.
_LIVE: weakref.WeakSet[_ForkAware] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for item in list(_LIVE):
        item._forsake()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- connections ------------------------------------------------------------------------


@contextlib.contextmanager
def _mapped(what: str, kind: type[BrokerError] = BrokerError) -> Iterator[None]:
    """Raise sqlite3's errors as ours."""
    try:
        yield
    except sqlite3.Error as exc:
        raise kind(f"{what}: {exc}") from None


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction, its lock taken up front (a read upgraded later can deadlock)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (we open transactions ourselves), WAL, fsync on commit."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
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


def _init_schema(conn: sqlite3.Connection, path: str) -> None:
    if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return
    with _transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"{path} holds taskwarren schema {version}; this version knows "
                f"{SCHEMA_VERSION}: upgrade taskwarren")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _ready_at(delay_s: float) -> float:
    """When a message held back ``delay_s`` is due (a bad delay counts as none)."""
    now = time.time()
    return now + min(delay_s, MAX_DELAY_S) if delay_s > 0 else now


def _dumps(headers: dict[str, Any]) -> str:
    return json.dumps(headers, separators=(",", ":"), default=str)


def _envelope(row: Sequence[Any]) -> Envelope:
    """The envelope of a row starting with the :data:`_COLUMNS`."""
    message_id, body, headers, content_type, timestamp = row[:5]
    return Envelope(str(message_id), bytes(body), json.loads(headers), str(content_type),
                    int(timestamp))


def _row(queue: str, env: Envelope, at: float) -> tuple[Any, ...]:
    return (queue, env.message_id, env.body, _dumps(env.headers), env.content_type,
            env.timestamp, at)


# -- who holds a lease ------------------------------------------------------------------


@functools.cache
def _host_tag() -> str:
    """This machine, boot and pid namespace, so that pids in owner names can be checked."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        parts.append(f.read().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def _new_owner() -> str:
    return f"{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"


def _owner_alive(owner: str, directory: str) -> bool | None:
    """Whether the consumer ``owner`` still runs: ``None`` when it cannot be told.

    Its wake-up socket answers while it runs and refuses once its process is gone (the
    file stays after a kill -9). Without the file, a pid on this host and namespace
    still tells; a consumer elsewhere (another container) is then left to its lease.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(os.path.join(directory, owner + ".sock"))
        return True
    except ConnectionRefusedError:
        return False
    except FileNotFoundError:
        pass
    except OSError:
        return None
    finally:
        probe.close()
    tag, _, rest = owner.partition("-")
    pid_text = rest.partition("-")[0]
    if tag != _host_tag() or not pid_text.isdigit():
        return None
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


# -- wake-ups ---------------------------------------------------------------------------


def wake_dir(db_path: str) -> str:
    """Where consumers of ``db_path`` bind their wake-up sockets.

    Next to the database when the socket paths fit, else a per-user directory in
    ``/tmp`` named after the database path (every process computes the same one).
    """
    near = db_path + ".wake"
    if len(near) + 1 + _SOCKET_NAME_MAX <= MAX_SOCKET_PATH:
        return near
    digest = hashlib.sha256(db_path.encode()).hexdigest()[:20]
    return os.path.join(_TMP, f"taskwarren-{os.getuid()}", digest)


def _make_wake_dir(directory: str) -> None:
    """Create the wake-up directory; in ``/tmp``, trust only a private one of this user."""
    if directory.startswith(_TMP + os.sep):
        base = os.path.dirname(directory)
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o700)
        st = os.lstat(base)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise PermissionError(f"{base} is not a directory of this user")
        if st.st_mode & 0o077:
            os.chmod(base, 0o700)
    os.makedirs(directory, exist_ok=True)


class _Waker:
    """Sends one datagram naming the queues to every consumer socket in a directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _socket(self) -> socket.socket:
        with self._lock:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sock = sock
            return self._sock

    def notify(self, queues: Iterable[str]) -> None:
        """Wake every consumer; never raises (a consumer also looks every few seconds)."""
        names = sorted(set(queues))
        if not names:
            return
        try:
            entries = os.listdir(self.directory)
        except OSError:
            return  # no consumer ever started here
        payload = "\n".join(names).encode()
        if len(payload) > 4096:
            payload = b""  # means "look at every queue"
        sock = self._socket()
        for entry in entries:
            if not entry.endswith(".sock"):
                continue
            path = os.path.join(self.directory, entry)
            try:
                sock.sendto(payload, path)
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    os.unlink(path)  # its consumer died without closing
            except (BlockingIOError, FileNotFoundError):
                pass  # a wake-up is already pending there, or it just closed
            except OSError as exc:
                log.debug("consumer.wake_failed", path=path, error=str(exc))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def forsake(self) -> None:
        """After fork, in the child: a fresh socket next time."""
        self._lock = threading.Lock()
        self._sock = None


# -- the broker -------------------------------------------------------------------------


class SQLiteBroker(Broker):
    """Queues in one SQLite file, for any number of processes on this machine.

    Args:
        path: the database file (created if missing; its directory must exist).
        delivery_limit: a message delivered more than this many times is dead-lettered.
        lease_s: how long a delivery stays leased without its consumer polling.
    """

    def __init__(self, path: str | os.PathLike[str], *, delivery_limit: int = 50,
                 lease_s: float = LEASE_S) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.delivery_limit = delivery_limit
        self.lease_s = lease_s
        self.location = f"sqlite:///{self.path}"
        self.waker = _Waker(wake_dir(os.path.realpath(self.path)))
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        _LIVE.add(self)
        with self._lock, _mapped(f"cannot open {self.path}"):
            _init_schema(self._connection(), self.path)

    @classmethod
    def from_url(cls, url: str, *, delivery_limit: int = 50,
                 lease_s: float = LEASE_S) -> SQLiteBroker:
        """The broker of ``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``.

        Raises:
            ConfigurationError: not such a URL.
        """
        split = urlsplit(url)
        path = unquote(split.path[1:])
        if split.scheme != "sqlite" or split.netloc or split.query or not path:
            raise ConfigurationError(
                f"not an SQLite URL: {url!r}; use sqlite:///relative.db or "
                "sqlite:////absolute/path.db")
        if path == ":memory:":
            raise ConfigurationError("an in-memory SQLite database is one process's: "
                                     "use memory:// instead")
        return cls(path, delivery_limit=delivery_limit, lease_s=lease_s)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = _connect(self.path)
        return self._conn

    def _forsake(self) -> None:
        """In a forked child: a connection of its own on next use, the parent's left alone."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        if self._conn is not None:
            _INHERITED.append(self._conn)
            self._conn = None
        self.waker.forsake()

    def declare(self, queues: Iterable[str]) -> None:
        """Nothing to do: a queue exists once it holds a row."""

    def publish(self, queue: str, envelopes: Sequence[Envelope], delay_s: float = 0.0) -> None:
        if delay_s > 0:
            delay_seconds(delay_s)  # refuses a delay too long for the other brokers
        if not envelopes:
            return
        ready_at = _ready_at(delay_s)
        rows = [_row(queue, env, ready_at) for env in envelopes]
        with self._lock, _mapped(f"publish to {queue!r} failed", PublishError):
            conn = self._connection()
            with _transaction(conn):
                conn.executemany(_INSERT, rows)
        self.waker.notify([queue])

    def consumer(self) -> SQLiteConsumer:
        return SQLiteConsumer(self)

    def bind_events(self, queue: str, patterns: Sequence[str]) -> None:
        with self._lock, _mapped(f"cannot bind {queue!r}"):
            conn = self._connection()
            with _transaction(conn):
                conn.executemany("INSERT OR IGNORE INTO bindings (queue, pattern) VALUES (?, ?)",
                                 [(queue, p) for p in patterns])

    def publish_event(self, routing_key: str, envelope: Envelope) -> int:
        """One copy in every queue with a matching subscription, in one transaction."""
        now = time.time()
        with self._lock, _mapped(f"publish of event {routing_key!r} failed", PublishError):
            conn = self._connection()
            with _transaction(conn):
                bindings = conn.execute("SELECT queue, pattern FROM bindings").fetchall()
                targets = sorted({q for q, p in bindings if topic_matches(p, routing_key)})
                conn.executemany(_INSERT, [_row(q, envelope, now) for q in targets])
        self.waker.notify(targets)
        return len(targets)

    def presence(self, listen_s: float) -> list[dict[str, Any]]:
        """The announcements of consumers alive now (no need to listen: they are stored)."""
        with self._lock, _mapped("cannot read presence"):
            rows = self._connection().execute("SELECT owner, info FROM presence").fetchall()
        directory = self.waker.directory
        return [json.loads(info) for owner, info in rows
                if _owner_alive(owner, directory) is not False]

    def publish_broadcast(self, envelope: Envelope) -> int:
        """One copy in the broadcast queue of every consumer alive now."""
        now = time.time()
        with self._lock, _mapped("broadcast failed", PublishError):
            conn = self._connection()
            with _transaction(conn):
                listeners = [q for (q,) in conn.execute(
                    "SELECT queue FROM consumers WHERE substr(queue, 1, ?) = ?",
                    (len(_BROADCAST_PREFIX), _BROADCAST_PREFIX))]
                directory = self.waker.directory
                alive = [q for q in listeners
                         if _owner_alive(q[len(_BROADCAST_PREFIX):], directory) is not False]
                conn.executemany(_INSERT, [_row(q, envelope, now) for q in alive])
        self.waker.notify(alive)
        return len(alive)

    def stats(self, queue: str) -> QueueStats:
        now = time.time()
        with self._lock, _mapped(f"stats of {queue!r}"):
            conn = self._connection()
            ready, delayed, unacked, dead = conn.execute(
                """SELECT
                    (SELECT count(*) FROM messages
                        WHERE queue = ?1 AND owner IS NULL AND ready_at <= ?2),
                    (SELECT count(*) FROM messages
                        WHERE queue = ?1 AND owner IS NULL AND ready_at > ?2),
                    (SELECT count(*) FROM messages WHERE queue = ?1 AND owner IS NOT NULL),
                    (SELECT count(*) FROM dead WHERE queue = ?1)""",
                (queue, now)).fetchone()
            owners = [o for (o,) in conn.execute(
                "SELECT owner FROM consumers WHERE queue = ?", (queue,))]
        directory = self.waker.directory
        consumers = sum(1 for owner in owners if _owner_alive(owner, directory))
        return QueueStats(queue, ready, unacked, consumers, dead, delayed)

    def purge(self, queue: str) -> int:
        with self._lock, _mapped(f"purge of {queue!r}"):
            conn = self._connection()
            with _transaction(conn):
                cur = conn.execute(
                    "DELETE FROM messages WHERE queue = ? AND owner IS NULL AND ready_at <= ?",
                    (queue, time.time()))
                return cur.rowcount

    def dead_letters(self, queue: str) -> list[Envelope]:
        with self._lock, _mapped(f"dead letters of {queue!r}"):
            rows = self._connection().execute(
                f"SELECT {_COLUMNS} FROM dead WHERE queue = ? ORDER BY seq", (queue,))
            return [_envelope(row) for row in rows]

    def replay_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        where, params = self._dead_where(queue, message_ids)
        now = time.time()
        with self._lock, _mapped(f"replay of {queue!r}'s dead letters"):
            conn = self._connection()
            with _transaction(conn):
                rows = conn.execute(
                    f"SELECT seq, {_COLUMNS} FROM dead WHERE {where} ORDER BY seq",
                    params).fetchall()
                conn.executemany(_INSERT, [_row(queue, revived(_envelope(r[1:])), now)
                                           for r in rows])
                conn.executemany("DELETE FROM dead WHERE seq = ?", [(r[0],) for r in rows])
        if rows:
            self.waker.notify([queue])
        return len(rows)

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        where, params = self._dead_where(queue, message_ids)
        with self._lock, _mapped(f"purge of {queue!r}'s dead letters"):
            conn = self._connection()
            with _transaction(conn):
                return conn.execute(f"DELETE FROM dead WHERE {where}", params).rowcount

    @staticmethod
    def _dead_where(queue: str, message_ids: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
        if message_ids is None:
            return "queue = ?", (queue,)
        return f"queue = ? AND {_IDS}", (queue, json.dumps(list(message_ids)))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self.waker.close()

    # -- for consumers, inside their transactions -----------------------------------

    def _release(self, conn: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> set[str]:
        """Return leased rows to their queues as redelivered; dead-letter those past the limit.

        Returns:
            the queues that got messages back.
        """
        rows = conn.execute(
            f"""UPDATE messages SET owner = NULL, lease_until = NULL,
                    delivery_count = delivery_count + 1
                WHERE {where} RETURNING seq, queue, delivery_count""", params).fetchall()
        over = [(seq, count) for seq, _, count in rows if count > self.delivery_limit]
        for seq, count in over:
            self._dead_letter_over_limit(conn, seq, count)
        return {queue for _, queue, count in rows if count <= self.delivery_limit}

    def _dead_letter_over_limit(self, conn: sqlite3.Connection, seq: int, count: int) -> None:
        row = conn.execute(f"SELECT queue, {_COLUMNS} FROM messages WHERE seq = ?",
                           (seq,)).fetchone()
        queue, env = row[0], _envelope(row[1:])
        reason = f"delivery limit of {self.delivery_limit} exceeded"
        dead = env.with_headers(failure_headers(
            "DeliveryLimitExceeded", f"{reason}: delivered {count} times", reason=reason))
        conn.execute(_INSERT_DEAD, _row(queue, dead, time.time()))
        conn.execute("DELETE FROM messages WHERE seq = ?", (seq,))
        log.warning("message.dead_lettered", task_id=env.message_id, queue=queue,
                    reason=reason, deliveries=count)


# -- the consumer -----------------------------------------------------------------------


class SQLiteConsumer(Consumer):
    """Leases messages of some queues to one worker process's I/O thread.

    Settlements queued from any thread are carried out by the next :meth:`poll`, all in
    one transaction together with the next batch of deliveries.
    """

    def __init__(self, broker: SQLiteBroker) -> None:
        self._broker = broker
        self.owner = _new_owner()
        with _mapped(f"cannot open {broker.path}"):
            self._conn: sqlite3.Connection | None = _connect(broker.path)
        self._prefetch: dict[str, int] = {}
        self._held: dict[int, tuple[int, str, str]] = {}  # tag -> (seq, queue, message id)
        self._held_per_queue: Counter[str] = Counter()
        self._tags = itertools.count(1)
        self._settle_q: deque[tuple[Delivery, Action]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sock: socket.socket | None = None
        self._sock_path = ""
        self._unwakeable = False  # no socket could be bound: look every few seconds
        self._poller = select.poll()
        self._poller.register(self._wake_r, select.POLLIN)
        self._sleeping = False
        self._woken = False
        self._closed = False
        self._look = True  # something may be ready: query before sleeping
        self._next_due: float | None = None  # wall-clock time a delayed message is due
        self._next_housekeeping = 0.0
        self._extend_at = math.inf
        self._failing_since: float | None = None
        self._broadcast_queue = ""
        self._announced_at = -math.inf
        _LIVE.add(self)

    def _forsake(self) -> None:
        """In a forked child: keep the parent's connection untouched, drop its socket.

        The child's copy of the socket must go, or the socket would answer for the parent
        after the parent died; closing a copy leaves the parent's socket bound.
        """
        if self._conn is not None:
            _INHERITED.append(self._conn)
            self._conn = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._closed = True

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise BrokerError("this consumer is closed (or belongs to the parent process)")
        return self._conn

    # -- the contract -------------------------------------------------------------------

    def subscribe(self, queue: str, patterns: Sequence[str]) -> None:
        self._broker.bind_events(queue, patterns)

    def announce(self, info: dict[str, Any]) -> None:
        # Stored, not sent: written at most every PRESENCE_WRITE_S so an idle pool does
        # not commit (and fsync) every second; readers check the owner is alive.
        now = time.monotonic()
        if now < self._announced_at + PRESENCE_WRITE_S:
            return
        self._announced_at = now
        conn = self._db()
        with _mapped("cannot announce"), _transaction(conn):
            conn.execute("INSERT OR REPLACE INTO presence (owner, info, seen_at) "
                         "VALUES (?, ?, ?)", (self.owner, json.dumps(info), time.time()))

    def consume_broadcast(self, prefetch: int) -> None:
        # A queue of this consumer's own: deleted with it, or when its owner is found dead.
        self._broadcast_queue = _BROADCAST_PREFIX + self.owner
        self.consume(self._broadcast_queue, prefetch)

    def consume(self, queue: str, prefetch: int, timeout_s: float | None = None) -> None:
        conn = self._db()
        self._bind()  # first: a registration without a socket would look dead
        if queue not in self._prefetch:
            with _mapped(f"cannot consume {queue!r}"), _transaction(conn):
                conn.execute("INSERT OR IGNORE INTO consumers (owner, queue) VALUES (?, ?)",
                             (self.owner, queue))
        self._prefetch[queue] = prefetch
        self._look = True

    def _bind(self) -> None:
        if self._sock is not None:
            return
        directory = self._broker.waker.directory
        path = os.path.join(directory, self.owner + ".sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            try:
                _make_wake_dir(directory)
                sock.bind(path)
            except FileNotFoundError:  # a closing consumer removed the empty directory
                _make_wake_dir(directory)
                sock.bind(path)
        except OSError as exc:
            sock.close()
            if not self._unwakeable:
                self._unwakeable = True
                log.warning("consumer.no_wake_socket", path=path, error=str(exc),
                            looks_every_s=HOUSEKEEPING_S)
            return
        self._sock, self._sock_path = sock, path
        self._poller.register(sock.fileno(), select.POLLIN)

    def poll(self, timeout_s: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while not self._closed:
            try:
                out = self._work()
                self._failing_since = None
            except sqlite3.Error as exc:
                out = self._trouble(exc)
            if out or self._woken:
                self._woken = False
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._sleep(remaining)
        return []

    def settle(self, delivery: Delivery, action: Action) -> None:
        self._settle_q.append((delivery, action))
        if self._sleeping:
            self.wakeup()

    def wakeup(self) -> None:
        fd = self._wake_w
        if fd < 0:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(fd, b"x")  # a full pipe already holds a wake-up

    def pending(self) -> int:
        return len(self._settle_q)

    def cancel(self) -> None:
        queues, self._prefetch = list(self._prefetch), {}
        if not queues or self._conn is None:
            return
        conn = self._conn
        with _mapped("cancel failed"), _transaction(conn):
            conn.execute("DELETE FROM consumers WHERE owner = ?", (self.owner,))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._prefetch = {}
        conn = self._conn
        try:
            if conn is not None:
                todo = self._take_settlements()
                with _transaction(conn):
                    _, woke = self._apply(conn, todo)
                    woke |= self._broker._release(conn, "owner = ?", (self.owner,))
                    conn.execute("DELETE FROM consumers WHERE owner = ?", (self.owner,))
                    conn.execute("DELETE FROM presence WHERE owner = ?", (self.owner,))
                    conn.execute("DELETE FROM messages WHERE queue = ?",
                                 (_BROADCAST_PREFIX + self.owner,))
                self._held.clear()
                self._broker.waker.notify(woke)
        except sqlite3.Error as exc:
            log.warning("consumer.close_failed", error=str(exc), owner=self.owner,
                        held=len(self._held))  # their leases run out instead
        finally:
            self._release_resources()

    def _release_resources(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                os.unlink(self._sock_path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self._sock_path))  # only if it is empty now
        wake_r, wake_w = self._wake_r, self._wake_w
        self._wake_r = self._wake_w = -1
        for fd in (wake_r, wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- one round of work --------------------------------------------------------------

    def _work(self) -> list[Delivery]:
        """Extend, settle, reclaim and take, all in one transaction; the new deliveries."""
        conn = self._db()
        now_m, now = time.monotonic(), time.time()
        if self._next_due is not None and now >= self._next_due:
            self._look, self._next_due = True, None
        expired = False
        orphans: list[str] = []
        if now_m >= self._next_housekeeping:
            self._next_housekeeping = now_m + HOUSEKEEPING_S
            expired, orphans = self._inspect_leases(conn, now)
            self._look = True  # also covers a wake-up datagram that got lost
        todo = self._take_settlements()
        freed = Counter(self._held[d.tag][1] for d, _ in todo if d.tag in self._held)
        if freed:
            self._look = True
        capacity = {q: n - self._held_per_queue[q] + freed[q]
                    for q, n in self._prefetch.items()}
        capacity = {q: n for q, n in capacity.items() if n > 0}
        extend = bool(self._held) and now_m >= self._extend_at
        if self._look and capacity and not (todo or expired or orphans or extend):
            # Reads never wait for the write lock: ask for it only when there is work.
            ready, self._next_due = self._probe(conn, list(capacity), now)
            self._look = bool(ready)
        take = self._look and bool(capacity)
        if not (todo or expired or orphans or extend or take):
            return []
        try:
            with _transaction(conn):
                if extend:
                    self._extend(conn, now)
                settled, woke = self._apply(conn, todo)
                if expired or orphans:
                    woke |= self._reclaim(conn, now, orphans)
                rows = self._take(conn, capacity, now) if take else []
        except BaseException:
            self._settle_q.extendleft(reversed(todo))
            raise
        had_held = bool(self._held)
        for tag in settled:
            queue = self._held.pop(tag)[1]
            self._held_per_queue[queue] -= 1
        if woke:
            self._broker.waker.notify(woke)
        out = self._deliveries(rows)
        if extend or not had_held:
            self._extend_at = now_m + self._broker.lease_s / 3
        if take and len(rows) < sum(capacity.values()):
            # Fewer than we had room for: the queues hold nothing else that is ready.
            self._look = False
            _, self._next_due = self._probe(conn, list(capacity), time.time())
        return out

    def _take_settlements(self) -> list[tuple[Delivery, Action]]:
        todo = []
        while self._settle_q:
            todo.append(self._settle_q.popleft())
        return todo

    def _apply(self, conn: sqlite3.Connection,
               todo: list[tuple[Delivery, Action]]) -> tuple[list[int], set[str]]:
        """Carry out settlements; the tags settled and the queues that got ready messages."""
        settled: dict[int, None] = {}  # ordered set
        woke: set[str] = set()
        owner = self.owner
        for delivery, action in todo:
            held = self._held.get(delivery.tag)
            if (held is None or delivery.tag in settled
                    or held[2] != delivery.envelope.message_id):
                continue  # settled twice, or not ours
            seq = held[0]
            settled[delivery.tag] = None
            if isinstance(action, Requeue):
                woke |= self._broker._release(conn, "seq = ? AND owner = ?", (seq, owner))
                continue
            # Ours, or put back after our lease ran out and not taken since: done with it.
            gone = conn.execute(
                "DELETE FROM messages WHERE seq = ? AND (owner = ? OR owner IS NULL)",
                (seq, owner)).rowcount
            if isinstance(action, Ack):
                continue
            assert isinstance(action, Republish)
            if not gone:
                log.warning("consumer.lease_lost", task_id=delivery.envelope.message_id,
                            queue=delivery.queue, owner=owner)
                continue  # another consumer has it now: a copy from us would double it
            if action.dead:
                conn.execute(_INSERT_DEAD, _row(action.queue, action.envelope, time.time()))
            else:
                conn.execute(_INSERT, _row(action.queue, action.envelope,
                                           _ready_at(action.delay_s)))
                woke.add(action.queue)
        return list(settled), woke

    def _inspect_leases(self, conn: sqlite3.Connection, now: float) -> tuple[bool, list[str]]:
        """Whether some lease ran out, and the owners (leases or registrations) that died."""
        rows = conn.execute("""SELECT owner, MIN(lease_until) FROM messages
                               WHERE owner IS NOT NULL GROUP BY owner""").fetchall()
        registered = conn.execute("SELECT DISTINCT owner FROM consumers").fetchall()
        owners = {owner for owner, _ in rows} | {owner for (owner,) in registered}
        expired = any(until < now for _, until in rows)
        directory = self._broker.waker.directory
        return expired, sorted(o for o in owners
                               if o != self.owner and _owner_alive(o, directory) is False)

    def _reclaim(self, conn: sqlite3.Connection, now: float, orphans: list[str]) -> set[str]:
        woke = self._broker._release(conn, "owner IS NOT NULL AND lease_until < ?", (now,))
        for owner in orphans:
            # Broadcasts were for that process alone: they die with it.
            conn.execute("DELETE FROM messages WHERE queue = ?", (_BROADCAST_PREFIX + owner,))
            woke |= self._broker._release(conn, "owner = ?", (owner,))
            conn.execute("DELETE FROM consumers WHERE owner = ?", (owner,))
            conn.execute("DELETE FROM presence WHERE owner = ?", (owner,))
        if woke or orphans:
            log.info("consumer.leases_reclaimed", queues=sorted(woke), dead_owners=orphans)
        return woke

    def _extend(self, conn: sqlite3.Connection, now: float) -> None:
        kept = conn.execute("UPDATE messages SET lease_until = ? WHERE owner = ?",
                            (now + self._broker.lease_s, self.owner)).rowcount
        if kept < len(self._held):
            log.warning("consumer.leases_lost", held=len(self._held), kept=kept,
                        owner=self.owner)

    def _take(self, conn: sqlite3.Connection, capacity: dict[str, int],
              now: float) -> list[Any]:
        rows: list[Any] = []
        for queue, n in capacity.items():
            rows += conn.execute(
                f"""UPDATE messages SET owner = ?1, lease_until = ?2
                    WHERE seq IN (SELECT seq FROM messages
                        WHERE queue = ?3 AND owner IS NULL AND ready_at <= ?4
                        ORDER BY ready_at, seq LIMIT ?5)
                    RETURNING {_COLUMNS}, seq, queue, delivery_count, ready_at""",
                (self.owner, now + self._broker.lease_s, queue, now, n)).fetchall()
        return rows

    def _deliveries(self, rows: list[Any]) -> list[Delivery]:
        out = []
        for row in sorted(rows, key=lambda r: (r[8], r[5])):
            seq, queue, count = row[5], row[6], row[7]
            tag = next(self._tags)
            self._held[tag] = (seq, queue, str(row[0]))
            self._held_per_queue[queue] += 1
            shown = BROADCAST_EXCHANGE if queue == self._broadcast_queue else queue
            out.append(Delivery(_envelope(row), shown, tag, count > 0, count))
        return out

    def _probe(self, conn: sqlite3.Connection, queues: list[str],
               now: float) -> tuple[set[str], float | None]:
        """Queues with a ready message, and when the earliest delayed one is due."""
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

    def _trouble(self, exc: sqlite3.Error) -> list[Delivery]:
        """Log a failed round and pause; raise once it has failed for :data:`GIVE_UP_S`."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > GIVE_UP_S:
            raise BrokerError(f"{self._broker.path} has failed for {GIVE_UP_S}s: {exc}")
        log.warning("consumer.broker_error", error=str(exc), path=self._broker.path)
        self._look = True
        self._sleep(0.5)
        return []

    # -- sleeping -----------------------------------------------------------------------

    def _sleep(self, remaining_s: float) -> None:
        """Block until woken, a deadline of ours comes, or ``remaining_s`` passes."""
        timeout = remaining_s
        if self._next_due is not None:
            timeout = min(timeout, self._next_due - time.time())
        now_m = time.monotonic()
        timeout = min(timeout, self._next_housekeeping - now_m)
        if self._held:
            timeout = min(timeout, self._extend_at - now_m)
        self._sleeping = True
        try:
            if self._settle_q:
                self._woken = True
                return
            events = self._poller.poll(max(0, math.ceil(timeout * 1000)))
        finally:
            self._sleeping = False
        for fd, _ in events:
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(fd, 4096):
                        pass
                self._woken = True
            else:
                self._heard()

    def _heard(self) -> None:
        """Read wake-up datagrams; look again if one names a queue we consume."""
        sock = self._sock
        while sock is not None:
            try:
                data = sock.recv(8192)
            except OSError:  # BlockingIOError: all read
                return
            names = data.decode(errors="replace").split("\n") if data else []
            if not names or any(name in self._prefetch for name in names):
                self._look = True
