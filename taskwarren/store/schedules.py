"""Schedules in the job store: each tick decided once, under the schedule row's lock.

A scheduler runs in every worker; any number may race. For one schedule, a pass is one
short transaction:

1. lock the schedule's row (``SELECT ... FOR UPDATE``; ``BEGIN IMMEDIATE`` on SQLite)
   and read ``decided_until``, the time up to which every tick has been decided;
2. read the database's clock (one clock for every scheduler, whatever theirs say);
3. for each tick in (``decided_until``, now]: claim it by inserting (schedule, tick)
   into ``taskwarren_schedule_ticks``, whose primary key takes it once only, and write
   its job into the outbox (with ``unique_key`` when overlap is skipped: a live job of
   the schedule holds the key, and the tick is recorded ``skipped``);
4. move ``decided_until`` to now, and commit.

Both guards live in the database: a scheduler that was paused or cut off mid-pass
resumes inside its old transaction, and its commit either fails (the database ended its
session) or finds the ticks already claimed. A tick older than the catch-up window is
not enqueued: the ticks so missed are counted on the row and reported.

The store knows rows and envelopes, never an app: :mod:`taskwarren.schedules` builds
the :class:`ScheduleSpec` of each task and the envelope of each tick.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Literal

from taskwarren.cron import rule_of
from taskwarren.message import Envelope
from taskwarren.store import outbox
from taskwarren.store.database import Store
from taskwarren.store.schema import SCHEDULES, TICKS

Overlap = Literal["skip", "allow"]

#: Ticks decided in one transaction at most; a longer catch-up takes several.
TICKS_PER_PASS = 200
#: Missed ticks are counted up to this many per pass (the count says "at least").
MISSED_COUNT_CAP = 100_000
#: The prefix of the ``unique_key`` a schedule's jobs hold while live (overlap skip).
UNIQUE_PREFIX = "taskwarren.schedule:"
#: A scheduler with another definition takes a schedule over when the stored one's next
#: tick is this overdue: nobody runs that definition any more (a canary removed, the new
#: code rolled back while an old pool kept running).
TAKEOVER_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """One schedule as a scheduler knows it from the code it runs.

    Attributes:
        name: the schedule's name (its task's name).
        spec: the definition as text (``cron 0 7 * * mon-fri Europe/Berlin``,
            ``every 30s``): a row whose text differs was written by other code.
        task: the task it enqueues.
        queue: the queue the task goes to.
        overlap: ``skip``: a tick is skipped while the schedule's last job is live;
            ``allow``: every tick is enqueued.
        ticks: the ticks ``t`` with ``after < t <= until``, in order (whole seconds).
        next_after: the first tick after a time.
    """

    name: str
    spec: str
    task: str
    queue: str
    overlap: Overlap
    ticks: Callable[[int, int], Iterator[int]] = field(repr=False, compare=False)
    next_after: Callable[[int], int] = field(repr=False, compare=False)

    @property
    def unique_key(self) -> str:
        """The key the schedule's live job holds when overlap is skipped."""
        return UNIQUE_PREFIX + self.name


@dataclass(slots=True)
class Pass:
    """What one pass over a schedule decided.

    Attributes:
        now: the database's clock when it was decided (seconds since the epoch).
        enqueued: (tick, task id) of each tick enqueued.
        skipped: (tick, id of the live job it overlapped) of each tick skipped.
        missed: ticks older than the catch-up window, not enqueued (at most
            :data:`MISSED_COUNT_CAP` counted).
        missed_span: the first and last of those ticks.
        more: the pass stopped at :data:`TICKS_PER_PASS`: more ticks are due now.
        through: with ``more``, the last tick this pass decided.
        superseded: the row holds another definition of this schedule (written by a
            scheduler started later): this scheduler leaves it alone.
        took_over: the row held another definition that nobody ran (its next tick
            :data:`TAKEOVER_AFTER_S` overdue): this scheduler's replaced it, and that
            definition's undecided ticks were counted in ``missed``.
        next_tick: the schedule's next tick after this pass.
    """

    now: float
    enqueued: list[tuple[int, str]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    missed: int = 0
    missed_span: tuple[int, int] | None = None
    more: bool = False
    through: int | None = None
    superseded: bool = False
    took_over: bool = False
    next_tick: int | None = None


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A row of ``taskwarren_schedules``, as ``taskwarren schedules`` shows it."""

    name: str
    spec: str
    task: str
    queue: str
    defined_at: float
    decided_until: int
    last_tick: int | None
    next_tick: int | None
    last_job: str | None
    missed: int
    checked_at: float


_ROW_COLUMNS = ("name, spec, task, queue, defined_at, decided_until, last_tick, next_tick, "
                "last_job, missed, checked_at")


class ScheduleTable:
    """The schedule tables through one :class:`Store` connection (one thread uses it).

    Args:
        store: the connection.
        idle_s: how long a transaction may sit idle before the database ends the session
            (PostgreSQL, MariaDB): a scheduler paused inside a pass holds the row's lock
            no longer. A statement waits up to three times this on a lock, so that the
            others outwait a paused one.
    """

    def __init__(self, store: Store, idle_s: int = 10) -> None:
        self.store = store
        self.p = store.placeholder
        self.dialect = store.dialect
        if self.dialect == "postgresql":
            store.session_sql = (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
                f"SET lock_timeout = {idle_s * 3000}",
                f"SET idle_in_transaction_session_timeout = {idle_s * 1000}")
        elif self.dialect == "mysql":
            store.session_sql = (f"SET SESSION innodb_lock_wait_timeout = {idle_s * 3}",
                                 "SET SESSION time_zone = '+00:00'")
        self._idle_sql = f"SET SESSION idle_transaction_timeout = {idle_s}"
        self._apply_session()

    def _apply_session(self) -> None:
        with self.store.cursor() as cur:
            for statement in self.store.session_sql:
                cur.execute(statement)
            if self.dialect == "mysql":
                # MariaDB ends a session idle inside a transaction after this; MySQL has
                # no such setting (there, its lock waits still end, and the paused
                # scheduler's ticks are already claimed when it resumes).
                try:
                    cur.execute(self._idle_sql)
                    self.store.session_sql = (*self.store.session_sql, self._idle_sql)
                except Exception as exc:  # MySQL: unknown system variable
                    if "idle_transaction_timeout" not in str(exc):
                        raise
            self.store.conn.commit()

    # -- the clock ------------------------------------------------------------------

    def _now(self, cur: Any) -> float:
        """The database's clock, in seconds since the epoch (SQLite: this machine's)."""
        if self.dialect == "postgresql":
            cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
        elif self.dialect == "mysql":
            cur.execute("SELECT UNIX_TIMESTAMP(NOW(6))")
        else:
            return time.time()
        return float(cur.fetchone()[0])

    def now(self) -> float:
        """The database's clock (one short read)."""
        with self.store.cursor() as cur:
            value = self._now(cur)
            self.store.conn.commit()
        return value

    # -- writes ---------------------------------------------------------------------

    def _insert_ignore(self, table: str, columns: Sequence[str]) -> str:
        marks = ", ".join([self.p] * len(columns))
        head = "INSERT IGNORE" if self.dialect == "mysql" else "INSERT"
        tail = "" if self.dialect == "mysql" else " ON CONFLICT DO NOTHING"
        return f"{head} INTO {table} ({', '.join(columns)}) VALUES ({marks}){tail}"

    def register(self, specs: Sequence[ScheduleSpec]) -> list[tuple[str, int]]:
        """Write the definitions of ``specs``, in one transaction; (name, ticks counted
        missed) of each schedule whose stored definition this replaced.

        A new schedule starts at the database's now: its first tick is the next one, and
        nothing before it is caught up; one whose row was deleted (its decided ticks are
        still recorded) resumes after its last recorded tick. A schedule whose stored
        definition differs gets this one (the scheduler started last wins, so a rolling
        deploy ends with the new code's) from now on: the stored definition's ticks that
        nobody decided are counted as missed, and the new one's before now are not
        caught up.
        """
        p = self.p
        replaced = []
        with self.store.cursor() as cur:
            self._begin(cur)
            now = self._now(cur)
            insert = self._insert_ignore(SCHEDULES, (
                "name", "spec", "task", "queue", "defined_at", "decided_until", "next_tick",
                "missed", "checked_at"))
            for spec in sorted(specs, key=lambda s: s.name):  # one lock order for all
                start = self._resume_point(cur, spec.name, math.floor(now))
                cur.execute(insert, (spec.name, spec.spec, spec.task, spec.queue, now, start,
                                     spec.next_after(start), 0, now))
                cur.execute(f"SELECT spec, decided_until, missed FROM {SCHEDULES} "
                            f"WHERE name = {p}{self._lock}", (spec.name,))
                stored, decided_until, missed = cur.fetchone()
                if stored != spec.spec:
                    count = self._replace(cur, spec, str(stored), int(decided_until),
                                          int(missed), now)
                    replaced.append((spec.name, count))
            self.store.conn.commit()
        return replaced

    def _resume_point(self, cur: Any, name: str, now: int) -> int:
        cur.execute(f"SELECT MAX(tick_at) FROM {TICKS} WHERE schedule = {self.p}", (name,))
        last = cur.fetchone()[0]
        return now if last is None else min(int(last), now)

    def _replace(self, cur: Any, spec: ScheduleSpec, stored: str, decided_until: int,
                 missed: int, now: float) -> int:
        """Write ``spec``'s definition over ``stored`` from ``now`` on; the stored
        definition's undecided ticks up to now, counted (and added to ``missed``)."""
        start = math.floor(now)
        old_rule = rule_of(stored)
        count = 0
        if old_rule is not None and decided_until < start:
            count = sum(1 for _ in islice(old_rule.ticks(decided_until, start),
                                          MISSED_COUNT_CAP))
        until = max(decided_until, start)
        p = self.p
        cur.execute(f"UPDATE {SCHEDULES} SET spec = {p}, task = {p}, queue = {p}, "
                    f"defined_at = {p}, decided_until = {p}, next_tick = {p}, missed = {p} "
                    f"WHERE name = {p}",
                    (spec.spec, spec.task, spec.queue, now, until, spec.next_after(until),
                     missed + count, spec.name))
        return count

    @property
    def _lock(self) -> str:
        return "" if self.dialect == "sqlite" else " FOR UPDATE"

    def _begin(self, cur: Any) -> None:
        if self.dialect == "sqlite":  # take the write lock now, not halfway through
            cur.execute("BEGIN IMMEDIATE")

    def decide(self, spec: ScheduleSpec, build: Callable[[int], Envelope], *,
               catch_up_s: float, record: bool, keep_s: float = 0.0) -> Pass:
        """Decide the due ticks of ``spec`` (at most :data:`TICKS_PER_PASS`), in one
        transaction, and commit.

        Args:
            spec: the schedule.
            build: the envelope of a tick's job (its task id must be the tick's own).
            catch_up_s: ticks older than this (by the database's clock) are missed.
            record: write each job's row in ``taskwarren_jobs`` too (the app records
                jobs); needed by overlap ``skip``.
            keep_s: delete this schedule's tick records older than this (0: keep).

        Raises:
            StoreError: the database failed or refused; nothing of the pass is kept.
        """
        p = self.p
        with self.store.cursor() as cur:
            self._begin(cur)
            cur.execute(f"SELECT spec, decided_until, missed, next_tick FROM {SCHEDULES} "
                        f"WHERE name = {p}{self._lock}", (spec.name,))
            row = cur.fetchone()
            now = self._now(cur)
            if row is None:  # deleted under us (by hand): define it again
                self.store.conn.rollback()
                self.register([spec])
                return Pass(now=now, next_tick=spec.next_after(math.floor(now)))
            decided_until, missed_before = int(row[1]), int(row[2])
            if row[0] != spec.spec:
                if row[3] is None or now <= int(row[3]) + TAKEOVER_AFTER_S:
                    self.store.conn.rollback()
                    return Pass(now=now, superseded=True)
                count = self._replace(cur, spec, str(row[0]), decided_until, missed_before,
                                      now)
                self.store.conn.commit()
                return Pass(now=now, missed=count, took_over=True,
                            next_tick=spec.next_after(max(decided_until, math.floor(now))))
            result = self._decide(cur, spec, build, decided_until, now, catch_up_s, record)
            last = result.enqueued[-1][0] if result.enqueued else None
            if result.skipped and (last is None or result.skipped[-1][0] > last):
                last = result.skipped[-1][0]
            until = (result.through if result.through is not None
                     else max(decided_until, math.floor(now)))
            result.next_tick = spec.next_after(until)
            sets = [f"decided_until = {p}", f"next_tick = {p}", f"missed = {p}",
                    f"checked_at = {p}"]
            params: list[Any] = [until, result.next_tick, missed_before + result.missed, now]
            if last is not None:
                sets.append(f"last_tick = {p}")
                params.append(last)
            if result.enqueued:
                sets.append(f"last_job = {p}")
                params.append(result.enqueued[-1][1])
            cur.execute(f"UPDATE {SCHEDULES} SET {', '.join(sets)} WHERE name = {p}",
                        (*params, spec.name))
            if keep_s > 0:
                cur.execute(f"DELETE FROM {TICKS} WHERE schedule = {p} AND tick_at < {p}",
                            (spec.name, math.floor(now - keep_s)))
            self.store.conn.commit()
        return result

    def _decide(self, cur: Any, spec: ScheduleSpec, build: Callable[[int], Envelope],
                decided_until: int, now: float, catch_up_s: float, record: bool) -> Pass:
        result = Pass(now=now)
        until = math.floor(now)
        horizon = math.ceil(now - catch_up_s)  # ticks before this are missed
        start = decided_until
        if start < horizon - 1:
            missed = list(islice(spec.ticks(start, horizon - 1), MISSED_COUNT_CAP))
            if missed:
                result.missed = len(missed)
                result.missed_span = (missed[0], missed[-1])
            start = horizon - 1
        due = list(islice(spec.ticks(start, until), TICKS_PER_PASS + 1))
        result.more = len(due) > TICKS_PER_PASS
        if result.more:
            result.through = due[TICKS_PER_PASS - 1]
        claim = self._insert_ignore(TICKS, ("schedule", "tick_at", "outcome", "task_id",
                                            "decided_at"))
        raw = getattr(self.store.conn, "raw", self.store.conn)  # SQLite's own connection
        for tick in due[:TICKS_PER_PASS]:
            envelope = build(tick)
            cur.execute(claim, (spec.name, tick, "enqueued", envelope.message_id, now))
            if cur.rowcount != 1:
                continue  # decided before (the row was moved back by hand)
            if spec.overlap == "skip":
                holder = outbox.write(raw, [envelope], 0.0, record=True,
                                      unique_key=spec.unique_key, now=now)
                if holder != envelope.message_id:
                    assert holder is not None
                    cur.execute(f"UPDATE {TICKS} SET outcome = 'skipped', task_id = {self.p} "
                                f"WHERE schedule = {self.p} AND tick_at = {self.p}",
                                (holder, spec.name, tick))
                    result.skipped.append((tick, holder))
                    continue
            else:
                outbox.write(raw, [envelope], 0.0, record=record, now=now)
            result.enqueued.append((tick, envelope.message_id))
        return result

    # -- reads ----------------------------------------------------------------------

    def rows(self) -> list[ScheduleRow]:
        """Every schedule row, by name."""
        with self.store.cursor() as cur:
            cur.execute(f"SELECT {_ROW_COLUMNS} FROM {SCHEDULES} ORDER BY name")
            found = cur.fetchall()
            self.store.conn.commit()
        return [ScheduleRow(str(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4]),
                            int(r[5]), _int(r[6]), _int(r[7]),
                            None if r[8] is None else str(r[8]), int(r[9]), float(r[10]))
                for r in found]

    def check(self) -> None:
        """Fail now, with the clear error, if the schedule tables are missing."""
        with self.store.cursor() as cur:
            cur.execute(f"SELECT name FROM {SCHEDULES} WHERE 1 = 0")
            cur.fetchall()
            cur.execute(f"SELECT schedule FROM {TICKS} WHERE 1 = 0")
            cur.fetchall()
            self.store.conn.commit()


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
