"""The jobs table is what the events say, whatever order they come in: a property test.

A few hundred jobs run for real on the in-memory broker with a job store (succeeded,
retried then succeeded, dead, delayed, cancelled while queued, scheduled or retrying,
run again by a user after they died), and every lifecycle event message is captured
from ``taskwarren.jobs`` before it is applied. That log is then applied to an emptied
table in its own order, and again for many seeds shuffled, cut into random batches,
with events and whole batches applied twice: every table must be the same. A user's
cancel or retry stays after the events it read (the job it saw) and before the events
its outcome caused; everything else moves freely.

A last-write-wins projection (a plain update in arrival order) fails the same check,
so the check has teeth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from taskwarren import Warren
from taskwarren.brokers.base import ACK
from taskwarren.relays import relay_for
from taskwarren.retries import Backoff
from taskwarren.store import Store
from taskwarren.store.job_table import JobTable
from taskwarren.store.jobs import JobEvent, decode_events, merge
from taskwarren.store.schema import JOBS, OUTBOX
from taskwarren.testing import join

#: How many shuffled orders each database checks.
SEEDS = 25
#: The columns compared, all of them.
COLUMNS = ("task_id, task, queue, state, attempt, version, args, error, traceback, worker, "
           "created_at, scheduled_at, started_at, finished_at, duration_s, updated_at, "
           "unique_key")


@dataclass(frozen=True)
class Op:
    """One step of the log: an event message's events, or a user's cancel or retry."""

    events: tuple[JobEvent, ...] = ()
    cancel: str = ""
    retry: str = ""

    @property
    def job(self) -> str:
        return self.cancel or self.retry


@dataclass
class Recording:
    """The log of a real run, and the table it left."""

    ops: list[Op] = field(default_factory=list)
    table: list[tuple[Any, ...]] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)


def capture(app: Warren, table: JobTable, log: list[Op]) -> None:
    """Take the event messages waiting on the broker into ``log``, and apply them."""
    consumer = app.broker.consumer()
    try:
        consumer.consume(app.settings.jobs_events_queue, 1_000)
        while deliveries := consumer.poll(0.0):
            for delivery in deliveries:
                events = tuple(decode_events(delivery.envelope.body))
                log.append(Op(events=events))
                table.apply(events)
                consumer.settle(delivery, ACK)
        while consumer.pending():
            consumer.poll(0.05)
    finally:
        consumer.close()


def record(store_url: str, store: Store) -> Recording:
    """Run a few hundred jobs of every kind for real; the log of what was applied."""
    app = Warren(url="memory://", store_url=store_url)
    failed_once: set[int] = set()
    doomed: set[int] = set()

    def ok(n: int) -> None:
        pass

    def flaky(n: int) -> None:
        if n not in failed_once:
            failed_once.add(n)
            raise RuntimeError(f"flaky {n}")

    def doom(n: int) -> None:
        if n in doomed:
            raise ValueError(f"doomed {n}")

    # The retries' delay outlasts a pass of join(run_delayed=False), so a job can be
    # cancelled while it is retrying.
    pause = Backoff(base_s=3.0, max_s=3.0, min_s=3.0)
    ok_task = app.task(ok, name="p.ok", queue="p")
    flaky_task = app.task(flaky, name="p.flaky", queue="p", retries=2, backoff=pause)
    doom_task = app.task(doom, name="p.doom", queue="p", retries=1, backoff=pause)
    table = JobTable(store)
    rec = Recording()
    try:
        plain = [ok_task.send(n) for n in range(120)]
        delayed = [ok_task.options(delay=0.5).send(n) for n in range(40)]
        flaky_ids = [flaky_task.send(n) for n in range(60)]
        doomed.update(range(40))
        doom_ids = [doom_task.send(n) for n in range(40)]
        capture(app, table, rec.ops)
        # Cancelled while queued and while scheduled.
        for task_id in plain[:20] + delayed[:20]:
            assert table.cancel(task_id).done
            rec.ops.append(Op(cancel=task_id))
            rec.cancelled.add(task_id)
        join(app, run_delayed=False, fail_on_error=False)
        capture(app, table, rec.ops)
        # Cancelled while retrying (the first attempt failed, the second waits).
        for task_id in flaky_ids[:15]:
            outcome = table.cancel(task_id)
            assert outcome.done and "retrying" in outcome.how, outcome
            rec.ops.append(Op(cancel=task_id))
            rec.cancelled.add(task_id)
        join(app, fail_on_error=False, timeout_s=30)
        capture(app, table, rec.ops)
        # Dead jobs run again by a user: a new epoch, through the outbox.
        doomed.difference_update(range(15))
        for task_id in doom_ids[:15]:
            assert table.get(task_id) is not None
            assert table.retry(task_id).state == "queued"
            rec.ops.append(Op(retry=task_id))
        relay = relay_for(app, store)
        while relay.relay_once():
            pass
        join(app, fail_on_error=False, timeout_s=30)
        capture(app, table, rec.ops)
    finally:
        app.close()
    rec.ops.extend(redelivered(rec.ops, plain[20:30]))
    for op in rec.ops[-10:]:
        table.apply(op.events)
    rec.table = rows(store)
    return rec


def redelivered(ops: list[Op], ids: list[str]) -> list[Op]:
    """A second run of finished jobs, as after a redelivery: the same version, later."""
    finals = {e.task_id: e for op in ops for e in op.events
              if e.task_id in ids and e.state == "succeeded"}
    return [Op(events=(replace(e, at=e.at + 5.0, duration_s=(e.duration_s or 0) + 1.0,
                               worker="elsewhere:1"),))
            for e in finals.values()]


def rows(store: Store) -> list[tuple[Any, ...]]:
    """The jobs table, comparable: a cancel's times are its wall clock, so left out."""
    with store.cursor() as cur:
        cur.execute(f"SELECT {COLUMNS} FROM {JOBS} ORDER BY task_id")
        found = cur.fetchall()
        store.conn.commit()
    out = []
    for row in found:
        values = list(row)
        if values[3] == "cancelled":
            assert values[13] is not None and values[15] is not None
            values[13] = values[15] = None
        out.append(tuple(float(v) if isinstance(v, float) else v for v in values))
    return out


def empty(store: Store) -> None:
    with store.cursor() as cur:
        cur.execute(f"DELETE FROM {JOBS}")
        cur.execute(f"DELETE FROM {OUTBOX}")
        store.conn.commit()


def replay(store: Store, steps: list[list[Op]], naive: bool = False) -> list[tuple[Any, ...]]:
    """Apply ``steps`` (batches of events, or one user action) to an emptied table; with
    ``naive``, events by :func:`last_write_wins`."""
    empty(store)
    table = JobTable(store)
    for step in steps:
        op = step[0]
        if op.cancel:
            outcome = table.cancel(op.cancel)
            assert outcome.done or naive, outcome
        elif op.retry:
            try:
                table.retry(op.retry)
            except LookupError:
                assert naive
        elif naive:
            last_write_wins(table, [e for o in step for e in o.events])
        else:
            table.apply([e for o in step for e in o.events])
    return rows(store)


def in_order(ops: list[Op]) -> list[list[Op]]:
    return [[op] for op in ops]


def shuffled(ops: list[Op], seed: int) -> list[list[Op]]:
    """``ops``' events shuffled, some twice, in random batches (some applied twice); each
    job's cancel or retry stays between the events before it and those after it."""
    rng = random.Random(seed)
    units: list[tuple[str, int, Op]] = []  # (job, phase, one event or one action)
    phase: dict[str, int] = {}
    for op in ops:
        if op.job:
            phase[op.job] = phase.get(op.job, 0) + 1
            units.append((op.job, phase[op.job], op))
            phase[op.job] += 1
        for event in op.events:
            units.append((event.task_id, phase.get(event.task_id, 0), Op(events=(event,))))
    by_job: dict[str, list[tuple[int, float, Op]]] = {}
    for job, ph, op in units:
        by_job.setdefault(job, []).append((ph, rng.random(), op))
    keyed: list[tuple[float, Op]] = []
    for group in by_job.values():
        keys = sorted(rng.random() for _ in group)
        group.sort(key=lambda u: (u[0], u[1]))  # phase order; any order within a phase
        for key, (_, _, op) in zip(keys, group, strict=True):
            keyed.append((key, op))
            if not op.job and rng.random() < 0.2:  # again, any time later
                keyed.append((key + rng.random() * (1 - key), op))
    keyed.sort(key=lambda k: k[0])
    steps: list[list[Op]] = []
    batch: list[Op] = []
    size = rng.randint(1, 40)
    for _, op in keyed:
        if op.job:
            if batch:
                steps.append(batch)
            steps.append([op])
            batch = []
            continue
        batch.append(op)
        if len(batch) >= size:
            steps.append(batch)
            batch, size = [], rng.randint(1, 40)
            if rng.random() < 0.15:
                steps.append(steps[-1])  # the same batch again at once
            elif rng.random() < 0.1 and len(steps) > 3:
                earlier = rng.choice(steps[:-1])
                if not earlier[0].job:
                    steps.append(earlier)  # an old batch again, later (a redelivery)
    if batch:
        steps.append(batch)
    return steps


def test_the_table_is_the_same_for_any_order_and_repetition_of_the_events(
        store_url: str, store: Store) -> None:
    rec = record(store_url, store)
    events = sum(len(op.events) for op in rec.ops)
    states = {row[3] for row in rec.table}
    assert len(rec.table) == 260 and events > 500, (len(rec.table), events)
    assert states == {"succeeded", "dead", "cancelled"}, states
    assert any(row[5] >> 32 == 1 for row in rec.table)  # the user's retries: epoch 1
    expected = replay(store, in_order(rec.ops))
    assert expected == rec.table
    for seed in range(SEEDS):
        got = replay(store, shuffled(rec.ops, seed))
        diff = [(a, b) for a, b in zip(expected, got, strict=True) if a != b]
        assert not diff, f"seed {seed}: {len(diff)} rows differ, first {diff[0]}"


def last_write_wins(table: JobTable, events: list[JobEvent]) -> None:
    """What a naive projector does: each event overwrites the row, in arrival order."""
    sql = table.upsert_sql()
    for newer in (f"(excluded.version > {JOBS}.version OR (excluded.version = {JOBS}.version "
                  f"AND excluded.updated_at > {JOBS}.updated_at))",
                  "(VALUES(version) > version OR (VALUES(version) = version "
                  "AND VALUES(updated_at) > updated_at))"):
        sql = sql.replace(newer, "1 = 1")
    sql = sql.replace("GREATEST(version, VALUES(version))", "VALUES(version)")
    assert sql.count("1 = 1") >= 10 and "GREATEST" not in sql, sql
    with table.store.cursor() as cur:
        for event in events:
            cur.execute(sql, merge([event])[0])
        table.store.conn.commit()


def test_a_last_write_wins_projection_fails_the_same_check(store_url: str,
                                                           store: Store) -> None:
    rec = record(store_url, store)
    expected = replay(store, in_order(rec.ops))
    assert replay(store, in_order(rec.ops), naive=True) == expected  # in order, it is right
    differs = [seed for seed in range(5)
               if replay(store, shuffled(rec.ops, seed), naive=True) != expected]
    assert differs, "a last-write-wins projection passed: the check has no teeth"
