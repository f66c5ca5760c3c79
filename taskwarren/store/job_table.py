"""The jobs table's reads and writes, on a :class:`~taskwarren.store.database.Store`'s
connection: applying events, a worker's start, cancel, retry, queries and pruning.

Every write is one short transaction. Rows are written in task-id order so that two
projectors (or a projector and a worker) lock them in the same order. A write moves a
row only to a higher version (:func:`~taskwarren.store.jobs.version`), so late or
repeated events change nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from taskwarren.message import encode
from taskwarren.store.database import Store
from taskwarren.store.jobs import (
    CANCELLABLE_STATES,
    H_EPOCH,
    TERMINAL_STATES,
    Cancelled,
    Job,
    JobEvent,
    Start,
    cancel_version,
    epoch_of,
    merge,
    version,
)
from taskwarren.store.outbox import NOTIFY_CHANNEL, outbox_row
from taskwarren.store.schema import JOBS, OUTBOX, insert_sql

#: Columns an event's row image fills, in order.
_EVENT_COLUMNS = ("task_id", "task", "queue", "state", "attempt", "version", "args", "error",
                  "traceback", "worker", "created_at", "scheduled_at", "started_at",
                  "finished_at", "duration_s", "updated_at")
#: Columns that follow the highest version (``updated_at``, the event's time, breaks
#: ties: it is set last but one, see :meth:`JobTable.upsert_sql`).
_STATE_COLUMNS = ("state", "attempt", "error", "traceback", "worker", "scheduled_at",
                  "finished_at", "duration_s")
#: Columns read back into a :class:`Job`.
_JOB_COLUMNS = ("task_id, task, queue, state, attempt, created_at, scheduled_at, started_at, "
                "finished_at, duration_s, worker, error, traceback, args, unique_key, "
                "updated_at")


class JobTable:
    """``taskwarren_jobs`` through one :class:`Store` connection (one thread uses it)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.p = store.placeholder
        self.dialect = store.dialect

    def limit_waits(self, seconds: int) -> JobTable:
        """Make a statement of this connection give up after ``seconds`` waiting on a lock
        or running (PostgreSQL), or waiting on a row lock (MySQL/MariaDB; SQLite waits
        its connect timeout): a worker's I/O thread must not hang on the store."""
        if self.dialect == "postgresql":
            ms = int(seconds * 1000)
            self.store.session_sql = (f"SET statement_timeout = {ms}",
                                      f"SET lock_timeout = {ms}")
        elif self.dialect == "mysql":
            self.store.session_sql = (f"SET SESSION innodb_lock_wait_timeout = {int(seconds)}",)
        with self.store.cursor() as cur:
            for statement in self.store.session_sql:
                cur.execute(statement)
            self.store.conn.commit()
        return self

    def _begin(self, cur: Any) -> None:
        if self.dialect == "sqlite":  # take the write lock now, not halfway through
            cur.execute("BEGIN IMMEDIATE")

    def upsert_sql(self) -> str:
        """The statement applying one row image (see :func:`merge`)."""
        p = self.p
        cols = ", ".join(_EVENT_COLUMNS)
        marks = ", ".join([p] * len(_EVENT_COLUMNS))
        insert = f"INSERT INTO {JOBS} ({cols}) VALUES ({marks})"
        # A higher version wins; of two equal ones (a redelivered attempt that ended
        # otherwise the second time), the later event, as merge() decides.
        if self.dialect == "mysql":
            # Assignments run left to right and see the values set before them: version
            # and updated_at are compared by all of them, so they are set last.
            newer = ("(VALUES(version) > version OR (VALUES(version) = version AND "
                     "VALUES(updated_at) > updated_at))")
            sets = ["created_at = IF(args IS NULL AND VALUES(args) IS NOT NULL, "
                    "VALUES(created_at), created_at)",
                    "args = COALESCE(args, VALUES(args))"]
            sets += [f"{c} = IF({newer}, VALUES({c}), {c})" for c in _STATE_COLUMNS]
            sets += [f"started_at = IF({newer}, COALESCE(VALUES(started_at), started_at), "
                     "started_at)",
                     f"updated_at = IF({newer}, VALUES(updated_at), updated_at)",
                     "version = GREATEST(version, VALUES(version))"]
            return f"{insert} ON DUPLICATE KEY UPDATE {', '.join(sets)}"
        j = JOBS
        newer = (f"(excluded.version > {j}.version OR (excluded.version = {j}.version AND "
                 f"excluded.updated_at > {j}.updated_at))")
        sets = [f"created_at = CASE WHEN {j}.args IS NULL AND excluded.args IS NOT NULL "
                f"THEN excluded.created_at ELSE {j}.created_at END",
                f"args = COALESCE({j}.args, excluded.args)"]
        sets += [f"{c} = CASE WHEN {newer} THEN excluded.{c} ELSE {j}.{c} END"
                 for c in (*_STATE_COLUMNS, "updated_at")]
        sets += [f"started_at = CASE WHEN {newer} THEN COALESCE(excluded.started_at, "
                 f"{j}.started_at) ELSE {j}.started_at END",
                 f"version = CASE WHEN excluded.version > {j}.version THEN excluded.version "
                 f"ELSE {j}.version END"]
        return f"{insert} ON CONFLICT (task_id) DO UPDATE SET {', '.join(sets)}"

    def apply(self, events: Sequence[JobEvent]) -> int:
        """Apply ``events`` in one transaction; returns the number of jobs they touched."""
        rows = merge(events)
        if not rows:
            return 0
        with self.store.cursor() as cur:
            self._begin(cur)
            cur.executemany(self.upsert_sql(), rows)
            self.store.conn.commit()
        return len(rows)

    def start(self, task_id: str, task: str, queue: str, epoch: int, attempt: int,
              worker: str, created_at: float) -> str:
        """Record that a worker starts running a job, unless it was cancelled.

        One statement decides, so a cancel either lands before it (the job is not run)
        or finds the job running (the cancel says it came too late).

        Returns:
            ``"run"``; ``"cancelled"`` (do not run it); or ``"superseded"``: a user's
            retry started a newer run of the job, and this message is of an older one.
        """
        return self.start_many([Start(task_id, task, queue, epoch, attempt, created_at)],
                               worker)[0]

    def start_many(self, starts: Sequence[Start], worker: str) -> list[str]:
        """:meth:`start` for each of ``starts``, in one transaction (one commit); the
        verdicts in the same order."""
        now = time.time()
        verdicts: dict[int, str] = {}
        with self.store.cursor() as cur:
            self._begin(cur)
            # In task-id order: two workers' batches lock shared rows in the same order.
            for i in sorted(range(len(starts)), key=lambda i: starts[i].task_id):
                verdicts[i] = self._start_one(cur, starts[i], worker, now)
            self.store.conn.commit()
        return [verdicts[i] for i in range(len(starts))]

    def _start_one(self, cur: Any, s: Start, worker: str, now: float) -> str:
        v = version(s.epoch, s.attempt, "running")
        p = self.p
        for _ in range(2):
            cur.execute(f"UPDATE {JOBS} SET state = 'running', attempt = {p}, "
                        f"version = {p}, started_at = {p}, worker = {p}, "
                        f"finished_at = NULL, updated_at = {p} "
                        f"WHERE task_id = {p} AND version < {p} AND state <> 'cancelled'",
                        (s.attempt, v, now, worker, now, s.task_id, v))
            if cur.rowcount == 1:
                return "run"
            cur.execute(f"SELECT state, version FROM {JOBS} WHERE task_id = {p}", (s.task_id,))
            found = cur.fetchone()
            if found is not None:
                state, row_version = str(found[0]), int(found[1])
                if state == "cancelled" and epoch_of(row_version) >= s.epoch:
                    return "cancelled"
                return "superseded" if epoch_of(row_version) > s.epoch else "run"
            cur.execute(f"INSERT INTO {JOBS} (task_id, task, queue, state, attempt, "
                        f"version, worker, created_at, started_at, updated_at) VALUES "
                        f"({p}, {p}, {p}, 'running', {p}, {p}, {p}, {p}, {p}, {p}) "
                        f"{self._on_conflict_nothing()}",
                        (s.task_id, s.task, s.queue, s.attempt, v, worker, s.created_at, now,
                         now))
            if cur.rowcount == 1:
                return "run"
            # Inserted meanwhile by another transaction (now committed): decide again.
        return "run"  # inserted by someone else twice in a row: cannot be cancelled yet

    def _on_conflict_nothing(self) -> str:
        if self.dialect == "mysql":
            return "ON DUPLICATE KEY UPDATE task_id = task_id"
        return "ON CONFLICT DO NOTHING"

    def check(self) -> None:
        """Fail now if the table is missing (:class:`StoreNotInitializedError`)."""
        with self.store.cursor() as cur:
            cur.execute(f"SELECT task_id FROM {JOBS} WHERE 1 = 0")
            cur.fetchall()
            self.store.conn.commit()

    def get(self, task_id: str) -> Job | None:
        """The job ``task_id``, or ``None`` if the store has no row for it."""
        with self.store.cursor() as cur:
            cur.execute(f"SELECT {_JOB_COLUMNS} FROM {JOBS} WHERE task_id = {self.p}",
                        (task_id,))
            row = cur.fetchone()
            self.store.conn.commit()
        return _job(row) if row is not None else None

    def list(self, *, state: str | None = None, task: str | None = None,
             queue: str | None = None, since: float | None = None,
             before: tuple[float, str] | None = None, limit: int = 100) -> list[Job]:
        """Jobs matching every filter given, newest first (``created_at``, then task id,
        both descending), at most ``limit``; with ``before`` (a job's ``created_at`` and
        id), only those after it in that order (keyset pagination: an index range, never
        an offset)."""
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("state", state), ("task", task), ("queue", queue)):
            if value is not None:
                where.append(f"{column} = {self.p}")
                params.append(value)
        if since is not None:
            where.append(f"created_at >= {self.p}")
            params.append(since)
        if before is not None:
            # Spelt so every database sees a range on created_at (a row comparison is
            # not one on MariaDB), the task id deciding only among equal times.
            where.append(f"created_at <= {self.p} AND (created_at < {self.p} OR "
                         f"task_id < {self.p})")
            params.extend((float(before[0]), float(before[0]), str(before[1])))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self.store.cursor() as cur:
            cur.execute(f"SELECT {_JOB_COLUMNS} FROM {JOBS}{clause} ORDER BY created_at DESC, "
                        f"task_id DESC LIMIT {self.p}", (*params, int(limit)))
            rows = cur.fetchall()
            self.store.conn.commit()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs per state."""
        with self.store.cursor() as cur:
            cur.execute(f"SELECT state, COUNT(*) FROM {JOBS} GROUP BY state")
            rows = cur.fetchall()
            self.store.conn.commit()
        return {str(s): int(n) for s, n in rows}

    def cancel(self, task_id: str) -> Cancelled:
        """Keep a job from running: delete it from the outbox, or mark it cancelled.

        Marking is a durable tombstone: workers check it before they run a job, so it
        holds even when no worker is up. A running or finished job is left as it is.
        """
        p = self.p
        now = time.time()
        with self.store.cursor() as cur:
            self._begin(cur)
            cur.execute(f"SELECT state, version FROM {JOBS} WHERE task_id = {p}"
                        f"{self._lock()}", (task_id,))
            found = cur.fetchone()
            if found is None:
                # Not recorded (sent with jobs off): if its outbox row is there, it goes,
                # and a tombstone row stops a copy the relay may be publishing right now.
                cur.execute(f"SELECT task, queue FROM {OUTBOX} WHERE task_id = {p}",
                            (task_id,))
                unsent = cur.fetchone()
                if unsent is not None:
                    cur.execute(f"DELETE FROM {OUTBOX} WHERE task_id = {p}", (task_id,))
                    cur.execute(f"INSERT INTO {JOBS} (task_id, task, queue, state, attempt, "
                                "version, created_at, finished_at, updated_at) VALUES "
                                f"({p}, {p}, {p}, 'cancelled', 0, {p}, {p}, {p}, {p})",
                                (task_id, unsent[0], unsent[1], cancel_version(0), now, now,
                                 now))
                self.store.conn.commit()
                if unsent is not None:
                    return Cancelled(True, "cancelled", "removed from the outbox before it "
                                     "was sent")
                return Cancelled(False, "", f"no job {task_id!r} in the store")
            state, row_version = str(found[0]), int(found[1])
            if state in CANCELLABLE_STATES:
                # Its outbox row (if the relay has not sent it yet) goes too; a copy being
                # published meanwhile finds the tombstone when a worker gets it.
                cur.execute(f"DELETE FROM {OUTBOX} WHERE task_id = {p}", (task_id,))
                unsent_now = cur.rowcount > 0
                cur.execute(f"UPDATE {JOBS} SET state = 'cancelled', version = {p}, "
                            f"finished_at = {p}, updated_at = {p} WHERE task_id = {p}",
                            (cancel_version(epoch_of(row_version)), now, now, task_id))
                self.store.conn.commit()
                how = "removed from the outbox before it was sent" if unsent_now else \
                    f"cancelled while {state}: it will not run"
                return Cancelled(True, "cancelled", how, epoch_of(row_version))
            self.store.conn.commit()
        if state == "cancelled":  # cancelled before: it still will not run
            return Cancelled(True, state, "already cancelled: it will not run",
                             epoch_of(row_version))
        if state == "running":
            return Cancelled(False, state, "too late: it is running (it may finish)")
        return Cancelled(False, state, f"too late: it has already {state}" if state != "dead"
                         else "too late: it is dead (retry it instead)")

    def retry(self, task_id: str) -> Job:
        """Queue a dead or cancelled job again (see :meth:`taskwarren.jobs.Jobs.retry`).

        Raises:
            LookupError: no such job, it is not dead or cancelled, or its arguments are
                not in the store.
        """
        p = self.p
        now = time.time()
        problem = ""
        with self.store.cursor() as cur:
            self._begin(cur)
            cur.execute(f"SELECT task, queue, state, version, args FROM {JOBS} "
                        f"WHERE task_id = {p}{self._lock()}", (task_id,))
            found = cur.fetchone()
            if found is None:
                problem = f"no job {task_id!r} in the store"
            elif found[2] not in ("dead", "cancelled"):
                problem = f"job {task_id!r} is {found[2]}: only a dead or cancelled job runs again"
            elif found[4] is None:
                problem = f"job {task_id!r}: its arguments are not in the store"
            else:
                task, queue, _, row_version, args = found
                epoch = epoch_of(int(row_version)) + 1
                envelope = encode(str(task), str(queue), str(args).encode("utf-8", "replace"),
                                  task_id=task_id).with_headers({H_EPOCH: epoch})
                cur.execute(f"UPDATE {JOBS} SET state = 'queued', attempt = 0, version = {p}, "
                            "error = NULL, traceback = NULL, worker = NULL, started_at = NULL, "
                            "finished_at = NULL, scheduled_at = NULL, duration_s = NULL, "
                            f"updated_at = {p} WHERE task_id = {p}",
                            (version(epoch, 0, "queued"), now, task_id))
                cur.execute(insert_sql(p), outbox_row(envelope, 0.0, now))
                if self.dialect == "postgresql":
                    cur.execute(f"SELECT pg_notify({p}, '')", (NOTIFY_CHANNEL,))
            self.store.conn.commit()
        if problem:
            raise LookupError(problem)
        job = self.get(task_id)
        assert job is not None
        return job

    def _lock(self) -> str:
        return "" if self.dialect == "sqlite" else " FOR UPDATE"

    def prune(self, older_than_s: float, batch: int = 500) -> int:
        """Delete up to ``batch`` finished jobs older than ``older_than_s``; how many went."""
        p = self.p
        cutoff = time.time() - older_than_s
        states = ", ".join(f"'{s}'" for s in TERMINAL_STATES)
        pick = (f"SELECT task_id FROM {JOBS} WHERE finished_at < {p} AND state IN ({states}) "
                f"ORDER BY finished_at LIMIT {p}")
        with self.store.cursor() as cur:
            self._begin(cur)
            if self.dialect == "mysql":  # MySQL cannot delete from a table it selects from
                cur.execute(f"DELETE FROM {JOBS} WHERE finished_at < {p} AND state IN "
                            f"({states}) ORDER BY finished_at LIMIT {p}", (cutoff, batch))
            else:
                cur.execute(f"DELETE FROM {JOBS} WHERE task_id IN ({pick})", (cutoff, batch))
            gone = int(cur.rowcount)
            self.store.conn.commit()
        return gone


def _job(r: Sequence[Any]) -> Job:
    def real(value: Any) -> float | None:
        return None if value is None else float(value)

    return Job(id=str(r[0]), task=str(r[1]), queue=str(r[2]), state=str(r[3]),
               attempt=int(r[4]), created_at=float(r[5]), scheduled_at=real(r[6]),
               started_at=real(r[7]), finished_at=real(r[8]), duration_s=real(r[9]),
               worker=r[10], error=r[11], traceback=r[12], args=r[13], unique_key=r[14],
               updated_at=float(r[15]))
