"""The SQLite broker: durable queues in one file, shared by the processes of one machine."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from taskwarren.brokers._local import check_delay, subscribers
from taskwarren.brokers.base import Broker, QueueStats
from taskwarren.brokers.sqlite import store
from taskwarren.brokers.sqlite.consumer import SQLiteConsumer
from taskwarren.brokers.sqlite.owners import LEASE_S, inherit, owner_alive, track
from taskwarren.brokers.sqlite.store import BROADCAST_PREFIX, mapped, transaction
from taskwarren.brokers.sqlite.wakeup import Waker, wake_dir
from taskwarren.errors import ConfigurationError, PublishError
from taskwarren.message import Envelope, revived


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
        self.waker = Waker(wake_dir(os.path.realpath(self.path)))
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        track(self)
        with self._lock, mapped(f"cannot open {self.path}"):
            store.init_schema(self._connection(), self.path)

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
            self._conn = store.connect(self.path)
        return self._conn

    def _forsake(self) -> None:
        """In a forked child: a connection of its own on next use, the parent's left alone."""
        self._lock = threading.Lock()  # another thread of the parent may have held it
        inherit(self._conn)
        self._conn = None
        self.waker.forsake()

    def declare(self, queues: Iterable[str]) -> None:
        """Nothing to do: a queue exists once it holds a row."""

    def publish(self, queue: str, envelopes: Sequence[Envelope], delay_s: float = 0.0) -> None:
        check_delay(delay_s)  # refuses a delay too long for the other brokers
        if not envelopes:
            return
        due = store.ready_at(delay_s)
        rows = [store.row(queue, env, due) for env in envelopes]
        with self._lock, mapped(f"publish to {queue!r} failed", PublishError):
            conn = self._connection()
            with transaction(conn):
                conn.executemany(store.INSERT, rows)
        self.waker.notify([queue])

    def consumer(self) -> SQLiteConsumer:
        return SQLiteConsumer(self)

    def bind_events(self, queue: str, patterns: Sequence[str]) -> None:
        with self._lock, mapped(f"cannot bind {queue!r}"):
            conn = self._connection()
            with transaction(conn):
                conn.executemany("INSERT OR IGNORE INTO bindings (queue, pattern) VALUES (?, ?)",
                                 [(queue, p) for p in patterns])

    def publish_event(self, routing_key: str, envelope: Envelope) -> int:
        """One copy in every queue with a matching subscription, in one transaction."""
        now = time.time()
        with self._lock, mapped(f"publish of event {routing_key!r} failed", PublishError):
            conn = self._connection()
            with transaction(conn):
                targets = subscribers(conn.execute("SELECT queue, pattern FROM bindings"),
                                      routing_key)
                conn.executemany(store.INSERT, [store.row(q, envelope, now) for q in targets])
        self.waker.notify(targets)
        return len(targets)

    def presence(self, listen_s: float) -> list[dict[str, Any]]:
        """The announcements of consumers alive now (no need to listen: they are stored)."""
        with self._lock, mapped("cannot read presence"):
            rows = self._connection().execute("SELECT owner, info FROM presence").fetchall()
        directory = self.waker.directory
        return [json.loads(info) for owner, info in rows
                if owner_alive(owner, directory) is not False]

    def publish_broadcast(self, envelope: Envelope) -> int:
        """One copy in the broadcast queue of every consumer alive now."""
        now = time.time()
        with self._lock, mapped("broadcast failed", PublishError):
            conn = self._connection()
            with transaction(conn):
                listeners = [q for (q,) in conn.execute(
                    "SELECT queue FROM consumers WHERE substr(queue, 1, ?) = ?",
                    (len(BROADCAST_PREFIX), BROADCAST_PREFIX))]
                directory = self.waker.directory
                alive = [q for q in listeners
                         if owner_alive(q[len(BROADCAST_PREFIX):], directory) is not False]
                conn.executemany(store.INSERT, [store.row(q, envelope, now) for q in alive])
        self.waker.notify(alive)
        return len(alive)

    def stats(self, queue: str) -> QueueStats:
        now = time.time()
        with self._lock, mapped(f"stats of {queue!r}"):
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
        consumers = sum(1 for owner in owners if owner_alive(owner, directory))
        return QueueStats(queue, ready, unacked, consumers, dead, delayed)

    def purge(self, queue: str) -> int:
        with self._lock, mapped(f"purge of {queue!r}"):
            conn = self._connection()
            with transaction(conn):
                cur = conn.execute(
                    "DELETE FROM messages WHERE queue = ? AND owner IS NULL AND ready_at <= ?",
                    (queue, time.time()))
                return cur.rowcount

    def dead_letters(self, queue: str, limit: int | None = None) -> list[Envelope]:
        with self._lock, mapped(f"dead letters of {queue!r}"):
            rows = self._connection().execute(
                f"SELECT {store.COLUMNS} FROM dead WHERE queue = ? ORDER BY seq LIMIT ?",
                (queue, -1 if limit is None else limit))
            return [store.envelope(r) for r in rows]

    def replay_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        where, params = self._dead_where(queue, message_ids)
        now = time.time()
        with self._lock, mapped(f"replay of {queue!r}'s dead letters"):
            conn = self._connection()
            with transaction(conn):
                rows = conn.execute(
                    f"SELECT seq, {store.COLUMNS} FROM dead WHERE {where} ORDER BY seq",
                    params).fetchall()
                copies = [revived(store.envelope(r[1:])) for r in rows]
                conn.executemany(store.INSERT, [store.row(queue, c, now) for c in copies])
                conn.executemany("DELETE FROM dead WHERE seq = ?", [(r[0],) for r in rows])
        if rows:
            self.waker.notify([queue])
        return len(rows)

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        where, params = self._dead_where(queue, message_ids)
        with self._lock, mapped(f"purge of {queue!r}'s dead letters"):
            conn = self._connection()
            with transaction(conn):
                return conn.execute(f"DELETE FROM dead WHERE {where}", params).rowcount

    @staticmethod
    def _dead_where(queue: str, message_ids: Sequence[str] | None) -> tuple[str, tuple[Any, ...]]:
        if message_ids is None:
            return "queue = ?", (queue,)
        return f"queue = ? AND {store.IDS}", (queue, json.dumps(list(message_ids)))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self.waker.close()
