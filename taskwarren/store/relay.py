"""The relay: moves committed outbox rows to the broker, confirmed, then deletes them.

One pass: claim a batch (a short transaction that leases the rows), turn each row into
its envelope (a row that cannot be one is moved to ``taskwarren_outbox_rejected`` with
the reason), publish per queue with pipelined confirms, delete exactly the confirmed
rows, and hand the others back with a backoff. A relay that dies after a confirm and
before the delete leaves rows whose lease runs out: they are published again with the
same message id (a duplicate, never a loss).

Waking: PostgreSQL pushes (LISTEN/NOTIFY: the sending transaction's NOTIFY arrives
when it commits). Elsewhere the relay polls, fast while rows keep coming (from
:data:`FAST_POLL_S`, doubling while it finds none, up to ``poll_s``).
"""

from __future__ import annotations

import json
import math
import struct
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import structlog

from taskwarren.errors import (
    ConfigurationError,
    DecodeError,
    StoreError,
    StoreNotInitializedError,
)
from taskwarren.message import (
    MAX_ECHO_CHARS,
    MAX_HEADERS_BYTES,
    MAX_TASK_ID_BYTES,
    Envelope,
    check_envelope,
    clip,
    header_bytes,
)
from taskwarren.store.database import Row
from taskwarren.store.outbox import eta_of
from taskwarren.store.schema import Dialect
from taskwarren.topology import check_queue_name

log = structlog.get_logger("taskwarren.relay")

#: Rows claimed per pass.
BATCH = 500
#: The first, shortest wait after a pass that found nothing.
FAST_POLL_S = 0.002
#: Longest wait between polls when nothing pushes (MySQL/MariaDB, SQLite).
POLL_S = 0.5
#: Longest pause before rows whose publish failed are tried again.
MAX_RETRY_S = 30.0

Publish = Callable[[str, Sequence[Envelope], float], None]

#: What a client raises when it cannot encode a message (py-amqp: ``struct.error`` for a
#: number or a short string out of range, ``UnicodeEncodeError`` for text that is not
#: UTF-8): the message's fault, not the broker's.
ENCODING_ERRORS: tuple[type[Exception], ...] = (struct.error, UnicodeError, OverflowError,
                                                RecursionError)


class RowSource(Protocol):
    """Where a relay takes its rows: the outbox (:class:`~taskwarren.store.database.Store`)
    or an application's own jobs table (:mod:`taskwarren.store.legacy`)."""

    dialect: Dialect
    location: str

    def claim(self, limit: int, lease_s: float) -> list[Row]:
        """Take up to ``limit`` due rows for ``lease_s`` seconds, in one short transaction."""

    def delete(self, ids: Sequence[int]) -> None:
        """The broker confirmed these rows' messages: they are done."""

    def release(self, ids: Sequence[int], retry_at: float) -> None:
        """Let ``ids`` be claimed again from ``retry_at`` on."""

    def reject(self, row_id: int, reason: str) -> None:
        """Set aside a row that cannot become a message, with ``reason``."""

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a hint that rows were committed; whether one came."""

    def close(self) -> None:
        """Close the connection."""


def envelope_of(row: Row, max_bytes: int) -> Envelope:
    """The message an outbox row holds.

    Raises:
        DecodeError: headers that are not a JSON object of what AMQP can carry, a bad
            queue name or task id, or what :func:`~taskwarren.message.check_envelope`
            refuses.
    """
    try:
        headers = json.loads(row.headers)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"headers are not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(headers, dict):
        raise DecodeError(f"headers are a JSON {type(headers).__name__}, not an object")
    _check_table(headers, depth=0)
    if not 0 < len(row.task_id.encode("utf-8", "surrogateescape")) <= MAX_TASK_ID_BYTES:
        raise DecodeError(f"task_id is empty or longer than {MAX_TASK_ID_BYTES} bytes")
    try:
        check_queue_name(row.queue)
    except ConfigurationError as exc:
        raise DecodeError(str(exc)) from None
    if not math.isfinite(row.enqueued_at):
        raise DecodeError("enqueued_at is not a finite number")
    envelope = Envelope(row.task_id, row.body, headers, row.content_type,
                        max(0, min(int(row.enqueued_at), _INT64_MAX)))
    check_envelope(envelope, max_bytes)
    if header_bytes(headers) > MAX_HEADERS_BYTES:
        raise DecodeError(f"headers take more than {MAX_HEADERS_BYTES} bytes")
    return envelope


#: The largest integer an AMQP header (a signed 64-bit number) can hold.
_INT64_MAX = 2 ** 63 - 1
#: Deepest nesting of header tables and arrays a row may have.
_MAX_HEADER_DEPTH = 8


def _check_table(table: dict[str, Any], depth: int) -> None:
    """Refuse what an AMQP header table cannot carry (the client would fail mid-publish)."""
    for key, value in table.items():
        if len(_utf8(key)) > 255:
            raise DecodeError("a header name is longer than 255 bytes")
        _check_value(value, depth)


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise DecodeError("a header holds text that is not UTF-8") from None


def _check_value(value: Any, depth: int) -> None:
    if depth > _MAX_HEADER_DEPTH:
        raise DecodeError(f"headers nest deeper than {_MAX_HEADER_DEPTH} levels")
    if isinstance(value, str):
        _utf8(value)
    elif isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -_INT64_MAX - 1 <= value <= _INT64_MAX:
            raise DecodeError("a header holds an integer outside 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise DecodeError("a header holds a number that is not finite")
    elif isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
    elif isinstance(value, dict):
        _check_table(value, depth + 1)


class Relay:
    """Publishes what the outbox holds.

    Args:
        store: where the rows come from, on the relay's own connection.
        publish: declares the queue and publishes, confirmed (raises BrokerError if not).
        max_bytes: rows with a larger body are rejected.
        lease_s: how long a claim keeps other relays off the rows; longer than a batch
            can take to publish (a lease that runs out early duplicates, never loses).
        batch: rows per claim.
        poll_s: longest wait between polls.
    """

    def __init__(self, store: RowSource, publish: Publish, *, max_bytes: int, lease_s: float = 60.0,
                 batch: int = BATCH, poll_s: float = POLL_S) -> None:
        self.store = store
        self.publish = publish
        self.max_bytes = max_bytes
        self.lease_s = lease_s
        self.batch = batch
        self.poll_s = poll_s
        self.relayed = 0
        self.rejected = 0
        self._failures = 0

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set; store and broker outages are waited out."""
        wait_s = FAST_POLL_S
        outage = False
        while not stop.is_set():
            try:
                moved = self.relay_once()
            except StoreNotInitializedError:
                raise
            except StoreError as exc:
                if not outage:
                    log.error("relay.store_unavailable", error=clip(str(exc), MAX_ECHO_CHARS))
                outage = True
                stop.wait(min(self.poll_s * 4, 2.0))
                continue
            if outage:
                log.info("relay.store_available")
                outage = False
            if moved:
                wait_s = FAST_POLL_S
                continue
            if self.store.dialect == "postgresql":
                pushed = self.store.wait(min(self.poll_s, 0.5))
                wait_s = FAST_POLL_S if pushed else wait_s
            elif stop.wait(wait_s):
                break
            wait_s = min(wait_s * 2, self.poll_s)

    def relay_once(self) -> int:
        """One pass; returns how many rows it claimed (published, retried or rejected)."""
        claimed_at = time.monotonic()
        rows = self.store.claim(self.batch, self.lease_s)
        if not rows:
            return 0
        # One publish per queue and ETA; rows that share a task id go in separate
        # publishes (a batch is confirmed per message id, so a second copy of an id in
        # one batch would be counted as confirmed without being sent).
        groups: dict[tuple[str, str, int], list[tuple[Row, Envelope]]] = {}
        seen: dict[tuple[str, str, str], int] = {}
        for row in rows:
            try:
                envelope = envelope_of(row, self.max_bytes)
            except Exception as exc:  # anything a row's content provokes is that row's
                self._reject(row, str(exc) if isinstance(exc, DecodeError)
                             else f"{type(exc).__name__}: {exc}")
                continue
            eta = eta_of(envelope)
            copy = seen[(row.queue, eta, row.task_id)] = seen.get(
                (row.queue, eta, row.task_id), -1) + 1
            groups.setdefault((row.queue, eta, copy), []).append((row, envelope))
        failed: list[int] = []
        published = 0
        for (queue, eta, _), items in groups.items():
            if time.monotonic() - claimed_at > self.lease_s / 2:
                # Left to the next pass, under a new lease: at once, no backoff.
                self.store.release([row.id for row, _ in items], time.time())
                continue
            published += self._publish_group(queue, eta, items, failed)
        if failed:
            self._failures = min(self._failures + 1, 16)
            self.store.release(failed, time.time() + min(MAX_RETRY_S, 0.5 * 2 ** self._failures))
        elif published:
            self._failures = 0
        return len(rows)

    def _publish_group(self, queue: str, eta: str, items: list[tuple[Row, Envelope]],
                       failed: list[int]) -> int:
        """Publish one queue's rows of a pass; delete those confirmed; returns how many.

        Rows the broker did not take go to ``failed`` (tried again after a backoff). When
        the client cannot encode the batch (:data:`ENCODING_ERRORS`), the rows are tried
        one by one and a row that fails alone so is rejected with the reason. Anything
        else (a queue declared elsewhere with other arguments, say) is no row's fault:
        the rows wait and are tried again.
        """
        ids = [row.id for row, _ in items]
        try:
            self.publish(queue, [e for _, e in items], _remaining(eta))
        except ENCODING_ERRORS as exc:
            if len(items) == 1:
                self._reject(items[0][0], f"cannot be published: {type(exc).__name__}: {exc}")
                return 0
            done = 0
            for i, item in enumerate(items):
                before = len(failed)
                done += self._publish_group(queue, eta, [item], failed)
                if len(failed) > before:  # the broker failed now: the rest wait too
                    failed.extend(row.id for row, _ in items[i + 1:])
                    break
            return done
        except Exception as exc:  # the broker's, the link's, or a refused declare
            log.warning("relay.publish_failed", queue=queue, rows=len(ids),
                        error_type=type(exc).__name__, error=clip(str(exc), MAX_ECHO_CHARS))
            failed.extend(ids)
            return 0
        # Only now, with the broker holding them, do the rows go.
        self.store.delete(ids)
        self.relayed += len(ids)
        return len(ids)

    def _reject(self, row: Row, reason: str) -> None:
        reason = _printable(reason)  # it may quote a row's text, which may not be UTF-8
        self.store.reject(row.id, clip(reason))
        self.rejected += 1
        log.error("relay.row_rejected", row_id=row.id,
                  task_id=clip(_printable(row.task_id), MAX_ECHO_CHARS),
                  reason=clip(reason, MAX_ECHO_CHARS))


def _printable(text: str) -> str:
    """``text`` with anything that is not UTF-8 spelt as escapes (safe to store and log)."""
    return text.encode("utf-8", "backslashreplace").decode()


def _remaining(eta: str) -> float:
    """Seconds until ``eta`` (an ISO time), or 0 for none or a past or unreadable one."""
    if not eta:
        return 0.0
    try:
        when = datetime.fromisoformat(eta)
    except ValueError:
        return 0.0
    if when.tzinfo is None:
        return 0.0
    return max(0.0, when.timestamp() - time.time())
