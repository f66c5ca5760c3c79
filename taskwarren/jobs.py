"""``app.jobs``: query, cancel and retry jobs recorded in the job store.

Every job an app with a job store sends (``TASKWARREN_STORE_URL``; see
:attr:`~taskwarren.settings.Settings.jobs`) has a row in ``taskwarren_jobs``: born in
the sending transaction for ``db=`` sends and sends with a ``unique_key``, else from a
``queued`` event published right after the message. Workers record each start (checking
for a cancel) and publish what became of each job; the projector applies that.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from taskwarren.errors import ConfigurationError, StoreError, TaskwarrenError
from taskwarren.message import Envelope, encode
from taskwarren.middleware.base import BROADCASTS_QUEUE
from taskwarren.middleware.jobs import CANCEL_TASK, JobRecorder
from taskwarren.store.database import open_store
from taskwarren.store.drivers import lost_race
from taskwarren.store.job_table import JobTable
from taskwarren.store.jobs import (
    STATES,
    Cancelled,
    Job,
    JobEvent,
    encode_events,
    storable,
)
from taskwarren.store.thread_tables import ThreadTables

if TYPE_CHECKING:
    from taskwarren.app import Warren

__all__ = ["Cancelled", "Job", "Jobs", "since_seconds"]

log = structlog.get_logger("taskwarren.jobs")

#: An event message holds at most this many events, of about this many bytes: well
#: under every broker's message size limit (RabbitMQ 4's default is 16 MiB).
EVENTS_PER_MESSAGE = 1_000
EVENTS_MESSAGE_BYTES = 1024 * 1024
#: Arguments larger than this (JSON-escaped) are left out of a ``queued`` event.
MAX_ARGS_IN_EVENT_BYTES = 8 * 1024 * 1024
#: The longest a worker's statement on the store may wait (a lock, a slow query).
WORKER_STORE_WAIT_S = 5
#: The most rows one :meth:`Jobs.list` returns.
MAX_LIST = 10_000
#: Seconds per unit of a duration (``90s``, ``30m``, ``1h``, ``2d``).
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: How many times a unique send in the app's own transaction is tried when it loses a
#: race (a deadlock) with other senders.
UNIQUE_TRIES = 5


class Jobs:
    """The jobs of one app's store. Safe to share between threads (each has its own
    connection, opened on first use).

    Args:
        app: the app.
        wait_s: if given, the most a connection attempt, and a statement waiting on a
            lock (or running, on PostgreSQL), may take on these connections (see
            :meth:`~taskwarren.store.job_table.JobTable.limit_waits`).
    """

    def __init__(self, app: Warren, wait_s: int | None = None) -> None:
        self.app = app
        self.wait_s = wait_s
        self._tables = ThreadTables(self._open_table)
        self._recorder: JobRecorder | None = None

    @property
    def enabled(self) -> bool:
        """Whether this app records jobs."""
        return self.app.settings.records_jobs

    def table(self) -> JobTable:
        """This thread's connection to the jobs table.

        Raises:
            ConfigurationError: the app has no job store.
            StoreError: it cannot be reached.
        """
        return self._tables.get()

    def _open_table(self) -> JobTable:
        url = self.app.settings.effective_store_url
        if url is None:
            raise ConfigurationError("no job store: set TASKWARREN_STORE_URL")
        connect_s = self.app.settings.connect_timeout_s
        if self.wait_s is None:
            return JobTable(open_store(url, connect_s))
        table = JobTable(open_store(url, min(connect_s, self.wait_s)))
        try:
            return table.limit_waits(self.wait_s)
        except BaseException:
            table.store.close()
            raise

    def close(self) -> None:
        """Close every store connection this app's jobs opened (any thread's)."""
        self._tables.close()
        if self._recorder is not None:
            self._recorder.close()

    def get(self, task_id: str) -> Job | None:
        """The job ``task_id`` (its state, attempt, timings, error...), or ``None``."""
        return self.table().get(task_id)

    def list(self, *, state: str | None = None, task: str | None = None,
             queue: str | None = None, since: float | None = None,
             before: tuple[float, str] | None = None, limit: int = 100) -> list[Job]:
        """Jobs matching every filter given, newest first (by ``created_at``, then task id).

        Args:
            state: one of :data:`~taskwarren.store.jobs.STATES`.
            task: the task's registered name.
            queue: the queue it was sent to.
            since: sent at or after this time (seconds since the epoch).
            before: a keyset cursor, ``(created_at, id)`` of the last job of the previous
                page: only jobs after it in this order. Pages so read have no gaps and no
                duplicates, however many rows come and go meanwhile.
            limit: at most this many (1 to 10,000).

        Raises:
            ValueError: an unknown state or a limit out of range.
        """
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; the states are {', '.join(STATES)}")
        if not 1 <= limit <= MAX_LIST:
            raise ValueError(f"limit must be 1 to {MAX_LIST}")
        return self.table().list(state=state, task=task, queue=queue, since=since,
                                 before=before, limit=limit)

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        return self.table().counts()

    def cancel(self, task_id: str) -> bool:
        """Keep ``task_id`` from running; True if it will not run (see :meth:`cancel_job`)."""
        return self.cancel_job(task_id).done

    def cancel_job(self, task_id: str) -> Cancelled:
        """Cancel ``task_id`` and say what happened.

        A job still in the outbox is deleted from it; a queued, scheduled or retrying job
        is marked ``cancelled`` (workers check before they run it, so it holds even if
        none is up now); a running or finished one is left as it is (``done`` is False).
        """
        outcome = self.table().cancel(task_id)
        if outcome.state == "running":
            return self.tell_running(task_id, outcome)
        if outcome.done:
            self.tell_cancelled(task_id, outcome)
        return outcome

    def tell_cancelled(self, task_id: str, outcome: Cancelled) -> None:
        """Let live worker processes know ``task_id`` was marked cancelled, so they skip
        it even while the store cannot be reached. Best effort: the store's tombstone is
        the guarantee, and a failure here is only logged."""
        body = json.dumps({"task_id": task_id, "epoch": outcome.epoch}).encode()
        try:
            self.app.broadcast(encode(CANCEL_TASK, BROADCASTS_QUEUE, body))
        except TaskwarrenError as exc:
            log.info("jobs.cancel_broadcast_failed", error_type=type(exc).__name__)

    def tell_running(self, task_id: str, outcome: Cancelled) -> Cancelled:
        """Tell the worker running ``task_id`` that it was cancelled (a broadcast to every
        worker process; the task sees :func:`~taskwarren.cancel_requested`)."""
        body = json.dumps({"task_id": task_id}).encode()
        try:
            self.app.broadcast(encode(CANCEL_TASK, BROADCASTS_QUEUE, body))
        except TaskwarrenError as exc:
            return Cancelled(False, "running", f"{outcome.how}; its worker could not be told "
                             f"({type(exc).__name__})")
        return Cancelled(False, "running", f"{outcome.how}; its worker was told")

    def retry(self, task_id: str) -> Job:
        """Run a ``dead`` or ``cancelled`` job again: same id, attempt 0, a new run epoch.

        Its stored call goes through the outbox in the same transaction as the row's
        change, so the relay publishes it once that commits.

        Raises:
            LookupError: no such job, or it is not dead or cancelled, or its arguments
                are not in the store.
            StoreError: the store failed (or a live job holds its unique key).
        """
        return self.table().retry(task_id)

    # -- sending ---------------------------------------------------------------------------

    def recorder(self) -> JobRecorder:
        """The worker middleware that records starts (checking for cancels) and outcomes."""
        settings = self.app.settings

        def table() -> JobTable:
            url = settings.effective_store_url
            assert url is not None
            # A task waits on this connect: a store that does not answer costs it
            # seconds, not the full connect timeout (it then runs unchecked for a while).
            return JobTable(open_store(url, min(settings.connect_timeout_s, 3.0))).limit_waits(
                WORKER_STORE_WAIT_S)

        self._recorder = JobRecorder(table, settings.jobs_events_queue, self.app.tasks)
        return self._recorder

    def sent(self, envelopes: Sequence[Envelope], delay_s: float) -> None:
        """Record messages just confirmed: their ``queued`` (or ``scheduled``) events.

        The messages are out: a failure here is logged, not raised (sending them again
        would run them twice). Their rows are then made when a worker starts them.
        """
        try:
            self.record_sent(envelopes, delay_s)
        except Exception as exc:
            log.warning("jobs.queued_event_failed", jobs=len(envelopes),
                        error_type=type(exc).__name__)

    def record_sent(self, envelopes: Sequence[Envelope], delay_s: float) -> None:
        """Publish the ``queued`` (or ``scheduled``) events of messages just confirmed."""
        now = time.time()
        state = "scheduled" if delay_s > 0 else "queued"
        scheduled = now + delay_s if delay_s > 0 else None
        queue = self.app.settings.jobs_events_queue
        messages, events, size = [], [], 0
        for e in envelopes:
            args: str | None = storable(e.body.decode("utf-8", "replace"))
            encoded = len(json.dumps(args, ensure_ascii=False).encode())  # escapes included
            if encoded > MAX_ARGS_IN_EVENT_BYTES:
                args, encoded = None, 0  # the row then shows none (and cannot be retried)
            events.append(JobEvent(e.message_id, state, now, task=e.task, queue=e.queue,
                                   created_at=now, scheduled_at=scheduled, args=args))
            size += encoded + 300
            if size >= EVENTS_MESSAGE_BYTES or len(events) >= EVENTS_PER_MESSAGE:
                messages.append(encode_events(events, queue))
                events, size = [], 0
        if events:
            messages.append(encode_events(events, queue))
        self.app.declare([queue])
        self.app.broker.publish(queue, messages)

    def send_unique(self, envelope: Envelope, delay_s: float, unique_key: str,
                    db: object | None) -> str:
        """Enqueue ``envelope`` unless a live job holds ``unique_key``; the holder's id.

        Through ``db``'s open transaction if given, else in a transaction of the app's
        own store connection, committed here; that one is run again (up to
        :data:`UNIQUE_TRIES` times) when the database rolled it back for losing a race
        with another sender (a deadlock). A ``db`` transaction that lost is the caller's
        to run again: the :class:`~taskwarren.errors.StoreError` says so.
        """
        from taskwarren.store import outbox

        if db is not None:
            holder = outbox.write(db, [envelope], delay_s, record=True, unique_key=unique_key)
            assert holder is not None
            return holder
        for tried in range(1, UNIQUE_TRIES + 1):
            try:
                return self._send_unique_own(envelope, delay_s, unique_key)
            except StoreError as exc:
                if tried == UNIQUE_TRIES or not lost_race(exc):
                    raise
                log.info("jobs.unique_send_retried", tried=tried)
                time.sleep(random.uniform(0.0, 0.02 * tried))
        raise AssertionError("unreachable")

    def _send_unique_own(self, envelope: Envelope, delay_s: float, unique_key: str) -> str:
        from taskwarren.store import outbox

        table = self.table()
        conn = table.store.connection()
        raw = getattr(conn, "raw", conn)  # SQLite's own connection, to BEGIN on
        try:
            if table.dialect == "sqlite":
                raw.execute("BEGIN IMMEDIATE")
            holder = outbox.write(raw, [envelope], delay_s, record=True,
                                  unique_key=unique_key)
            conn.commit()
        except (StoreError, TypeError):
            self._tables.forget()
            raise
        except Exception as exc:
            self._tables.forget()
            raise StoreError(f"job store ({table.store.location}): {type(exc).__name__}: "
                             f"{table.store.scrub(str(exc))}") from exc
        assert holder is not None
        return holder


def since_seconds(text: str) -> float:
    """The seconds in a duration back from now: ``90s``, ``30m``, ``1h``, ``2d``.

    Raises:
        ValueError: not a positive whole number and a unit (the message says so).
    """
    match = re.fullmatch(r"\s*(\d{1,9})\s*([smhd])\s*", text)
    if match is None or int(match.group(1)) == 0:
        shown = text[:40].encode("unicode_escape").decode("ascii")
        raise ValueError(f"{shown!r}: give a positive whole number and a unit s, m, h or d "
                         "(90s, 30m, 1h, 2d)")
    return float(int(match.group(1)) * _UNITS[match.group(2)])
