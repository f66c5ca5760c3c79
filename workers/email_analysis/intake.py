"""Accepting one message: its key, its record and its analysis job, in one transaction.

The ingress (:mod:`.ingress`) hands every message that is already durable in the
Maildir to :meth:`Intake.accept`, which in ONE transaction of the results store:

1. checks that analysis keeps up: the oldest ``email.ingest`` row still waiting in
   taskwarren's outbox must be younger than ``max_outbox_age_s``. Rows age there when
   the relay cannot publish them (the broker is down or blocks publishers, or no relay
   runs), so this is how the broker's state reaches the ingress, through the database
   it already writes, with no connection of its own to the broker;
2. records the message in :data:`INGRESS_TABLE` under its key (the SHA-256 of its
   Message-ID and of its body), whose primary key turns a second delivery of the same
   message into a no-op: it is analysed once, however often the mail server retries;
3. sends the ``ingest`` task with ``.options(db=conn, unique_key=key)``: an outbox row
   and a ``queued`` job row, committed with the record or not at all.

Anything that keeps the commit from happening raises :class:`UnavailableError`, which
the ingress answers with a temporary failure (451) so the mail server retries.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from taskwarren import Warren
from taskwarren.errors import TaskwarrenError
from taskwarren.store import Store, open_store
from taskwarren.store.schema import OUTBOX

from . import tasks
from .store import INGRESS_TABLE

__all__ = ["INGRESS_TABLE", "Identity", "Intake", "OutcomeUnknownError", "UnavailableError",
           "identify", "store_url_of"]

#: Longest Message-ID kept (the results store keys on it; MySQL indexes 255 characters).
MAX_MESSAGE_ID_CHARS = 250
#: Prefix of the jobs' ``unique_key`` (the rest is the message key).
UNIQUE_PREFIX = "email:"

log = structlog.get_logger("email_analysis.ingress")

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:(.*(?:\r?\n[ \t].*)*)")


class UnavailableError(Exception):
    """The message cannot be made durable now; the mail server should try again later.

    The text never holds message content or a password: it is logged and may be sent
    to the client.
    """


class OutcomeUnknownError(UnavailableError):
    """The commit was sent but its outcome is unknown (the connection was lost during
    COMMIT): the record may exist and point at the message's file, which must be kept.
    A retry then finds the record (a duplicate) or makes it."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a message is, as far as deduplication and the results store are concerned.

    Attributes:
        message_id: the Message-ID (printable ASCII, at most 250 characters), or one made
            from the key when the message has none.
        key: hex SHA-256 of the Message-ID as found (empty if none) and of the body's
            SHA-256: the same message delivered twice has the same key.
        had_message_id: whether the message carried a Message-ID header.
    """

    message_id: str
    key: str
    had_message_id: bool


def _header_message_id(header: bytes) -> str:
    match = _MESSAGE_ID.search(header)
    if match is None:
        return ""
    # Unfold, and keep printable ASCII only: the id is a key and ends up in logs and HTML.
    text = match.group(1).decode("ascii", "replace")
    text = "".join(ch if " " < ch < "\x7f" else " " for ch in text)
    return " ".join(text.split())[:MAX_MESSAGE_ID_CHARS]


def identify(data: bytes) -> Identity:
    """The :class:`Identity` of the raw message ``data`` (never raises on bad mail)."""
    end = _HEADER_END.search(data)
    header, body = (data[:end.start()], data[end.end():]) if end else (data, b"")
    found = _header_message_id(header)
    digest = hashlib.sha256()
    digest.update(b"email-ingress-v1\0" + found.encode("ascii") + b"\0")
    digest.update(hashlib.sha256(body).digest())
    key = digest.hexdigest()
    message_id = found or f"<{key[:40]}@no-message-id.invalid>"
    return Identity(message_id=message_id, key=key, had_message_id=bool(found))


def store_url_of(db: str) -> str:
    """``EMAIL_ANALYSIS_DB`` spelt as a taskwarren store URL (a bare path is SQLite)."""
    db = db.strip()
    if re.match(r"^[a-z][a-z0-9+]*://", db):
        return db
    return "sqlite:///" + os.path.abspath(db)


def _ddl(dialect: str) -> str:
    real = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION"}.get(dialect, "DOUBLE")
    suffix = " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if dialect == "mysql" else ""
    return (f"CREATE TABLE IF NOT EXISTS {INGRESS_TABLE} (\n"
            "  message_key CHAR(64) NOT NULL PRIMARY KEY,\n"
            "  message_id VARCHAR(255) NOT NULL,\n"
            "  path VARCHAR(1024) NOT NULL,\n"
            "  size_bytes BIGINT NOT NULL,\n"
            "  task_id VARCHAR(64) NOT NULL,\n"
            f"  accepted_at {real} NOT NULL,\n"
            f"  analysed_at {real}\n){suffix}")


def _session_sql(dialect: str, timeout_s: float) -> list[str]:
    """Run on each new connection: waiting for a lock is bounded, so a blocked store
    gives a 451 within seconds instead of holding the mail server's session."""
    if dialect == "postgresql":
        return [f"SET lock_timeout = {int(timeout_s * 1000)}",
                f"SET statement_timeout = {int(timeout_s * 2000)}"]
    if dialect == "mysql":
        return [f"SET SESSION innodb_lock_wait_timeout = {max(1, int(timeout_s))}"]
    return []


def _is_integrity_error(exc: BaseException) -> bool:
    """The driver's constraint-violation error (sqlite3, psycopg and PyMySQL all call it
    so): a duplicate key, or another constraint; :meth:`Intake.accept` tells them apart."""
    return any(cls.__name__ == "IntegrityError" for cls in type(exc).__mro__)


class Intake:
    """Records accepted messages and enqueues their analysis, one transaction each.

    Safe to call from many threads: each has its own connection to the store.

    Args:
        db_url: the results store, which must also hold taskwarren's job store tables
            (the outbox); a taskwarren store URL (see :func:`store_url_of`).
        app: the app whose ``ingest`` task is sent (registered on it if missing). Its
            job store must be ``db_url``: the relay and the projector read it there.
        max_outbox_age_s: refuse (451) while an analysis job has waited this long in
            the outbox without being published.
        timeout_s: how long a connect or a lock may take before the store counts as down.
    """

    def __init__(self, db_url: str, app: Warren, *, max_outbox_age_s: float = 5.0,
                 timeout_s: float = 5.0) -> None:
        self.db_url = db_url
        self.max_outbox_age_s = max_outbox_age_s
        self.timeout_s = timeout_s
        existing = app.tasks.get(tasks.ingest.name)
        self._task = existing or app.task(name=tasks.ingest.name,
                                          queue=tasks.INGEST_QUEUE)(tasks.ingest.fn)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._stores: list[Store] = []

    def prepare(self) -> None:
        """Create taskwarren's tables and the ingress table where missing.

        Raises:
            UnavailableError: the store cannot be reached.
        """
        try:
            store = open_store(self.db_url, self.timeout_s)
        except TaskwarrenError as exc:
            raise UnavailableError(str(exc)) from exc
        try:
            store.init()
            with store.cursor() as cur:
                cur.execute(_ddl(store.dialect))
            store.connection().commit()
        except TaskwarrenError as exc:
            raise UnavailableError(str(exc)) from exc
        finally:
            store.close()

    def _store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = open_store(self.db_url, self.timeout_s)
            self._local.store = store
            with self._lock:
                self._stores.append(store)
        conn = store.connection()
        if getattr(self._local, "prepared", None) is not conn:
            cur = conn.cursor()
            for statement in _session_sql(store.dialect, self.timeout_s):
                cur.execute(statement)
            conn.commit()
            self._local.prepared = conn
        return store

    def accept(self, identity: Identity, path: Path, size: int) -> bool:
        """Record the message at ``path`` and enqueue its analysis; False if it was
        already accepted (a duplicate: nothing is written, ``path`` may go).

        A duplicate whose recorded file is gone and whose analysis is not done yet is
        pointed at ``path`` instead (True: keep the file).

        Raises:
            OutcomeUnknownError: the commit may or may not have happened; keep the file.
            UnavailableError: nothing was committed (the store is down or blocked, or
                analysis is behind); the caller answers 451.
        """
        try:
            store = self._store()
        except TaskwarrenError as exc:
            raise UnavailableError("the results store cannot be reached") from exc
        except Exception as exc:
            self._forget()
            raise UnavailableError("the results store cannot be reached") from exc
        conn = store.connection()
        raw: Any = getattr(conn, "raw", conn)  # SQLite's own connection, to BEGIN on
        p = store.placeholder
        try:
            if store.dialect == "sqlite":
                raw.execute("BEGIN IMMEDIATE")
            cur = conn.cursor()
            self._check_lag(cur, p)
            task_id = uuid.uuid4().hex
            try:
                cur.execute(f"INSERT INTO {INGRESS_TABLE} (message_key, message_id, path, "
                            f"size_bytes, task_id, accepted_at) VALUES ({p}, {p}, {p}, {p}, "
                            f"{p}, {p})", (identity.key, identity.message_id, str(path), size,
                                           task_id, time.time()))
            except Exception as exc:
                if not _is_integrity_error(exc):
                    raise
                conn.rollback()
                return self._already_accepted(store, identity, path)
            self._task.options(db=raw, unique_key=UNIQUE_PREFIX + identity.key,
                               task_id=task_id).send(path=str(path),
                                                     message_id=identity.message_id,
                                                     message_key=identity.key)
        except UnavailableError:
            store.drop()
            raise
        except Exception as exc:
            store.drop()
            log.warning("ingress.store_failed", error=type(exc).__name__)
            raise UnavailableError("the results store did not commit") from exc
        self._commit(store, identity)
        return True

    @staticmethod
    def _commit(store: Store, identity: Identity) -> None:
        try:
            store.connection().commit()
        except Exception as exc:
            # The server may have committed and the reply been lost: the record may point
            # at the file, which must therefore stay.
            store.drop()
            log.warning("ingress.commit_unknown", error=type(exc).__name__,
                        message_key=identity.key)
            raise OutcomeUnknownError("the results store may not have committed") from exc

    def _already_accepted(self, store: Store, identity: Identity, path: Path) -> bool:
        """After a primary key violation: confirm the record exists; if its file is gone
        and it is not analysed yet, point it at ``path`` (True: keep that file)."""
        conn = store.connection()
        p = store.placeholder
        cur = conn.cursor()
        cur.execute(f"SELECT path, analysed_at FROM {INGRESS_TABLE} WHERE message_key = {p}",
                    (identity.key,))
        row = cur.fetchone()
        conn.rollback()  # ends the read (PostgreSQL, MySQL); nothing was written
        if row is None:  # another constraint than the key: not a duplicate
            raise UnavailableError("the results store refused the record")
        recorded, analysed_at = row
        if analysed_at is not None or Path(str(recorded)).exists():
            return False
        cur = conn.cursor()
        cur.execute(f"UPDATE {INGRESS_TABLE} SET path = {p} WHERE message_key = {p} "
                    "AND analysed_at IS NULL", (str(path), identity.key))
        repointed: bool = cur.rowcount == 1
        self._commit(store, identity)
        if repointed:
            log.warning("ingress.repointed", message_key=identity.key)
        return repointed

    def _check_lag(self, cur: Any, p: str) -> None:
        cur.execute(f"SELECT MIN(enqueued_at) FROM {OUTBOX} WHERE queue = {p}",
                    (tasks.INGEST_QUEUE,))
        row = cur.fetchone()
        oldest = row[0] if row else None
        if oldest is not None and time.time() - float(oldest) > self.max_outbox_age_s:
            raise UnavailableError(
                f"analysis is behind: a job has waited over {self.max_outbox_age_s:g} s "
                "for the broker")

    def _forget(self) -> None:
        store: Store | None = getattr(self._local, "store", None)
        if store is not None:
            store.drop()
        self._local.prepared = None

    def close(self) -> None:
        """Close every connection the threads opened."""
        with self._lock:
            stores, self._stores = self._stores, []
        for store in stores:
            store.close()
