"""The application side of the outbox: write task calls on the caller's own connection.

``task.options(db=conn).send(...)`` ends here. The rows go through ``conn``, inside
whatever transaction it has open, so they commit or roll back with the application's
own data; nothing is published. A relay publishes them after the commit.

``db`` may be a DB-API connection of sqlite3, psycopg 3, PyMySQL or mysqlclient, a
SQLAlchemy ``Connection`` or ``Session``, or Django's ``django.db.connection`` (or one of
``django.db.connections``) inside ``transaction.atomic()``. The kind is told from the
object's type without importing any driver or framework.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from taskwarren.errors import StoreError, StoreNotInitializedError
from taskwarren.message import H_ETA, Envelope
from taskwarren.store.drivers import lost_race
from taskwarren.store.jobs import storable
from taskwarren.store.schema import JOBS, LIVE_STATES, OUTBOX, Dialect, insert_sql, is_missing_table

Kind = Literal["sqlite", "postgresql", "mysql", "sqlalchemy", "django"]

#: A delay longer than this waits in the outbox (``not_before``), not on the broker.
OUTBOX_DELAY_THRESHOLD_S = 60.0
#: The PostgreSQL channel a relay LISTENs on; a NOTIFY in the sending transaction is
#: delivered when (and only if) it commits.
NOTIFY_CHANNEL = "taskwarren_outbox"

MISSING_TABLES = (f"taskwarren's tables are missing from this database ({OUTBOX}): run "
                  "`taskwarren store init` with TASKWARREN_STORE_URL pointing at it")


@dataclass(frozen=True, slots=True)
class Writer:
    """How to run SQL on a caller's connection.

    Attributes:
        dialect: the database.
        placeholder: the driver's parameter marker (``?`` or ``%s``).
        executemany: runs one statement for many parameter tuples.
        execute: runs one statement.
        rowcount: runs one statement and returns the rows it changed.
        fetchone: runs one query and returns its first row (``None`` if none).
    """

    dialect: Dialect
    placeholder: str
    executemany: Callable[[str, Sequence[tuple[Any, ...]]], None]
    execute: Callable[[str, tuple[Any, ...]], None]
    rowcount: Callable[[str, tuple[Any, ...]], int]
    fetchone: Callable[[str, tuple[Any, ...]], Any]


#: The connection classes ``db=`` takes, by (top-level module, class name), base classes
#: included (an application may subclass its driver's connection). Async connections are
#: not among them: their ``execute`` returns a coroutine, and an unawaited one writes
#: nothing.
_KINDS: dict[tuple[str, str], Kind] = {
    ("sqlite3", "Connection"): "sqlite", ("psycopg", "Connection"): "postgresql",
    ("pymysql", "Connection"): "mysql", ("MySQLdb", "Connection"): "mysql",
    ("sqlalchemy", "Session"): "sqlalchemy", ("sqlalchemy", "Connection"): "sqlalchemy",
    ("sqlalchemy", "scoped_session"): "sqlalchemy",
    ("django", "ConnectionProxy"): "django", ("django", "BaseDatabaseWrapper"): "django",
}


def check_db(db: object) -> Kind:
    """The kind of connection ``db`` is, told from its type alone: nothing is called on it.

    Raises:
        TypeError: ``db`` is not a connection of a supported kind.
    """
    for cls in type(db).__mro__:
        kind = _KINDS.get((cls.__module__.split(".")[0], cls.__qualname__))
        if kind is not None:
            return kind
    raise TypeError(
        "db= takes a database connection of sqlite3, psycopg (3), PyMySQL or mysqlclient, "
        f"a SQLAlchemy Connection or Session, or Django's (not async); got {type(db).__qualname__} "
        f"from {type(db).__module__}")


def check_in_transaction(db: Any, kind: Kind) -> None:
    """Refuse a connection in autocommit mode with no transaction open: the row would be
    committed on its own at once, whatever then became of the application's data.

    Raises:
        TypeError: ``db`` commits each statement by itself.
    """
    idle_autocommit = False
    if kind == "sqlite":  # Python 3.12's autocommit=True, or isolation_level=None
        committing = db.isolation_level is None or getattr(db, "autocommit", None) is True
        idle_autocommit = committing and not db.in_transaction
    elif kind == "postgresql":
        idle_autocommit = bool(db.autocommit) and db.info.transaction_status == 0  # IDLE
    elif kind == "mysql" and hasattr(db, "server_status"):  # PyMySQL
        in_transaction = bool(db.server_status & 1)  # SERVER_STATUS_IN_TRANS
        idle_autocommit = bool(db.get_autocommit()) and not in_transaction
    elif kind == "mysql":  # mysqlclient cannot tell whether a BEGIN is open
        idle_autocommit = bool(db.get_autocommit())
    if idle_autocommit:
        raise TypeError(
            "db= got a connection in autocommit mode with no transaction open: the task "
            "would be committed on its own, before (or without) your data. Send inside "
            "your transaction (BEGIN ..., psycopg's conn.transaction(), ...)")


def writer_for(db: object) -> Writer:
    """A :class:`Writer` for ``db``.

    Raises:
        TypeError: ``db`` is not a connection of a supported kind.
    """
    kind = check_db(db)
    if kind == "sqlalchemy":
        return _sqlalchemy_writer(db)
    if kind == "django":
        return writer_for(django_driver_connection(db))
    check_in_transaction(db, kind)
    if kind == "sqlite":
        return _dbapi_writer(db, "sqlite", "?")
    return _dbapi_writer(db, "postgresql" if kind == "postgresql" else "mysql", "%s")


def django_driver_connection(db: Any) -> object:
    """The driver's own connection under a Django connection, which must be in an atomic
    block: the rows then commit or roll back with it (savepoints included). The driver's
    connection is used as is: Django's cursor wrapper would log the rows' bodies with the
    queries when ``DEBUG`` is on.

    Raises:
        TypeError: outside ``transaction.atomic()`` (Django commits each statement).
    """
    if not db.in_atomic_block:
        raise TypeError("db= got a Django connection outside transaction.atomic(): Django "
                        "commits each statement by itself, so the task would be committed "
                        "before (or without) your data. Send inside `with "
                        "transaction.atomic():`")
    db.ensure_connection()
    return db.connection


def _dbapi_writer(db: Any, dialect: Dialect, placeholder: str) -> Writer:
    def executemany(sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        cursor = db.cursor()
        try:
            cursor.executemany(sql, rows)
        finally:
            cursor.close()

    def execute(sql: str, params: tuple[Any, ...]) -> None:
        cursor = db.cursor()
        try:
            cursor.execute(sql, params)
        finally:
            cursor.close()

    def rowcount(sql: str, params: tuple[Any, ...]) -> int:
        cursor = db.cursor()
        try:
            cursor.execute(sql, params)
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def fetchone(sql: str, params: tuple[Any, ...]) -> Any:
        cursor = db.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchone()
        finally:
            cursor.close()

    return Writer(dialect, placeholder, executemany, execute, rowcount, fetchone)


def _sqlalchemy_writer(db: Any) -> Writer:
    # A Session writes through the connection of its current transaction (begun here
    # if none is): the same transaction as the application's own statements.
    connection = db if hasattr(db, "exec_driver_sql") else db.connection()
    # An engine made with isolation_level="AUTOCOMMIT" sends no BEGIN: the driver's own
    # connection then commits each statement, and is refused as such.
    raw = connection.connection.dbapi_connection
    raw_kind = check_db(raw)
    if raw_kind != "sqlalchemy":
        check_in_transaction(raw, raw_kind)
    name = connection.dialect.name
    dialects: dict[str, Dialect] = {"sqlite": "sqlite", "postgresql": "postgresql",
                                    "mysql": "mysql", "mariadb": "mysql"}
    if name not in dialects:
        raise TypeError(f"db= got a SQLAlchemy connection to {name}; taskwarren's store "
                        "runs on PostgreSQL, MySQL/MariaDB and SQLite")
    style = connection.dialect.paramstyle
    if style not in ("qmark", "format", "pyformat"):
        raise TypeError(f"db=: the SQLAlchemy driver's paramstyle {style!r} is not supported")
    placeholder = "?" if style == "qmark" else "%s"

    def executemany(sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        connection.exec_driver_sql(sql, list(rows))

    def execute(sql: str, params: tuple[Any, ...]) -> None:
        connection.exec_driver_sql(sql, params)

    def rowcount(sql: str, params: tuple[Any, ...]) -> int:
        return int(connection.exec_driver_sql(sql, params).rowcount)

    def fetchone(sql: str, params: tuple[Any, ...]) -> Any:
        return connection.exec_driver_sql(sql, params).fetchone()

    return Writer(dialects[name], placeholder, executemany, execute, rowcount, fetchone)


def outbox_row(envelope: Envelope, delay_s: float, now: float) -> tuple[Any, ...]:
    """The outbox row of ``envelope`` (in :data:`~taskwarren.store.schema.INSERT_COLUMNS`
    order), sent at ``now`` with ``delay_s``.

    A delay up to :data:`OUTBOX_DELAY_THRESHOLD_S` is left to the broker (the relay
    publishes at once with what is left of it); a longer one waits in the outbox.
    """
    not_before = now + delay_s if delay_s > OUTBOX_DELAY_THRESHOLD_S else now
    return (envelope.message_id, envelope.queue, envelope.task,
            json.dumps(envelope.headers, separators=(",", ":")), envelope.body,
            envelope.content_type, now, not_before)


def write(db: object, envelopes: Sequence[Envelope], delay_s: float, *,
          record: bool = False, unique_key: str | None = None,
          now: float | None = None) -> str | None:
    """Insert ``envelopes`` into the outbox through ``db``, in its open transaction.

    With ``record``, each is also born in ``taskwarren_jobs`` (``queued``, or
    ``scheduled`` when delayed), in the same transaction. With ``unique_key`` (one
    envelope), nothing is written when a live job already holds the key. ``now`` is
    the time they are sent at (default: this machine's clock; a scheduler passes the
    database's, so that a skewed local clock cannot hold its rows back from a relay).

    Returns:
        With ``unique_key``: the id of the job that holds the key (the new one, or the
        live one that was there). Otherwise ``None``.

    Raises:
        TypeError: ``db`` is not a supported connection.
        StoreNotInitializedError: taskwarren's tables do not exist.
        StoreError: the database refused the rows (the driver's error is chained).
    """
    writer = writer_for(db)
    now = time.time() if now is None else now
    rows = [outbox_row(e, delay_s, now) for e in envelopes]
    holder = None
    try:
        if record or unique_key is not None:
            holder = _born(writer, envelopes, delay_s, now, unique_key)
            if holder is not None and holder != envelopes[0].message_id:
                return holder  # a live job holds the key: nothing is enqueued
        if len(rows) == 1:
            writer.execute(insert_sql(writer.placeholder), rows[0])
        else:
            writer.executemany(insert_sql(writer.placeholder), rows)
        if writer.dialect == "postgresql":
            writer.execute(f"SELECT pg_notify({writer.placeholder}, '')", (NOTIFY_CHANNEL,))
    except StoreError:
        raise
    except Exception as exc:
        if is_missing_table(exc):
            raise StoreNotInitializedError(MISSING_TABLES) from exc
        if lost_race(exc):
            raise StoreError("the outbox insert lost a race with another transaction (a "
                             "deadlock): the database rolled the transaction back; run it "
                             "again") from exc
        raise StoreError(f"the outbox insert failed: {type(exc).__name__}") from exc
    return holder


#: The columns a job is born with.
_BORN_COLUMNS = ("task_id", "task", "queue", "state", "attempt", "version", "args",
                 "created_at", "scheduled_at", "updated_at", "unique_key")


def _born(writer: Writer, envelopes: Sequence[Envelope], delay_s: float, now: float,
          unique_key: str | None) -> str | None:
    """Write the jobs' rows; with ``unique_key``, the id of the live job holding it."""
    p = writer.placeholder
    state = "scheduled" if delay_s > 0 else "queued"
    scheduled = now + delay_s if delay_s > 0 else None
    rows = [(e.message_id, e.task, e.queue, state, 0, 0,
             storable(e.body.decode("utf-8", "replace")), now, scheduled, now, unique_key)
            for e in envelopes]
    sql = (f"INSERT INTO {JOBS} ({', '.join(_BORN_COLUMNS)}) "
           f"VALUES ({', '.join([p] * len(_BORN_COLUMNS))})")
    if unique_key is None:
        writer.executemany(sql, rows)
        return None
    if len(rows) != 1:
        raise ValueError("a unique_key belongs to one job")
    conflict = ("ON DUPLICATE KEY UPDATE task_id = task_id" if writer.dialect == "mysql"
                else "ON CONFLICT DO NOTHING")
    inserted = writer.rowcount(f"{sql} {conflict}", rows[0]) == 1
    if inserted and writer.dialect != "mysql":
        return envelopes[0].message_id
    # MySQL's count of a no-op ON DUPLICATE KEY UPDATE is 1, not 0, on a connection with
    # CLIENT_FOUND_ROWS (SQLAlchemy's): the holder is read back instead. The locking read
    # sees it even where the transaction's snapshot is older (REPEATABLE READ); SQLite
    # has one writer at a time.
    lock = "" if writer.dialect == "sqlite" else " FOR UPDATE"
    live = ", ".join(f"'{s}'" for s in LIVE_STATES)
    where = f"unique_key = {p} AND state IN ({live})"
    if writer.dialect == "mysql":
        # Through the unique index: a scan would lock every row it read, and producers
        # racing on other keys would deadlock on them.
        where = f"live_key = {p}"
    found = writer.fetchone(f"SELECT task_id FROM {JOBS} WHERE {where}{lock}", (unique_key,))
    if found is None:
        raise StoreError(f"unique_key {unique_key!r}: the insert conflicted, but no live job "
                         "holds the key (was the same task_id sent twice?)")
    return str(found[0])


def eta_of(envelope: Envelope) -> str:
    """The ``tw-eta`` header of ``envelope``, or ``""``."""
    value = envelope.headers.get(H_ETA)
    return value if isinstance(value, str) else ""
