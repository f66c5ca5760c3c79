"""The relay's side of the job store: its own connection, claims, deletes and wake-ups.

:func:`open_store` connects to ``TASKWARREN_STORE_URL``. Each claim is one short
transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MySQL/MariaDB, a write lock
on SQLite) that stamps a lease on the rows it takes and commits before anything is
published; no transaction stays open across network I/O. Rows are taken by lease, never
by a "highest id seen" cursor: ids are allocated before commit, so a transaction that
commits late would be skipped by one.
"""

from __future__ import annotations

import contextlib
import select
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from taskwarren.errors import ConfigurationError, StoreError, StoreNotInitializedError
from taskwarren.store.drivers import IO_TIMEOUT_S, SQLiteTx, check_version, missing_driver
from taskwarren.store.outbox import MISSING_TABLES, NOTIFY_CHANNEL
from taskwarren.store.schema import OUTBOX, REJECTED, Dialect, ddl, is_missing_table, upgrade
from taskwarren.urls import mask_url, scheme_of

_COLUMNS = "id, task_id, queue, task, headers, body, content_type, enqueued_at"
_DUE = "not_before <= {p} AND (claimed_until IS NULL OR claimed_until < {p})"


@dataclass(frozen=True, slots=True)
class Row:
    """An outbox row a relay has claimed."""

    id: int
    task_id: str
    queue: str
    task: str
    headers: str
    body: bytes
    content_type: str
    enqueued_at: float


class Store:
    """A connection of the relay's own to the job store (one thread uses it).

    Args:
        url: the store URL (``postgresql://``, ``mysql://``, ``sqlite:///``).
        connect_timeout_s: how long connecting may take.
    """

    dialect: Dialect
    placeholder = "%s"

    def __init__(self, url: str, connect_timeout_s: float = 10.0) -> None:
        self.url = url
        self.location = mask_url(url)
        self.connect_timeout_s = connect_timeout_s
        self.conn: Any = self._open()

    session_sql: tuple[str, ...] = ()  # run on each new connection, then committed

    def _open(self) -> Any:
        try:
            conn = self._connect()
            for statement in self.session_sql:
                conn.cursor().execute(statement)
            conn.commit()  # a rolled-back SET would be undone on PostgreSQL
            return conn
        except ConfigurationError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot connect to the job store at {self.location}: "
                             f"{type(exc).__name__}: {self.scrub(str(exc))}") from exc

    def scrub(self, text: str) -> str:
        """``text`` cut to 300 characters, without the URL's passwords in any spelling."""
        parts = urlsplit(self.url.split(",")[0])
        passwords = [parts.password or ""]
        for key, values in parse_qs(parts.query).items():
            if key.lower() in ("password", "sslpassword"):
                passwords.extend(values)
        for secret in {p for pw in passwords for p in (pw, unquote(pw), quote(pw))} - {""}:
            text = text.replace(secret, "***")
        return " ".join(text.split())[:300]  # one line

    def _connect(self) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"

    def connection(self) -> Any:
        """The open connection, or a new one if :meth:`drop` let the last one go.

        Raises:
            StoreError: the database cannot be reached.
        """
        if self.conn is None:
            self.conn = self._open()
        return self.conn

    def drop(self) -> None:
        """Roll back and close the connection after an error; the next use opens another.

        It may be dead (a server restart, a failover, a killed session), and no driver
        reconnects by itself.
        """
        conn, self.conn = self.conn, None
        with contextlib.suppress(Exception):
            conn.rollback()
        with contextlib.suppress(Exception):
            conn.close()

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Any]:
        """A cursor of the connection; any error drops the connection and is raised as a
        :class:`StoreError` (``StoreNotInitializedError`` for a missing table)."""
        conn = self.connection()
        cursor = None
        try:
            cursor = conn.cursor()
            yield cursor
        except Exception as exc:
            self.drop()
            if is_missing_table(exc):
                raise StoreNotInitializedError(MISSING_TABLES) from exc
            raise StoreError(f"job store ({self.location}): {type(exc).__name__}: "
                             f"{self.scrub(str(exc))}") from exc
        finally:
            if cursor is not None:
                with contextlib.suppress(Exception):
                    cursor.close()

    def _sql(self, sql: str) -> str:
        return sql.format(p=self.placeholder)

    def init(self) -> None:
        """Create taskwarren's tables (those that exist are left as they are)."""
        with self.cursor() as cur:
            for statement in ddl(self.dialect):
                cur.execute(statement)
            upgrade(cur, self.dialect)
            self.conn.commit()

    def check(self) -> None:
        """Fail now, with the clear error, if taskwarren's tables are missing."""
        with self.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {REJECTED} WHERE 1 = 0")
            cur.execute(f"SELECT id FROM {OUTBOX} WHERE 1 = 0")
            cur.fetchall()
            self.conn.commit()

    def claim(self, limit: int, lease_s: float) -> list[Row]:
        """Take up to ``limit`` due rows for ``lease_s`` seconds, in one short transaction."""
        now = time.time()
        with self.cursor() as cur:
            ids_rows = self._claim(cur, now, limit, now + lease_s)
            self.conn.commit()
        return ids_rows

    @classmethod
    def claim_select_sql(cls) -> str:
        """The claim's SELECT (parameters: now, now, limit)."""
        return (f"SELECT {_COLUMNS} FROM {OUTBOX}{cls.index_hint} "
                f"WHERE {_DUE.format(p=cls.placeholder)} "
                f"ORDER BY not_before, id LIMIT {cls.placeholder}{cls.lock_clause}")

    #: Appended to the table in the claim's SELECT.
    index_hint = ""
    #: Appended to the claim's SELECT.
    lock_clause = " FOR UPDATE SKIP LOCKED"

    def _claim(self, cur: Any, now: float, limit: int, until: float) -> list[Row]:
        cur.execute(self.claim_select_sql(), (now, now, limit))
        rows = [_row(r) for r in cur.fetchall()]
        if rows:
            marks = ", ".join([self.placeholder] * len(rows))
            cur.execute(self._sql("UPDATE " + OUTBOX + " SET claimed_until = {p}, "
                                  f"attempts = attempts + 1 WHERE id IN ({marks})"),
                        (until, *[r.id for r in rows]))
        return rows

    def delete(self, ids: Sequence[int]) -> None:
        """Delete the rows whose messages the broker confirmed."""
        if not ids:
            return
        with self.cursor() as cur:
            marks = ", ".join([self.placeholder] * len(ids))
            cur.execute(f"DELETE FROM {OUTBOX} WHERE id IN ({marks})", tuple(ids))
            self.conn.commit()

    def release(self, ids: Sequence[int], retry_at: float) -> None:
        """Let other relays (or this one) take ``ids`` again from ``retry_at`` on."""
        if not ids:
            return
        with self.cursor() as cur:
            marks = ", ".join([self.placeholder] * len(ids))
            cur.execute(self._sql("UPDATE " + OUTBOX + " SET claimed_until = {p} "
                                  f"WHERE id IN ({marks})"), (retry_at, *ids))
            self.conn.commit()

    def reject(self, row_id: int, reason: str) -> None:
        """Move a row that cannot become a message aside, with ``reason``, in one transaction."""
        with self.cursor() as cur:
            cur.execute(self._sql(
                f"INSERT INTO {REJECTED} ({_COLUMNS}, reason, rejected_at) "
                f"SELECT {_COLUMNS}, {{p}}, {{p}} FROM {OUTBOX} WHERE id = {{p}}"),
                (reason, time.time(), row_id))
            cur.execute(self._sql(f"DELETE FROM {OUTBOX} WHERE id = {{p}}"), (row_id,))
            self.conn.commit()

    def counts(self) -> tuple[int, int]:
        """Rows waiting in the outbox, and rows rejected."""
        with self.cursor() as cur:
            cur.execute(f"SELECT (SELECT COUNT(*) FROM {OUTBOX}), (SELECT COUNT(*) FROM "
                        f"{REJECTED})")
            waiting, rejected = cur.fetchone()
            self.conn.commit()
        return int(waiting), int(rejected)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a hint that rows were committed; whether one came.
        Only PostgreSQL is told (LISTEN/NOTIFY); elsewhere this sleeps and the relay polls."""
        time.sleep(timeout_s)
        return False

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            self.conn.close()


def _row(r: Sequence[Any]) -> Row:
    body = r[5]
    return Row(int(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]),
               bytes(body) if not isinstance(body, bytes) else body, str(r[6]), float(r[7]))


class SQLiteStore(Store):
    """The job store in a SQLite file (the embedded default)."""

    dialect: Dialect = "sqlite"
    placeholder = "?"

    def _connect(self) -> Any:
        split = urlsplit(self.url)
        path = unquote(split.path[1:])
        if split.netloc or split.query or not path or path == ":memory:":
            raise ConfigurationError(f"not a SQLite store URL: {self.location!r}; use "
                                     "sqlite:///relative.db or sqlite:////absolute/path.db")
        conn = sqlite3.connect(path, timeout=self.connect_timeout_s, isolation_level=None,
                               check_same_thread=False)
        # Text that is not UTF-8 (written by something else) fails its row, not the claim.
        conn.text_factory = lambda data: data.decode("utf-8", "surrogateescape")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return SQLiteTx(conn)

    lock_clause = ""  # the claim's BEGIN IMMEDIATE holds the write lock

    def claim(self, limit: int, lease_s: float) -> list[Row]:
        now = time.time()
        with self.cursor() as cur:
            # A read first (WAL readers take no lock): an idle poll, or one while the
            # application holds SQLite's single write lock, does not queue for it.
            cur.execute(f"SELECT 1 FROM {OUTBOX} WHERE {_DUE.format(p='?')} LIMIT 1",
                        (now, now))
            if cur.fetchone() is None:
                return []
            cur.execute("BEGIN IMMEDIATE")
            rows = self._claim(cur, now, limit, now + lease_s)
            self.conn.commit()
        return rows


class PostgresStore(Store):
    """The job store in PostgreSQL 13+ (psycopg 3: ``pip install taskwarren[postgres]``)."""

    dialect: Dialect = "postgresql"

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise missing_driver("psycopg", "postgres") from None
        url = "postgresql://" + self.url.split("://", 1)[1]
        conn = psycopg.connect(url, **self._pg_options())
        self._listener: Any = getattr(self, "_listener", None)  # kept across reconnects
        self._psycopg = psycopg
        self._url = url
        return conn

    def _claim(self, cur: Any, now: float, limit: int, until: float) -> list[Row]:
        # One statement: the rows are locked, stamped and returned in a single round trip.
        # ``= ANY(ARRAY(...))`` makes the outer UPDATE look the ids up by primary key;
        # ``IN (SELECT ...)`` let the planner scan the whole table to join them.
        cur.execute(self.claim_sql(), (until, now, now, limit))
        return sorted((_row(r) for r in cur.fetchall()), key=lambda r: r.id)

    def _pg_options(self) -> dict[str, Any]:
        # A half-open connection (a failover) is noticed in about 25 s instead of the
        # kernel's two hours, so a claim cannot hang the relay (and its stop) for long.
        # tcp_user_timeout covers a statement sent into a dead link (retransmissions,
        # where keepalives do not run).
        return {"connect_timeout": max(1, int(self.connect_timeout_s)), "keepalives": 1,
                "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
                "tcp_user_timeout": 30_000}

    @staticmethod
    def claim_sql() -> str:
        """The claim statement (``%s``: lease end, now, now, limit)."""
        return (f"UPDATE {OUTBOX} SET claimed_until = %s, attempts = attempts + 1 "
                f"WHERE id = ANY(ARRAY(SELECT id FROM {OUTBOX} WHERE {_DUE.format(p='%s')} "
                "ORDER BY not_before, id LIMIT %s FOR UPDATE SKIP LOCKED)) "
                f"RETURNING {_COLUMNS}")

    def wait(self, timeout_s: float) -> bool:
        if self._listener is None:
            try:
                self._listener = self._psycopg.connect(self._url, autocommit=True,
                                                       **self._pg_options())
                self._listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            except Exception:
                self._listener = None
                time.sleep(timeout_s)
                return False
        try:
            ready, _, _ = select.select([self._listener.fileno()], [], [], timeout_s)
            if not ready:
                return False
            got = False
            for _ in self._listener.notifies(timeout=0):
                got = True
            return got
        except Exception:
            with contextlib.suppress(Exception):
                self._listener.close()
            self._listener = None
            return False

    def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._listener.close()
        super().close()


class MySQLStore(Store):
    """The job store in MySQL 8 or MariaDB 10.6+ (PyMySQL: ``taskwarren[mysql]``)."""

    dialect: Dialect = "mysql"
    # When most rows are due, MySQL and MariaDB would rather scan the table and sort it,
    # and a sorting SKIP LOCKED read locks every row it reads: a second relay then gets
    # none. Walking the index in order needs no sort.
    index_hint = f" FORCE INDEX ({OUTBOX}_due)"

    def _connect(self) -> Any:
        try:
            import pymysql
        except ImportError:
            raise missing_driver("pymysql", "mysql") from None
        parts = urlsplit(self.url)
        database = parts.path.lstrip("/")
        if not database:
            raise ConfigurationError(f"the store URL {self.location} names no database: "
                                     "mysql://user:password@host:3306/database")
        conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
            user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
            database=unquote(database), connect_timeout=self.connect_timeout_s,
            read_timeout=IO_TIMEOUT_S, write_timeout=IO_TIMEOUT_S,
            autocommit=False, charset="utf8mb4")
        try:
            check_version(str(conn.get_server_info()))  # from the handshake: no query
        except ConfigurationError:
            conn.close()
            raise
        with conn.cursor() as cur:
            # Claims lock only the rows they take; REPEATABLE READ would also keep every
            # row the scan passed over locked until the commit.
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return conn


def open_store(url: str, connect_timeout_s: float = 10.0) -> Store:
    """A :class:`Store` for ``url``.

    Raises:
        ConfigurationError: an unsupported URL, or its driver is not installed.
        StoreError: the database cannot be reached.
    """
    kind = {"sqlite": SQLiteStore, "postgresql": PostgresStore, "postgres": PostgresStore,
            "mysql": MySQLStore, "mariadb": MySQLStore}.get(scheme_of(url))
    if kind is None:
        raise ConfigurationError(f"unsupported store URL {mask_url(url)!r}: use "
                                 "postgresql://, mysql:// or sqlite:///")
    return kind(url, connect_timeout_s)
