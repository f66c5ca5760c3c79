"""Where analysis results go: one row per Message-ID, upserted.

Delivery is at-least-once, so a message may be analysed and stored twice;
:meth:`ResultStore.upsert` keys on the Message-ID, keeps the newer analysis
(by ``analysed_at``) and counts deliveries, so a redelivery never makes a
second row. A message the ingress accepted is stored once through
:meth:`ResultStore.upsert_once`, which never replaces another message's row.

The backend comes from ``EMAIL_ANALYSIS_DB``:

* unset, a file path, or ``sqlite:///path``: SQLite (default
  ``email_analysis.db`` in the working directory) in WAL mode with a busy
  timeout, so several worker processes can write at once;
* ``postgresql://...``: PostgreSQL through ``psycopg`` (``pip install
  'psycopg[binary]'``), imported only when such a URL is used;
* ``mysql://...``: MySQL 8 / MariaDB 10.6+ through PyMySQL (:mod:`.store_mysql`).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel, Field

from .analysis import Analysis

__all__ = [
    "DEFAULT_DB",
    "PostgresStore",
    "ResultStore",
    "SQLiteStore",
    "StoreConfigurationError",
    "StoreSummary",
    "UnknownIngressMessageError",
    "close_default_stores",
    "count",
    "default_store",
    "open_store",
    "summary",
    "upsert",
    "upsert_once",
]

DEFAULT_DB = "email_analysis.db"
TABLE = "email_analysis"
#: The ingress's record of the messages it accepted (:mod:`.intake` creates it); its
#: ``analysed_at`` makes storing an ingress message's analysis happen once.
INGRESS_TABLE = "email_ingress"
#: Longest row id (MySQL's ``VARCHAR(255)`` key; the ingress keeps Message-IDs to 250).
_ROW_ID_CHARS = 255
HISTOGRAM_BUCKETS = [f"{lo}-{lo + 9}" for lo in range(0, 90, 10)] + ["90-100"]

# Columns that follow the newest analysis; ``deliveries`` counts every upsert.
_DATA_COLUMNS = ("sender_domain", "score", "broken", "analysed_at", "stored_at", "analysis")


class StoreConfigurationError(RuntimeError):
    """``EMAIL_ANALYSIS_DB`` names a backend that cannot be used here."""


class UnknownIngressMessageError(RuntimeError):
    """A result came for a message key the ingress has no record of in this store: the
    workers' ``EMAIL_ANALYSIS_DB`` is not the database the ingress writes to."""


class StoreSummary(BaseModel):
    """Aggregate view of stored results."""

    total: int = 0
    broken: int = 0
    mean_score: float = 0.0
    score_histogram: dict[str, int] = Field(
        default_factory=lambda: dict.fromkeys(HISTOGRAM_BUCKETS, 0)
    )
    top_sender_domains: list[tuple[str, int]] = Field(default_factory=list)


def _row_values(analysis: Analysis) -> tuple[str, str | None, int, bool, float, float, str]:
    return (
        analysis.message_id,
        analysis.sender_domain,
        analysis.score,
        analysis.broken,
        analysis.analysed_at.timestamp(),
        time.time(),
        analysis.model_dump_json(),
    )


def _histogram(rows: list[tuple[Any, Any]]) -> dict[str, int]:
    histogram = dict.fromkeys(HISTOGRAM_BUCKETS, 0)
    for bucket, n in rows:
        histogram[HISTOGRAM_BUCKETS[min(int(bucket), 9)]] += int(n)
    return histogram


def _check_table(table: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", table):
        raise StoreConfigurationError(f"not a plain SQL table name: {table!r}")
    return table


def _upsert_sql(table: str, placeholder: str, excluded: str, cast_json: str = "") -> str:
    newer = f"{excluded}.analysed_at >= {table}.analysed_at"
    sets = ",\n  ".join(
        f"{col} = CASE WHEN {newer} THEN {excluded}.{col} ELSE {table}.{col} END"
        for col in _DATA_COLUMNS
    )
    values = ", ".join([placeholder] * 6 + [placeholder + cast_json])
    return (
        f"INSERT INTO {table} (message_id, {', '.join(_DATA_COLUMNS)}, deliveries)\n"
        f"VALUES ({values}, 1)\n"
        f"ON CONFLICT (message_id) DO UPDATE SET\n  {sets},\n"
        f"  deliveries = {table}.deliveries + 1"
    )


def _insert_sql(table: str, placeholder: str, cast_json: str = "") -> str:
    """A plain INSERT of one row (an ingress message's analysis: never an update)."""
    values = ", ".join([placeholder] * 6 + [placeholder + cast_json])
    return (f"INSERT INTO {table} (message_id, {', '.join(_DATA_COLUMNS)}, deliveries)\n"
            f"VALUES ({values}, 1)")


def _without_nul(value: Any) -> Any:
    """PostgreSQL text and jsonb refuse U+0000; drop it wherever it hides."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


class ResultStore(ABC):
    """Results keyed by Message-ID. Safe to share between threads of one process."""

    def __init__(self, table: str = TABLE) -> None:
        self.table = _check_table(table)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[tuple[int, Any]] = []

    # -- connections: one per thread, and new ones after a fork
    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = self._connect()
            self._local.conn = conn
            self._local.pid = os.getpid()
            with self._lock:
                self._connections.append((os.getpid(), conn))
        return conn

    @abstractmethod
    def _connect(self) -> Any: ...

    def close(self) -> None:
        """Close the connections this process opened."""
        with self._lock:
            mine = [c for pid, c in self._connections if pid == os.getpid()]
            self._connections = [(p, c) for p, c in self._connections if p != os.getpid()]
        for conn in mine:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the API
    @abstractmethod
    def upsert(self, analysis: Analysis) -> None:
        """Insert, or update the row with the same Message-ID if this analysis is newer."""

    def upsert_once(self, analysis: Analysis, message_key: str) -> bool:
        """Store the analysis of the ingress message ``message_key``, unless one was
        stored for it before; whether this one was.

        One transaction marks the ingress record analysed and inserts: a redelivered
        analysis (at-least-once) finds the mark and writes nothing, so each accepted
        message counts one delivery. It never replaces another message's row: anyone
        can write a Message-ID, and the ingress keys on Message-ID and body, so a second
        message reusing a stored Message-ID goes to the row ``"<id> #<first 32 hex
        digits of its key>"`` (:meth:`row_id`), its analysis unchanged.

        Raises:
            UnknownIngressMessageError: no ingress record has this key (a result is
                never dropped silently because the stores are configured apart).
        """
        sql = (f"UPDATE {INGRESS_TABLE} SET analysed_at = {self._mark} "
               f"WHERE message_key = {self._mark} AND analysed_at IS NULL")
        if self._once(sql, (time.time(), message_key), analysis, message_key):
            return True
        known = f"SELECT COUNT(*) FROM {INGRESS_TABLE} WHERE message_key = {self._mark}"
        if not self._scalar(known, (message_key,)):
            raise UnknownIngressMessageError(
                f"no {INGRESS_TABLE} row for message key {message_key[:64]!r}: point "
                "EMAIL_ANALYSIS_DB at the ingress's database")
        return False

    def recorded_path(self, message_key: str) -> str | None:
        """The file the ingress record ``message_key`` points at now (None: no record).

        The ingress points a record at a new copy of the message when the recorded file
        was lost before analysis; the job still carries the old path.
        """
        found = self._scalar(
            f"SELECT path FROM {INGRESS_TABLE} WHERE message_key = {self._mark}",
            (message_key,))
        return None if found is None else str(found)

    def analysed(self, message_key: str) -> bool:
        """Whether the ingress message ``message_key`` has its analysis stored."""
        found = self._scalar(
            f"SELECT COUNT(*) FROM {INGRESS_TABLE} WHERE message_key = {self._mark} "
            "AND analysed_at IS NOT NULL", (message_key,))
        return bool(found)

    def analysed_files(self, before: float, limit: int) -> list[tuple[str, str]]:
        """``(message key, path)`` of ingress messages analysed before ``before`` (epoch
        seconds) whose file is still recorded, oldest first, at most ``limit``."""
        cursor = self._connection().cursor()
        try:
            cursor.execute(
                f"SELECT message_key, path FROM {INGRESS_TABLE} WHERE analysed_at < "
                f"{self._mark} AND path <> '' ORDER BY analysed_at LIMIT {int(limit)}",
                (before,))
            return [(str(key), str(path)) for key, path in cursor.fetchall()]
        finally:
            cursor.close()

    def forget_files(self, message_keys: Sequence[str]) -> None:
        """Record that these analysed messages' files are gone (their path becomes
        empty), in one statement."""
        if not message_keys:
            return
        marks = ", ".join([self._mark] * len(message_keys))
        cursor = self._connection().cursor()
        try:
            cursor.execute(f"UPDATE {INGRESS_TABLE} SET path = '' WHERE message_key IN "
                           f"({marks}) AND analysed_at IS NOT NULL", tuple(message_keys))
        finally:
            cursor.close()

    def row_id(self, message_id: str, message_key: str) -> str:
        """The row an ingress message's analysis goes to: its Message-ID, or, when a row
        of that Message-ID exists (another message's), the Message-ID and the key.

        Run inside :meth:`_once`'s transaction; a concurrent insert of the same
        Message-ID makes the INSERT fail, and the task's retry then takes the other row.
        """
        message_id = message_id[:_ROW_ID_CHARS]
        taken = f"SELECT COUNT(*) FROM {self.table} WHERE message_id = {self._mark}"
        if not self._scalar(taken, (message_id,)):
            return message_id
        suffix = " #" + message_key[:32]
        return message_id[:_ROW_ID_CHARS - len(suffix)] + suffix

    def _scalar(self, sql: str, params: tuple[Any, ...]) -> Any:
        cursor = self._connection().cursor()
        try:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else row[0]

    _mark = "?"

    @abstractmethod
    def _once(self, claim_sql: str, params: tuple[Any, ...], analysis: Analysis,
              message_key: str) -> bool:
        """Run ``claim_sql``; if it changed a row, insert ``analysis`` at :meth:`row_id`;
        one transaction."""

    @abstractmethod
    def get(self, message_id: str) -> Analysis | None:
        """The stored analysis for a Message-ID, if any."""

    @abstractmethod
    def deliveries(self, message_id: str) -> int:
        """How many times a result for this Message-ID was upserted (0 if never)."""

    @abstractmethod
    def count(self, since: float | None = None) -> int:
        """Rows in the store, or only those written at or after ``since`` (Unix time)."""

    @abstractmethod
    def summary(self, since: float | None = None, top: int = 10) -> StoreSummary:
        """Score histogram, top sender domains and broken count."""


class SQLiteStore(ResultStore):
    """SQLite in WAL mode; a busy timeout lets many processes write."""

    def __init__(
        self, path: str | os.PathLike[str], busy_timeout_ms: int = 60_000, table: str = TABLE
    ) -> None:
        super().__init__(table)
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {self.table} (
                message_id TEXT PRIMARY KEY,
                sender_domain TEXT,
                score INTEGER NOT NULL,
                broken INTEGER NOT NULL,
                analysed_at REAL NOT NULL,
                stored_at REAL NOT NULL,
                deliveries INTEGER NOT NULL DEFAULT 1,
                analysis TEXT NOT NULL
            )"""
        )
        conn.execute(
            f"CREATE INDEX IF NOT EXISTS {self.table}_stored_at ON {self.table} (stored_at)"
        )
        return conn

    def upsert(self, analysis: Analysis) -> None:
        sql = _upsert_sql(self.table, "?", "excluded")
        self._connection().execute(sql, _row_values(analysis))

    def _once(self, claim_sql: str, params: tuple[Any, ...], analysis: Analysis,
              message_key: str) -> bool:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute(claim_sql, params).rowcount != 1:
                conn.execute("ROLLBACK")
                return False
            values = list(_row_values(analysis))
            values[0] = self.row_id(analysis.message_id, message_key)
            conn.execute(_insert_sql(self.table, "?"), values)
            conn.execute("COMMIT")
            return True
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def get(self, message_id: str) -> Analysis | None:
        row = (
            self._connection()
            .execute(f"SELECT analysis FROM {self.table} WHERE message_id = ?", (message_id,))
            .fetchone()
        )
        return None if row is None else Analysis.model_validate_json(row[0])

    def deliveries(self, message_id: str) -> int:
        row = (
            self._connection()
            .execute(f"SELECT deliveries FROM {self.table} WHERE message_id = ?", (message_id,))
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def count(self, since: float | None = None) -> int:
        row = (
            self._connection()
            .execute(f"SELECT COUNT(*) FROM {self.table} WHERE stored_at >= ?", (since or 0.0,))
            .fetchone()
        )
        return int(row[0])

    def summary(self, since: float | None = None, top: int = 10) -> StoreSummary:
        conn = self._connection()
        where = (since or 0.0,)
        total, broken, mean = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(broken), 0), COALESCE(AVG(score), 0) "
            f"FROM {self.table} WHERE stored_at >= ?",
            where,
        ).fetchone()
        buckets = conn.execute(
            f"SELECT MIN(score / 10, 9) AS bucket, COUNT(*) FROM {self.table} "
            f"WHERE stored_at >= ? GROUP BY bucket",
            where,
        ).fetchall()
        domains = conn.execute(
            f"SELECT sender_domain, COUNT(*) AS n FROM {self.table} "
            f"WHERE stored_at >= ? AND sender_domain IS NOT NULL "
            f"GROUP BY sender_domain ORDER BY n DESC, sender_domain LIMIT ?",
            (*where, top),
        ).fetchall()
        return StoreSummary(
            total=int(total),
            broken=int(broken),
            mean_score=round(float(mean), 2),
            score_histogram=_histogram(buckets),
            top_sender_domains=[(str(d), int(n)) for d, n in domains],
        )


class PostgresStore(ResultStore):
    """PostgreSQL through psycopg 3, in autocommit mode (each upsert is one statement)."""

    def __init__(self, url: str, table: str = TABLE) -> None:
        super().__init__(table)
        try:
            import psycopg  # noqa: F401  (checked here so a bad setup fails early)
        except ImportError as exc:
            raise StoreConfigurationError(
                "EMAIL_ANALYSIS_DB is a PostgreSQL URL but psycopg is not installed: "
                "pip install 'psycopg[binary]'"
            ) from exc
        self.url = url

    def _connect(self) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True)
        with conn.transaction():
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide; serialise it.
            conn.execute("SELECT pg_advisory_xact_lock(7240113)")
            conn.execute(
                f"""CREATE TABLE IF NOT EXISTS {self.table} (
                    message_id TEXT PRIMARY KEY,
                    sender_domain TEXT,
                    score INTEGER NOT NULL,
                    broken BOOLEAN NOT NULL,
                    analysed_at DOUBLE PRECISION NOT NULL,
                    stored_at DOUBLE PRECISION NOT NULL,
                    deliveries INTEGER NOT NULL DEFAULT 1,
                    analysis JSONB NOT NULL
                )"""
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_stored_at ON {self.table} (stored_at)"
            )
        return conn

    def upsert(self, analysis: Analysis) -> None:
        values: list[Any] = [_without_nul(v) for v in _row_values(analysis)]
        values[-1] = json.dumps(_without_nul(analysis.model_dump(mode="json")))
        self._connection().execute(_upsert_sql(self.table, "%s", "EXCLUDED", "::jsonb"), values)

    _mark = "%s"

    def _once(self, claim_sql: str, params: tuple[Any, ...], analysis: Analysis,
              message_key: str) -> bool:
        conn = self._connection()
        values: list[Any] = [_without_nul(v) for v in _row_values(analysis)]
        values[-1] = json.dumps(_without_nul(analysis.model_dump(mode="json")))
        with conn.transaction():
            if conn.execute(claim_sql, params).rowcount != 1:
                return False
            values[0] = self.row_id(values[0], message_key)
            conn.execute(_insert_sql(self.table, "%s", "::jsonb"), values)
        return True

    def get(self, message_id: str) -> Analysis | None:
        row = (
            self._connection()
            .execute(f"SELECT analysis FROM {self.table} WHERE message_id = %s", (message_id,))
            .fetchone()
        )
        if row is None:
            return None
        data = row[0]
        return Analysis.model_validate(json.loads(data) if isinstance(data, str) else data)

    def deliveries(self, message_id: str) -> int:
        row = (
            self._connection()
            .execute(f"SELECT deliveries FROM {self.table} WHERE message_id = %s", (message_id,))
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def count(self, since: float | None = None) -> int:
        row = (
            self._connection()
            .execute(f"SELECT COUNT(*) FROM {self.table} WHERE stored_at >= %s", (since or 0.0,))
            .fetchone()
        )
        return int(row[0])

    def summary(self, since: float | None = None, top: int = 10) -> StoreSummary:
        conn = self._connection()
        where = (since or 0.0,)
        total, broken, mean = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(broken::int), 0), COALESCE(AVG(score), 0) "
            f"FROM {self.table} WHERE stored_at >= %s",
            where,
        ).fetchone()
        buckets = conn.execute(
            f"SELECT LEAST(score / 10, 9) AS bucket, COUNT(*) FROM {self.table} "
            f"WHERE stored_at >= %s GROUP BY bucket",
            where,
        ).fetchall()
        domains = conn.execute(
            f"SELECT sender_domain, COUNT(*) AS n FROM {self.table} "
            f"WHERE stored_at >= %s AND sender_domain IS NOT NULL "
            f"GROUP BY sender_domain ORDER BY n DESC, sender_domain LIMIT %s",
            (*where, top),
        ).fetchall()
        return StoreSummary(
            total=int(total),
            broken=int(broken),
            mean_score=round(float(mean), 2),
            score_histogram=_histogram(buckets),
            top_sender_domains=[(str(d), int(n)) for d, n in domains],
        )


def open_store(url: str | os.PathLike[str] | None = None) -> ResultStore:
    """A store for ``url``, or for ``EMAIL_ANALYSIS_DB``, or SQLite ``email_analysis.db``."""
    target = os.fspath(url) if url is not None else os.environ.get("EMAIL_ANALYSIS_DB", "")
    target = target.strip() or DEFAULT_DB
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresStore(target)
    if target.startswith(("mysql://", "mariadb://")):
        from .store_mysql import MySQLStore

        return MySQLStore(target)
    return SQLiteStore(target.removeprefix("sqlite:///"))


_default: dict[tuple[int, str], ResultStore] = {}
_default_lock = threading.Lock()


def default_store() -> ResultStore:
    """This process's store for the current ``EMAIL_ANALYSIS_DB`` (opened once)."""
    key = (os.getpid(), os.environ.get("EMAIL_ANALYSIS_DB", "").strip())
    with _default_lock:
        store = _default.get(key)
        if store is None:
            store = _default[key] = open_store()
        return store


def close_default_stores() -> None:
    """Close and forget this process's default stores (tests; a worker never needs it)."""
    with _default_lock:
        stores = list(_default.values())
        _default.clear()
    for store in stores:
        store.close()


def upsert(analysis: Analysis) -> None:
    """Upsert into :func:`default_store`."""
    default_store().upsert(analysis)


def upsert_once(analysis: Analysis, message_key: str) -> bool:
    """:meth:`ResultStore.upsert_once` on :func:`default_store`."""
    return default_store().upsert_once(analysis, message_key)


def count() -> int:
    """Rows in :func:`default_store`."""
    return default_store().count()


def summary() -> StoreSummary:
    """Summary of :func:`default_store`."""
    return default_store().summary()
