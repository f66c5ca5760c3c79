"""Schedules in the job store, on the real PostgreSQL and MariaDB of this machine and
SQLite: each tick decided once however many schedulers race, catch-up within the
window, overlap skipped while the last job is live, a changed definition, and a
scheduler paused inside its transaction.

Ticks are made due by moving the schedule's ``decided_until`` back (as a scheduler that
did not run for that long would find it), not by waiting for the clock.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from taskwarren import Warren
from taskwarren.cli import main
from taskwarren.errors import StoreError
from taskwarren.relays import relay_for
from taskwarren.schedules import Scheduler, spec_of, tick_envelope, tick_task_id
from taskwarren.store import Store, open_store, outbox
from taskwarren.store.schedules import TICKS_PER_PASS, ScheduleSpec, ScheduleTable
from taskwarren.store.schema import JOBS, OUTBOX, SCHEDULES, TICKS
from taskwarren.testing import join, project
from tests.support.databases import connect


class Clockwork:
    """An app with a job store and two scheduled tasks, and what they ran."""

    def __init__(self, store_url: str, **settings: Any) -> None:
        self.app = Warren(url="memory://", store_url=store_url, **settings)
        self.ran: list[datetime] = []
        self.skipping_ran: list[datetime] = []

        def beat(scheduled_at: datetime) -> None:
            self.ran.append(scheduled_at)

        def report(scheduled_at: datetime, title: str = "daily") -> None:
            self.skipping_ran.append(scheduled_at)

        self.beat = self.app.task(beat, name="clock.beat", queue="clock",
                                  every=timedelta(seconds=1), overlap="allow")
        self.report = self.app.task(report, name="clock.report", queue="clock",
                                    every=timedelta(seconds=1))

    def spec(self, name: str) -> ScheduleSpec:
        spec = spec_of(self.app.tasks[name])
        assert spec is not None
        return spec

    def table(self) -> ScheduleTable:
        url = self.app.settings.effective_store_url
        assert url is not None
        return ScheduleTable(open_store(url), idle_s=2)

    def decide(self, table: ScheduleTable, name: str, catch_up_s: float = 3600.0) -> Any:
        task = self.app.tasks[name]
        return table.decide(self.spec(name), lambda tick: tick_envelope(task, tick),
                            catch_up_s=catch_up_s, record=self.app.settings.records_jobs)

    def relay(self) -> None:
        relay = relay_for(self.app)
        try:
            while relay.relay_once():
                pass
        finally:
            relay.store.close()


@pytest.fixture
def clock(store_url: str, store: Store) -> Iterator[Clockwork]:
    clockwork = Clockwork(store_url)
    yield clockwork
    clockwork.app.close()


def rewind(store_url: str, name: str, seconds: int) -> int:
    """Move ``name``'s ``decided_until`` ``seconds`` back; the new value."""
    conn = connect(store_url)
    try:
        p = "?" if store_url.startswith("sqlite") else "%s"
        cur = conn.cursor()
        cur.execute(f"SELECT decided_until FROM {SCHEDULES} WHERE name = {p}", (name,))
        until = int(cur.fetchone()[0]) - seconds
        cur.execute(f"UPDATE {SCHEDULES} SET decided_until = {p} WHERE name = {p}",
                    (until, name))
        conn.commit()
        return until
    finally:
        conn.close()


def rows(store_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = connect(store_url)
    try:
        cur = conn.cursor()
        cur.execute(sql.replace("?", "%s") if not store_url.startswith("sqlite") else sql,
                    params)
        found = [tuple(r) for r in cur.fetchall()]
        conn.commit()
        return found
    finally:
        conn.close()


def test_a_new_schedule_starts_now_and_a_rewound_one_enqueues_each_tick_once(
        clock: Clockwork, store_url: str) -> None:
    table = clock.table()
    try:
        assert table.register([clock.spec("clock.beat")]) == []
        first = clock.decide(table, "clock.beat")
        assert first.enqueued == [] or len(first.enqueued) <= 2  # a second may have passed
        start = rewind(store_url, "clock.beat", 5)
        result = clock.decide(table, "clock.beat")
    finally:
        table.store.close()
    ticks = [tick for tick, _ in result.enqueued]
    assert ticks[:5] == list(range(start + 1, start + 6))
    assert [task_id for _, task_id in result.enqueued] == [
        tick_task_id("clock.beat", t) for t in ticks]
    # Each tick is recorded, and its job waits in the outbox under the tick's task id.
    recorded = rows(store_url, f"SELECT tick_at, outcome, task_id FROM {TICKS} "
                               "WHERE schedule = ? ORDER BY tick_at", "clock.beat")
    assert [r[0] for r in recorded] == sorted({t for t, _ in first.enqueued} | set(ticks))
    assert {r[1] for r in recorded} == {"enqueued"}
    in_outbox = {r[0] for r in rows(store_url, f"SELECT task_id FROM {OUTBOX}")}
    assert {tick_task_id("clock.beat", t) for t in ticks} <= in_outbox
    # The jobs run, each with its tick's time.
    clock.relay()
    join(clock.app)
    assert sorted(clock.ran)[-len(ticks):] == [datetime.fromtimestamp(t, UTC) for t in ticks]


def test_racing_schedulers_decide_each_tick_once(clock: Clockwork, store_url: str) -> None:
    setup = clock.table()
    try:
        setup.register([clock.spec("clock.beat")])
    finally:
        setup.store.close()
    # More ticks than one pass decides: passes continue where the last one stopped.
    start = rewind(store_url, "clock.beat", TICKS_PER_PASS * 2 + 50)
    decided: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def scheduler() -> None:
        table = clock.table()
        try:
            barrier.wait()
            for _ in range(6):
                result = clock.decide(table, "clock.beat")
                decided.extend(t for t, _ in result.enqueued)
        except BaseException as exc:
            errors.append(exc)
        finally:
            table.store.close()

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(decided) == len(set(decided))  # no tick twice
    assert set(range(start + 1, start + TICKS_PER_PASS * 2 + 51)) <= set(decided)  # none missing
    outbox_ids = [r[0] for r in rows(store_url, f"SELECT task_id FROM {OUTBOX}")]
    assert len(outbox_ids) == len(set(outbox_ids)) == len(decided)


def test_ticks_older_than_the_catch_up_window_are_missed_and_counted(
        clock: Clockwork, store_url: str) -> None:
    table = clock.table()
    try:
        table.register([clock.spec("clock.beat")])
        start = rewind(store_url, "clock.beat", 100)
        result = clock.decide(table, "clock.beat", catch_up_s=30)
        listed = {r.name: r for r in table.rows()}
    finally:
        table.store.close()
    now = math.floor(result.now)
    ticks = [t for t, _ in result.enqueued]
    assert ticks[0] >= math.ceil(result.now - 30) and ticks[-1] == now
    assert len(ticks) in (30, 31)  # the window, whatever the fraction of the second
    assert result.missed == ticks[0] - start - 1
    assert result.missed_span == (start + 1, ticks[0] - 1)
    assert listed["clock.beat"].missed == result.missed
    assert listed["clock.beat"].last_tick == now


def test_overlap_skips_a_tick_while_the_last_job_is_live_then_enqueues_again(
        clock: Clockwork, store_url: str) -> None:
    table = clock.table()
    try:
        table.register([clock.spec("clock.report")])
        start = rewind(store_url, "clock.report", 3)
        result = clock.decide(table, "clock.report")
        assert [t for t, _ in result.enqueued] == [start + 1]
        live = result.enqueued[0][1]
        assert [t for t, _ in result.skipped][:2] == [start + 2, start + 3]
        assert {holder for _, holder in result.skipped} == {live}
        skipped = rows(store_url, f"SELECT outcome, task_id FROM {TICKS} WHERE schedule = ? "
                                  "AND tick_at = ?", "clock.report", start + 2)
        assert skipped == [("skipped", live)]
        # The job runs; the next tick is enqueued.
        clock.relay()
        join(clock.app)
        project(clock.app)
        state = rows(store_url, f"SELECT state FROM {JOBS} WHERE task_id = ?", live)
        assert state == [("succeeded",)]
        result = clock.decide(table, "clock.report")
        if not result.enqueued and not result.skipped:  # no tick since: wait for one
            time.sleep(max(0.0, result.next_tick - time.time()) + 0.05)
            result = clock.decide(table, "clock.report")
        assert result.enqueued and result.enqueued[0][0] > start + 3
        assert result.skipped == [] or result.skipped[0][0] > result.enqueued[0][0]
    finally:
        table.store.close()
    assert clock.skipping_ran == [datetime.fromtimestamp(start + 1, UTC)]


def test_the_scheduler_started_last_defines_the_schedule_and_the_other_stands_down(
        clock: Clockwork, store_url: str) -> None:
    old = clock.spec("clock.beat")
    new = ScheduleSpec(name=old.name, spec="every 2s; queue=clock; overlap=allow",
                       task=old.task, queue=old.queue,
                       overlap="allow", ticks=old.ticks, next_after=old.next_after)
    table = clock.table()
    try:
        assert table.register([old]) == []
        assert table.register([new]) == [("clock.beat", 0)]
        rewind(store_url, "clock.beat", 5)
        task = clock.app.tasks["clock.beat"]
        standing_down = table.decide(old, lambda t: tick_envelope(task, t), catch_up_s=60,
                                     record=False)
        assert standing_down.superseded and standing_down.enqueued == []
        running = table.decide(new, lambda t: tick_envelope(task, t), catch_up_s=60,
                               record=False)
        assert not running.superseded and len(running.enqueued) >= 5
    finally:
        table.store.close()


@pytest.mark.parametrize("store_url", ["postgresql", "mysql"], indirect=True)
def test_a_scheduler_paused_inside_its_transaction_cannot_fire_a_tick_twice(
        clock: Clockwork, store_url: str) -> None:
    """A scheduler stops (SIGSTOP, a long GC pause, a partition) holding the row's lock:
    the database ends its session after ``idle_s`` idle, the others go on, and its
    late commit fails."""
    paused, other = clock.table(), clock.table()
    try:
        paused.register([clock.spec("clock.beat")])
        start = rewind(store_url, "clock.beat", 5)
        lock = "SELECT decided_until FROM taskwarren_schedules WHERE name = %s FOR UPDATE"
        cur = paused.store.conn.cursor()
        cur.execute(lock, ("clock.beat",))
        assert int(cur.fetchone()[0]) == start
        began = time.monotonic()
        result = clock.decide(other, "clock.beat")  # waits for the paused one's lock
        waited = time.monotonic() - began
        assert [t for t, _ in result.enqueued][:5] == list(range(start + 1, start + 6))
        assert 1.0 < waited < 8.0
        # The paused scheduler wakes inside its old transaction: the database ended its
        # session, so nothing it does there can commit.
        with pytest.raises(Exception) as ended:
            cur.execute("SELECT 1")
            cur.fetchall()
            paused.store.conn.commit()
        assert any(word in str(ended.value).lower() for word in (
            "idle-in-transaction", "idle_in_transaction", "terminat", "inactivity",
            "lost connection", "gone away", "closed")), ended.value
    finally:
        paused.store.close()
        other.store.close()
    ticks = rows(store_url, f"SELECT tick_at FROM {TICKS} WHERE schedule = ?", "clock.beat")
    assert len(ticks) == len({t for (t,) in ticks})


@pytest.mark.parametrize("store_url", ["postgresql", "mysql"], indirect=True)
def test_a_tick_decided_on_a_machine_whose_clock_runs_ahead_is_due_at_once_for_every_relay(
        clock: Clockwork, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduler reads the database's clock; the job it writes must be due by that
    clock too, not by its machine's: else a relay on another machine, whose clock is
    right, leaves the tick's job in the outbox until that clock catches up."""
    table = clock.table()
    try:
        table.register([clock.spec("clock.beat")])
        start = rewind(store_url, "clock.beat", 2)
        with monkeypatch.context() as fast:
            fast.setattr(outbox, "time", SimpleNamespace(time=lambda: time.time() + 25.0))
            result = clock.decide(table, "clock.beat")
    finally:
        table.store.close()
    assert [t for t, _ in result.enqueued][:2] == [start + 1, start + 2]
    relay = open_store(store_url)
    try:
        claimed = {row.task_id for row in relay.claim(100, 60.0)}
    finally:
        relay.close()
    assert {task_id for _, task_id in result.enqueued} <= claimed


def test_the_scheduler_loop_sleeps_until_the_next_tick_and_recovers_a_lost_store(
        clock: Clockwork, store_url: str) -> None:
    opened: list[ScheduleTable] = []

    def open_table() -> ScheduleTable:
        table = clock.table()
        opened.append(table)
        return table

    scheduler = Scheduler(clock.app, open_table)
    wait = scheduler.run_once()
    assert 0.0 < wait <= 1.0  # the next every-second tick
    time.sleep(wait + 0.05)
    scheduler.run_once()
    scheduler.close()  # as after a failure: the next pass opens another connection
    time.sleep(1.05)
    scheduler.run_once()
    scheduler.close()
    assert len(opened) == 2
    decided = rows(store_url, f"SELECT tick_at FROM {TICKS} WHERE schedule = ? "
                              "ORDER BY tick_at", "clock.beat")
    ticks = [t for (t,) in decided]
    assert len(ticks) >= 2 and ticks == list(range(ticks[0], ticks[0] + len(ticks)))


def test_a_failed_pass_keeps_nothing(clock: Clockwork, store_url: str) -> None:
    table = clock.table()
    try:
        table.register([clock.spec("clock.beat")])
        start = rewind(store_url, "clock.beat", 3)
        task = clock.app.tasks["clock.beat"]
        built: list[int] = []

        def build(tick: int) -> Any:
            built.append(tick)
            if len(built) == 2:
                raise RuntimeError("the database went away")
            return tick_envelope(task, tick)

        with pytest.raises(StoreError):
            table.decide(clock.spec("clock.beat"), build, catch_up_s=60, record=False)
        assert rows(store_url, f"SELECT tick_at FROM {TICKS}") == []
        assert rows(store_url, f"SELECT task_id FROM {OUTBOX}") == []
        result = clock.decide(table, "clock.beat")
    finally:
        table.store.close()
    assert [t for t, _ in result.enqueued][:3] == [start + 1, start + 2, start + 3]


@pytest.fixture
def own_default_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module of the test's registers its tasks on a default app of the test's own,
    which no other test then finds (with its store and job settings); the one before
    is put back afterwards (modules imported earlier registered their tasks on it)."""
    monkeypatch.setattr("taskwarren.app._default_app", None)


def test_taskwarren_schedules_lists_each_schedule_with_its_ticks_and_status(
        clock: Clockwork, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        own_default_app: None) -> None:
    scheduler = Scheduler(clock.app, clock.table)
    scheduler.run_once()
    scheduler.close()
    name = f"twsched_listing_{uuid.uuid4().hex[:8]}"
    module = tmp_path / f"{name}.py"
    module.write_text(
        "from datetime import datetime, timedelta\n"
        "from taskwarren import task\n"
        "@task(name='clock.beat', queue='clock', every=timedelta(seconds=1), overlap='allow')\n"
        "def beat(scheduled_at: datetime) -> None: ...\n"
        "@task(name='clock.report', queue='clock', every=timedelta(seconds=2))\n"
        "def report(scheduled_at: datetime) -> None: ...\n"
        "@task(name='clock.new', cron='0 7 * * mon-fri', tz='Europe/Berlin')\n"
        "def new() -> None: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TASKWARREN_URL", "memory://")
    monkeypatch.setenv("TASKWARREN_STORE_URL", store_url)
    monkeypatch.delitem(sys.modules, name, raising=False)  # undone after the test
    result = CliRunner().invoke(main, ["schedules", name, "--json"])
    assert result.exit_code == 0, result.output
    listed = {e["name"]: e for e in json.loads(result.output)}
    assert listed["clock.beat"]["status"] == "active"
    assert listed["clock.beat"]["schedule"] == "every 1s; queue=clock; overlap=allow"
    assert listed["clock.beat"]["next_tick"] is not None
    # clock.report is every 2s in this code, every 1s in the store: another definition.
    assert listed["clock.report"]["status"] == "superseded"
    assert listed["clock.report"]["stored"] == "every 1s; queue=clock; overlap=skip"
    assert listed["clock.new"]["status"] == "new"
    assert listed["clock.new"]["schedule"] == ("cron 0 7 * * mon-fri Europe/Berlin; "
                                               "queue=default; overlap=skip")
    table = CliRunner().invoke(main, ["schedules"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:4] == ["NAME", "SCHEDULE", "OVERLAP", "STATUS"]
    assert any(line.startswith("clock.beat") and " stored " in line for line in lines)


def test_a_scheduler_that_reconnects_does_not_take_a_schedule_back(
        clock: Clockwork, store_url: str) -> None:
    """A rolling deploy: the new code's scheduler starts after the old one; the old one
    loses its connection and opens another, and still leaves the schedule alone."""
    newer = Warren(url="memory://", store_url=store_url)
    newer.task(lambda scheduled_at: None, name="clock.beat", queue="clock",
               every=timedelta(seconds=2), overlap="allow")
    newer.task(lambda scheduled_at: None, name="clock.report", queue="clock",
               every=timedelta(seconds=1))
    old = Scheduler(clock.app, clock.table)
    new = Scheduler(newer, clock.table)
    try:
        old.run_once()
        new.run_once()
        old.close()  # as after a failed pass
        old.due = dict.fromkeys(old.due, 0.0)
        old.run_once()
        assert "clock.beat" in old.superseded
        stored = rows(store_url, f"SELECT spec FROM {SCHEDULES} WHERE name = ?", "clock.beat")
        assert stored == [("every 2s; queue=clock; overlap=allow",)]
    finally:
        old.close()
        new.close()
        newer.close()


def set_row(store_url: str, name: str, **values: Any) -> None:
    conn = connect(store_url)
    try:
        p = "?" if store_url.startswith("sqlite") else "%s"
        sets = ", ".join(f"{column} = {p}" for column in values)
        conn.cursor().execute(f"UPDATE {SCHEDULES} SET {sets} WHERE name = {p}",
                              (*values.values(), name))
        conn.commit()
    finally:
        conn.close()


def test_a_definition_nobody_runs_is_taken_over_and_its_undecided_ticks_counted(
        clock: Clockwork, store_url: str) -> None:
    """A canary with another definition registered last, then went away: the schedulers
    still running the old code take the schedule back once its next tick is overdue."""
    mine = clock.spec("clock.beat")
    canary = ScheduleSpec(name=mine.name, spec="every 2s; queue=clock; overlap=allow",
                          task=mine.task, queue=mine.queue, overlap="allow",
                          ticks=mine.ticks, next_after=mine.next_after)
    table = clock.table()
    try:
        table.register([mine])
        table.register([canary])
        # The canary's scheduler is gone: its row stopped at a tick 70 s ago.
        now = math.floor(table.now())
        set_row(store_url, "clock.beat", decided_until=now - 70, next_tick=now - 69)
        result = clock.decide(table, "clock.beat")
        assert result.took_over and not result.superseded
        assert result.missed == 35  # the canary's every-2s ticks in those 70 s
        listed = {r.name: r for r in table.rows()}
        assert listed["clock.beat"].spec == mine.spec
        assert listed["clock.beat"].missed == 35
        assert listed["clock.beat"].decided_until >= now
        # A definition whose next tick is not overdue is left alone.
        table.register([canary])
        assert clock.decide(table, "clock.beat").superseded
    finally:
        table.store.close()


def test_a_replaced_definition_counts_its_undecided_ticks_as_missed(
        clock: Clockwork, store_url: str) -> None:
    mine = clock.spec("clock.beat")
    table = clock.table()
    try:
        table.register([mine])
        rewind(store_url, "clock.beat", 30)
        newer = ScheduleSpec(name=mine.name, spec="every 3s; queue=clock; overlap=allow",
                             task=mine.task, queue=mine.queue, overlap="allow",
                             ticks=mine.ticks, next_after=mine.next_after)
        replaced = table.register([newer])
    finally:
        table.store.close()
    assert [name for name, _ in replaced] == ["clock.beat"]
    assert replaced[0][1] in (30, 31)  # every-1s ticks in the 30 s nobody decided


def test_a_deleted_schedule_row_resumes_after_its_last_recorded_tick(
        clock: Clockwork, store_url: str) -> None:
    table = clock.table()
    try:
        table.register([clock.spec("clock.beat")])
        start = rewind(store_url, "clock.beat", 3)
        first = clock.decide(table, "clock.beat")
        last = first.enqueued[-1][0]
        assert last > start
        conn = connect(store_url)
        try:
            conn.cursor().execute(f"DELETE FROM {SCHEDULES}")
            conn.commit()
        finally:
            conn.close()
        time.sleep(2.2)  # ticks pass while the row is missing
        clock.decide(table, "clock.beat")  # finds no row: defines it again
        again = clock.decide(table, "clock.beat")
    finally:
        table.store.close()
    ticks = [t for (t,) in rows(store_url, f"SELECT tick_at FROM {TICKS} WHERE schedule = ? "
                                           "ORDER BY tick_at", "clock.beat")]
    assert ticks == list(range(ticks[0], ticks[-1] + 1))  # no gap across the deletion
    assert ticks[-1] >= last + 2 and again.missed == 0


def test_names_that_differ_only_in_case_are_two_schedules(store_url: str,
                                                          store: Store) -> None:
    app = Warren(url="memory://", store_url=store_url)
    for name in ("reports.Daily", "reports.daily"):
        app.task(lambda scheduled_at: None, name=name, queue="clock",
                 every=timedelta(seconds=1), overlap="allow")
    table = ScheduleTable(open_store(store_url), idle_s=2)
    try:
        specs = [spec_of(app.tasks[n]) for n in ("reports.Daily", "reports.daily")]
        table.register([s for s in specs if s is not None])
        for spec in specs:
            assert spec is not None
            rewind(store_url, spec.name, 2)
            task = app.tasks[spec.name]
            result = table.decide(spec, lambda t, task=task: tick_envelope(task, t),
                                  catch_up_s=60, record=False)
            assert len(result.enqueued) >= 2
        assert {r.name for r in table.rows()} == {"reports.Daily", "reports.daily"}
    finally:
        table.store.close()
        app.close()
