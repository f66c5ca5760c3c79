"""Relaying an application's own jobs table: its pending rows become taskwarren tasks.

A :class:`LegacyTable` names the table and its columns; the outbox's own
:class:`~taskwarren.store.relay.Relay`, over a :class:`LegacySource`, publishes each
pending row confirmed, then sets its status to ``done``. Pollers can go first, and each
``INSERT INTO jobs`` can become ``.options(db=conn).send()`` later.

Their table has no lease column, so:

1. One short transaction locks due pending rows ``FOR UPDATE SKIP LOCKED`` (SQLite:
   ``BEGIN IMMEDIATE``), sets them ``relaying``, records a lease for each in
   :data:`LEASES` and commits, before anything is published. A second relay skips the
   locked rows, or reads them as ``relaying`` once the first has committed.
2. The messages are published with confirms, message id ``"{source}:{id}"``.
3. One transaction sets the confirmed rows ``done`` and drops their leases.

A relay that dies between 1 and 3 leaves rows ``relaying`` under a lease that runs out;
the next claim takes them back (locking their lease rows, so only one relay does) and
publishes them again under the same message id: a duplicate, never a loss. A row that
cannot become a task call, whatever it raises (bad JSON, JSON nested too deep to read,
text that is not UTF-8), is set ``failed`` with the reason in the claim's transaction,
and the rows after it go on. Any error of the database's drops the connection: the next
pass opens a new one (after a server restart, a failover or a killed session).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import structlog

from taskwarren.errors import (
    ConfigurationError,
    DecodeError,
    StoreError,
    TaskwarrenError,
    UnknownTaskError,
)
from taskwarren.message import MAX_ECHO_CHARS, clip, encode
from taskwarren.store import Store
from taskwarren.store.database import Row
from taskwarren.store.legacy_table import LEASES, LegacyTable, lease_ddl
from taskwarren.topology import check_queue_name

__all__ = ["LEASES", "LegacySource", "LegacyTable", "Resolve", "lease_ddl"]

log = structlog.get_logger("taskwarren.relay")

#: (task name, JSON body) -> the task's queue; a TaskwarrenError raised is the row's reason.
Resolve = Callable[[str, bytes], str]


class LegacySource:
    """The rows of a :class:`LegacyTable`, as a relay claims and settles them.

    Args:
        store: the relay's own connection to the database that holds the table.
        table: the table and its columns.
        resolve: checks a task call and gives its queue (see :data:`Resolve`); without
            it, every name is taken and the table's ``queue``/``queue_column`` is used.
    """

    def __init__(self, store: Store, table: LegacyTable, resolve: Resolve | None = None) -> None:
        if resolve is None and table.queue is None and table.queue_column is None:
            raise ConfigurationError(f"the table {table.table}: without registered tasks to "
                                     "ask, give queue or queue_column")
        self.store = store
        self.table = table
        self.resolve = resolve
        self.dialect = store.dialect
        self.location = f"{store.location} table {table.table}"
        self.failed = 0
        self._p = store.placeholder
        q = self._quote
        self._t = ".".join(q(part) for part in table.table.split("."))
        # PostgreSQL's JSON columns come as text: a driver that parsed them as it fetched
        # would fail the whole claim on one row nested too deep.
        args = q(table.args) + ("::text" if self.dialect == "postgresql" else "")
        queue = [q(table.queue_column)] if table.queue_column is not None else []
        self._cols = ", ".join([q(table.id), q(table.task), args, *queue])
        self._id = q(table.id)
        self._status = q(table.status)
        self._lock = "" if self.dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"

    def _quote(self, name: str) -> str:
        # SQLite reads a "double-quoted" name that is no column as a string: backticks.
        return f'"{name}"' if self.dialect == "postgresql" else f"`{name}`"

    def _marks(self, n: int) -> str:
        return ", ".join([self._p] * n)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction on the relay's connection; a driver's error becomes StoreError.

        On any error the connection is dropped (the session may be dead) and the next
        transaction opens a new one, as :class:`~taskwarren.store.database.Store` does.
        """
        conn = self.store.connection()
        cur = None
        try:
            cur = conn.cursor()
            if self.dialect == "sqlite":
                conn.raw.text_factory = _text_or_bytes
                cur.execute("BEGIN IMMEDIATE")
            yield cur
            conn.commit()
        except Exception as exc:
            self.store.drop()
            if isinstance(exc, TaskwarrenError):
                raise
            raise StoreError(f"{self.location}: {type(exc).__name__}: "
                             f"{self.store.scrub(str(exc))}") from exc
        finally:
            if cur is not None:
                with contextlib.suppress(Exception):
                    cur.close()

    def prepare(self) -> None:
        """Create :data:`LEASES` if it is missing; check the table's configured columns.

        Raises:
            ConfigurationError: the table or a configured column does not exist.
        """
        with self._tx() as cur:
            cur.execute(lease_ddl(self.dialect))
        t = self.table
        named = [t.status] + [c for c in (t.error, t.run_at) if c]
        try:
            with self._tx() as cur:
                cur.execute(f"SELECT {self._cols}, {', '.join(map(self._quote, named))} "
                            f"FROM {self._t} WHERE 1 = 0")
                cur.fetchall()
        except StoreError as exc:
            raise ConfigurationError(f"cannot read the jobs table as configured: {exc}") from None

    def claim(self, limit: int, lease_s: float) -> list[Row]:
        """Take up to ``limit`` rows for ``lease_s`` seconds, in one short transaction.

        First the rows whose relay died (their lease ran out), then due pending rows,
        oldest id first. Rows that cannot become a task call are set to ``failed`` here.
        """
        now = time.time()
        until = now + lease_s
        p, t = self._p, self.table
        with self._tx() as cur:
            # Locking the lease rows (not reading them) is what keeps two relays from
            # both taking back the same expired row.
            cur.execute(f"SELECT row_id FROM {LEASES} WHERE source = {p} AND claimed_until < "
                        f"{p} ORDER BY source, row_id LIMIT {p}{self._lock}",
                        (t.source, now, limit))
            expired, found = [int(r[0]) for r in cur.fetchall()], []
            if expired:
                cur.execute(f"SELECT {self._cols} FROM {self._t} WHERE {self._id} IN "
                            f"({self._marks(len(expired))}) AND {self._status} = {p}",
                            (*expired, t.relaying))
                found = list(cur.fetchall())
                # The application moved these rows on meanwhile: they are not ours.
                gone = set(expired) - {int(r[0]) for r in found}
                self._drop_leases(cur, sorted(gone))
                self._lease(cur, [int(r[0]) for r in found], until, renew=True)
            fresh: list[Sequence[Any]] = []
            if len(found) < limit:
                cur.execute(f"SELECT {self._cols} FROM {self._t} WHERE {self._status} = {p}"
                            f"{self._due()} ORDER BY {self._id} LIMIT {p}{self._lock}",
                            (t.pending, limit - len(found)))
                fresh = list(cur.fetchall())
                ids = [int(r[0]) for r in fresh]
                if ids:
                    cur.execute(f"UPDATE {self._t} SET {self._status} = {p} WHERE {self._id} "
                                f"IN ({self._marks(len(ids))})", (t.relaying, *ids))
                    self._drop_leases(cur, ids)  # left over if the app reset a row
                    self._lease(cur, ids, until, renew=False)
            rows: list[Row] = []
            for raw in [*found, *fresh]:
                try:
                    rows.append(self._row(raw, now))
                except TaskwarrenError as exc:
                    self._fail(cur, int(raw[0]), str(exc))
                except Exception as exc:
                    # Raised by the row's content all the same (a task's own check, say):
                    # failing the claim would fail it on every pass, and the rows after it.
                    self._fail(cur, int(raw[0]), f"cannot become a task call: "
                                                 f"{type(exc).__name__}: {exc}")
        return rows

    def _due(self) -> str:
        """The claim's condition on ``run_at``: NULL, or reached by the database's clock."""
        if self.table.run_at is None:
            return ""
        run_at = self._quote(self.table.run_at)
        # SQLite has no date type: text compares as text, and '2026-12-07T00:24' (as
        # isoformat() writes it) sorts after '2026-12-07 09:00'. datetime() reads both.
        # A number there is seconds since the epoch (datetime() of a bare number is NULL).
        sqlite_time = (f"CASE WHEN typeof({run_at}) IN ('integer', 'real') OR "
                       f"{run_at} NOT GLOB '*[^0-9.]*' THEN datetime({run_at}, 'unixepoch') "
                       f"ELSE datetime({run_at}) END")
        reached = (f"{sqlite_time} <= datetime('now')" if self.dialect == "sqlite"
                   else f"{run_at} <= CURRENT_TIMESTAMP")
        return f" AND ({run_at} IS NULL OR {reached})"

    def _row(self, raw: Sequence[Any], now: float) -> Row:
        """The outbox-shaped row of a legacy row, or why it cannot be a task call."""
        t = self.table
        row_id, kind, args = int(raw[0]), raw[1], raw[2]
        if kind in (None, ""):
            raise DecodeError(f"{t.task} is empty")
        if isinstance(kind, bytes | bytearray | memoryview):
            raise DecodeError(f"{t.task} is not UTF-8 text")
        name = str(kind)
        if t.task_names is not None:
            if name not in t.task_names:
                raise UnknownTaskError(f"{t.task} {clip(name, MAX_ECHO_CHARS)!r} is not in "
                                       "the table's task_names")
            name = t.task_names[name]
        body = _json_object(args, t.args)
        queue = self.resolve(name, body) if self.resolve is not None else ""
        if t.queue_column is not None:
            queue = "" if raw[3] is None else str(raw[3])
        queue = t.queue or queue
        check_queue_name(queue)
        envelope = encode(name, queue, body, task_id=f"{t.source}:{row_id}")
        headers = json.dumps(envelope.headers, separators=(",", ":"))
        return Row(row_id, envelope.message_id, queue, name, headers, body,
                   envelope.content_type, now)

    def _lease(self, cur: Any, ids: Sequence[int], until: float, *, renew: bool) -> None:
        p, source = self._p, self.table.source
        if renew and ids:
            cur.execute(f"UPDATE {LEASES} SET claimed_until = {p}, attempts = attempts + 1 "
                        f"WHERE source = {p} AND row_id IN ({self._marks(len(ids))})",
                        (until, source, *ids))
        elif ids:
            cur.executemany(f"INSERT INTO {LEASES} (source, row_id, claimed_until, attempts) "
                            f"VALUES ({p}, {p}, {p}, 1)", [(source, i, until) for i in ids])

    def _drop_leases(self, cur: Any, ids: Sequence[int]) -> None:
        if ids:
            cur.execute(f"DELETE FROM {LEASES} WHERE source = {self._p} AND row_id IN "
                        f"({self._marks(len(ids))})", (self.table.source, *ids))

    def _fail(self, cur: Any, row_id: int, reason: str) -> None:
        t, p = self.table, self._p
        if len(reason) > t.error_max_chars:  # the width of their column
            reason = reason[:t.error_max_chars - 3] + "..."
        sets, params = f"{self._status} = {p}", [t.failed]
        if t.error is not None:
            sets += f", {self._quote(t.error)} = {p}"
            params.append(reason)
        cur.execute(f"UPDATE {self._t} SET {sets} WHERE {self._id} = {p} AND {self._status} "
                    f"= {p}", (*params, row_id, t.relaying))
        self._drop_leases(cur, [row_id])
        self.failed += 1
        log.error("relay.legacy_row_failed", table=t.table, row_id=row_id,
                  reason=clip(reason, MAX_ECHO_CHARS))

    def delete(self, ids: Sequence[int]) -> None:
        """The broker confirmed these rows' messages: set them to ``done``."""
        if ids:
            with self._tx() as cur:
                cur.execute(f"UPDATE {self._t} SET {self._status} = {self._p} WHERE {self._id} "
                            f"IN ({self._marks(len(ids))}) AND {self._status} = {self._p}",
                            (self.table.done, *ids, self.table.relaying))
                self._drop_leases(cur, ids)

    def release(self, ids: Sequence[int], retry_at: float) -> None:
        """Their publish failed: claim them again from ``retry_at`` on (still ``relaying``)."""
        if ids:
            with self._tx() as cur:
                cur.execute(f"UPDATE {LEASES} SET claimed_until = {self._p} WHERE source = "
                            f"{self._p} AND row_id IN ({self._marks(len(ids))})",
                            (retry_at, self.table.source, *ids))

    def reject(self, row_id: int, reason: str) -> None:
        """Set a row the relay cannot publish (too big, say) to ``failed``, with ``reason``."""
        with self._tx() as cur:
            self._fail(cur, row_id, reason)

    def wait(self, timeout_s: float) -> bool:
        """Sleep ``timeout_s``: nothing tells the relay of the application's INSERTs."""
        time.sleep(timeout_s)
        return False

    def close(self) -> None:
        """Close the connection."""
        self.store.close()


def _json_object(value: object, column: str) -> bytes:
    """``value`` (text, bytes, or what a driver parsed from JSON) as a JSON object's bytes."""
    if value is None:
        raise DecodeError(f"{column} is NULL (store {{}} for a task without arguments)")
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            value = bytes(value).decode()
        except UnicodeDecodeError:
            raise DecodeError(f"{column} is not UTF-8 text") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise DecodeError(f"{column} is not JSON: {exc}") from None
        except RecursionError as exc:  # nested deeper than Python's recursion limit
            raise DecodeError(f"{column} is not JSON: RecursionError: {exc}") from None
    if not isinstance(value, dict):
        raise DecodeError(f"{column} is a JSON {type(value).__name__}, not an object "
                          "of keyword arguments")
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"{column}: {type(exc).__name__}: {exc}") from None


def _text_or_bytes(data: bytes) -> str | bytes:
    """SQLite's text as str, or as bytes if it is not UTF-8: that row fails, not the claim."""
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data
