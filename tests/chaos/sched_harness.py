"""One schedule chaos run on one job store: three pools, a fault timeline, the verdict.

Three ``taskwarren worker`` pools (``-c 1``, each in a session of its own) run
:mod:`tests.chaos.schedtasks`, whose ``beat`` ticks every second; pool ``c`` runs under
libfaketime with its clock :data:`SHIFT_S` seconds fast. The :data:`TIMELINE` kills,
stops and restarts them; then every pool gets SIGTERM and one more pool, without a
scheduler, runs whatever was decided but not yet run (the drain).

The verdict joins three records that do not depend on each other:

- ``taskwarren_schedule_ticks``: each tick the schedulers decided;
- ``chaos_outbox_log``: every row ever written into the outbox, by a trigger this test
  adds (the relay deletes the rows it publishes, and a tick's task id is the same
  whoever decides it, so only the writes say how many jobs a tick became);
- the ledger: every run of a tick (:mod:`tests.chaos.schedtasks`).

Expected ticks are every second from the first decided tick to the last tick before the
SIGTERM (or the last decided one, if later: a fast clock decides ahead). Each must be
decided once, written once, and run under its own task id; a second run of the one job
(its delivery redelivered after a kill, or its row published again by a relay killed
before it deleted it) is counted as an extra run, not as a duplicated tick. A tick whose
first recorded run came from a redelivery had an earlier run killed under it (the task
records itself only at its end).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from taskwarren.schedules import tick_task_id
from taskwarren.store import open_store
from taskwarren.store.schema import OUTBOX, TICKS
from tests.chaos import schedtasks
from tests.support.databases import connect
from tests.support.rabbit import unique_queue
from tests.support.workers import ROOT, Pool, wait_until

MODULE = "tests.chaos.schedtasks"
SCHEDULE = schedtasks.beat.name
#: libfaketime's preload library (Debian's package ``faketime``).
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
#: How far pool ``c``'s clock runs ahead.
SHIFT_S = 25
#: (seconds after the start, action, pools): what the run does to its pools.
TIMELINE: tuple[tuple[float, str, str], ...] = (
    (10, "kill", "a"), (15, "start", "a"),
    (20, "stop", "b"), (30, "cont", "b"),
    (35, "kill", "c"), (40, "start", "c"),
    (45, "kill", "abc"), (50, "start", "abc"),
    (60, "term", "abc"),
)
#: The longest the drain may take: a relay killed holding claimed rows keeps them for its
#: lease (60 s, by its own clock: 25 s more for pool ``c``'s), and on SQLite the rows a
#: fast pool published are ready by its clock only.
DRAIN_S = 100.0
#: The audit table the test's trigger fills with every outbox write.
AUDIT = "chaos_outbox_log"


def audit_ddl(dialect: str) -> list[str]:
    """The audit table and the trigger that records each outbox row as it is written,
    stamped with the database's clock (SQLite: the writing process's)."""
    if dialect == "postgresql":
        return [f"CREATE TABLE {AUDIT} (task_id TEXT NOT NULL, written_at DOUBLE PRECISION)",
                "CREATE FUNCTION chaos_outbox_audit() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN INSERT INTO {AUDIT} VALUES (NEW.task_id, "
                "EXTRACT(EPOCH FROM clock_timestamp())); RETURN NEW; END $$",
                f"CREATE TRIGGER chaos_outbox_audit AFTER INSERT ON {OUTBOX} "
                "FOR EACH ROW EXECUTE FUNCTION chaos_outbox_audit()"]
    if dialect == "mysql":
        return [f"CREATE TABLE {AUDIT} (task_id VARCHAR(255) NOT NULL, written_at DOUBLE)",
                f"CREATE TRIGGER chaos_outbox_audit AFTER INSERT ON {OUTBOX} FOR EACH ROW "
                f"INSERT INTO {AUDIT} VALUES (NEW.task_id, UNIX_TIMESTAMP(SYSDATE(6)))"]
    return [f"CREATE TABLE {AUDIT} (task_id TEXT NOT NULL, written_at REAL)",
            f"CREATE TRIGGER chaos_outbox_audit AFTER INSERT ON {OUTBOX} BEGIN "
            f"INSERT INTO {AUDIT} VALUES (NEW.task_id, "
            "(julianday('now') - 2440587.5) * 86400.0); END"]


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = connect(url)
    try:
        cur = conn.cursor()
        cur.execute(sql)
        found = [tuple(r) for r in cur.fetchall()]
        conn.commit()
        return found
    finally:
        conn.close()


@dataclass
class Run:
    """One ledger line."""

    tick: int
    task_id: str
    pid: int
    pool: str
    wall: float  # the pool's own clock (shifted in pool c)
    real: float  # the machine's clock, from CLOCK_MONOTONIC
    redelivered: bool


@dataclass
class Report:
    """What one dialect's run found; the figures the test prints and asserts on."""

    dialect: str
    ticks_expected: int = 0
    first_tick: int = 0
    last_tick: int = 0
    decided: int = 0
    jobs_written: int = 0
    ran: int = 0
    duplicated: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    undecided: list[int] = field(default_factory=list)
    wrong_ids: int = 0
    runs: int = 0
    ran_redelivered: int = 0
    redelivered_runs: int = 0
    republished_runs: int = 0
    max_late_s: float = 0.0
    p50_late_s: float = 0.0
    max_early_s: float = 0.0
    early_runs: int = 0
    max_early_decided_s: float = 0.0
    outage_ticks: int = 0
    outage_caught_up: int = 0
    missed_logged: int = 0
    logged_twice: list[int] = field(default_factory=list)
    runs_by_pool: dict[str, int] = field(default_factory=dict)
    decided_by_pool: dict[str, int] = field(default_factory=dict)
    shift_seen_s: float | None = None
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    outbox_left: int = 0
    started_at: float = 0.0
    drain_s: float = 0.0
    wall_s: float = 0.0
    faults: list[str] = field(default_factory=list)

    def row(self) -> str:
        early_db = ("-" if self.dialect == "sqlite"
                    else f"{self.max_early_decided_s:.2f}")
        return (f"| {self.dialect} | {self.ticks_expected} | {self.decided} | "
                f"{self.jobs_written} | {self.ran} | {len(self.duplicated)} | "
                f"{len(self.missed)} | {self.ran_redelivered} | "
                f"{self.redelivered_runs} + {self.republished_runs} | "
                f"{self.p50_late_s:.2f} / {self.max_late_s:.2f} | {self.max_early_s:.2f} "
                f"({self.early_runs}) | {early_db} | {self.outage_caught_up}/"
                f"{self.outage_ticks} | {self.drain_s:.1f} | {self.wall_s:.1f} |")

    @staticmethod
    def header() -> str:
        return ("| store | ticks expected | decided | jobs written | ran | duplicated | "
                "missed | first ran on a redelivery | extra runs (redelivered + "
                "republished) | lateness p50 / max s | max earliness s (early ticks) | "
                "earliest write vs tick s (DB clock) | outage ticks caught up | drain s | "
                "wall s |\n"
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
                "---: | ---: | ---: | ---: |")


class ScheduleRun:
    """Pools of one job store, their faults, and the verdict.

    Args:
        dialect: ``sqlite``, ``postgresql`` or ``mysql``.
        store_url: an empty database.
        broker_url: RabbitMQ; ``None`` for SQLite, whose file is broker and store.
        workdir: ledger and pool logs go here.
    """

    def __init__(self, dialect: str, store_url: str, broker_url: str | None,
                 workdir: Path) -> None:
        self.dialect = dialect
        self.store_url = store_url
        self.broker_url = broker_url or store_url
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.queue = unique_queue("chaos-sched")
        self.ledger = workdir / "ledger.txt"
        self.ledger.touch()
        self.pools: dict[str, Pool] = {}
        self.all_pools: list[Pool] = []
        self.report = Report(dialect)
        self._generation = 0
        self._lock = threading.Lock()
        self.outage: tuple[float, float] | None = None
        self.stopped_at = 0.0
        # CLOCK_MONOTONIC is the machine's (libfaketime leaves it alone): the ledger's
        # monotonic stamps become real times with this one offset.
        self.mono_offset = time.time() - time.monotonic()

    # -- setup --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create taskwarren's tables and the audit trigger."""
        store = open_store(self.store_url)
        try:
            store.init()
        finally:
            store.close()
        conn = connect(self.store_url)
        try:
            cur = conn.cursor()
            for statement in audit_ddl(self.dialect):
                cur.execute(statement)
            conn.commit()
        finally:
            conn.close()

    def _env(self, name: str) -> dict[str, str]:
        env = {"TW_SCHED_LEDGER": str(self.ledger), "TW_SCHED_QUEUE": self.queue,
               "TW_SCHED_POOL": name, "TASKWARREN_JOBS": "off"}
        if self.dialect != "sqlite":
            env["TASKWARREN_STORE_URL"] = self.store_url
        if name == "c":
            env.update(LD_PRELOAD=str(FAKETIME_LIB), FAKETIME=f"+{SHIFT_S}s",
                       FAKETIME_DONT_FAKE_MONOTONIC="1",
                       PYTHONPATH=os.pathsep.join(
                           [str(ROOT), str(Path(__file__).with_name("faketime_site"))]))
        return env

    def start(self, name: str, scheduler: bool = True) -> Pool:
        with self._lock:
            self._generation += 1
            log = self.workdir / f"pool-{name}-{self._generation}.log"
            pool = Pool(MODULE, [self.queue], self.broker_url, concurrency=1,
                        extra=[] if scheduler else ["--no-scheduler"], env=self._env(name),
                        log_path=log)
            self.pools[name] = pool
            self.all_pools.append(pool)
        return pool

    def wait_started(self, names: str, timeout_s: float = 60.0) -> None:
        """Wait until each named pool's scheduler has started (or the pool died)."""
        for name in names:
            pool = self.pools[name]
            assert pool.log_path is not None
            log = pool.log_path

            def started(pool: Pool = pool, log: Path = log) -> bool:
                return pool.proc.poll() is not None or b'"scheduler.started"' in log.read_bytes()

            wait_until(started, timeout_s, interval=0.1,
                       what=f"{self.dialect} pool {name}'s scheduler")
            if pool.proc.poll() is not None:
                raise AssertionError(f"{self.dialect} pool {name} exited "
                                     f"{pool.proc.returncode} at start: {pool.log_text()}")

    def close(self) -> None:
        """SIGKILL every process group this run started (stopped ones too)."""
        for pool in self.all_pools:
            with contextlib.suppress(Exception):
                os.killpg(pool.pid, signal.SIGCONT)
            with contextlib.suppress(Exception):
                pool.kill()

    # -- the timeline -------------------------------------------------------------------

    def execute(self) -> Report:
        """The whole run: tables, pools, the timeline, the drain, the verdict."""
        began = time.monotonic()
        try:
            self.prepare()
            for name in "abc":
                self.start(name)
            self.wait_started("abc")
            self.report.started_at = time.time()
            self.play(time.monotonic())
            self.drain()
            self.judge()
        finally:
            self.close()
            self.report.wall_s = time.monotonic() - began
        return self.report

    def _fault(self, at: float, what: str) -> None:
        self.report.faults.append(f"t={at:.1f} {what}")

    def play(self, t0: float) -> None:
        """Run :data:`TIMELINE` from ``t0`` (monotonic): faults, restarts, the SIGTERM."""
        killed_all_at = None
        for at, action, names in TIMELINE:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic() - t0
            if action == "kill":
                for name in names:
                    self.pools[name].kill()
                if names == "abc":
                    killed_all_at = time.time()
            elif action == "start":
                for name in names:
                    self.start(name)
                if names == "abc" and killed_all_at is not None:
                    self.outage = (killed_all_at, time.time())
            elif action in ("stop", "cont"):
                sig = signal.SIGSTOP if action == "stop" else signal.SIGCONT
                for name in names:
                    os.killpg(self.pools[name].pid, sig)
            elif action == "term":
                self.stopped_at = time.time()
                self.terminate(names)
            self._fault(now, f"{action} {','.join(names)}")

    def terminate(self, names: Sequence[str], timeout_s: float = 45.0) -> None:
        """SIGTERM the named pools at once, then wait for each; record exit codes."""
        for name in names:
            self.pools[name].signal(signal.SIGTERM)
        for name in names:
            pool = self.pools[name]
            try:
                code: int | None = pool.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                code = None
            self.report.exit_codes[f"{name}-{self._generation_of(pool)}"] = code
            pool.kill()

    def _generation_of(self, pool: Pool) -> str:
        return pool.log_path.stem.rsplit("-", 1)[-1] if pool.log_path else "?"

    def drain(self) -> None:
        """Run what was decided and not yet run, with a pool that decides nothing."""
        began = time.monotonic()
        decided = {t for t, _, _, _ in self.tick_rows()}
        pool = self.start("drain", scheduler=False)
        log = pool.log_path
        assert log is not None
        # Until its handlers are installed a SIGTERM kills the supervisor (exit -15).
        wait_until(lambda: pool.proc.poll() is not None
                   or b'"worker.pool_started"' in log.read_bytes(), 60, interval=0.1,
                   what=f"{self.dialect} drain pool starting")
        deadline = began + DRAIN_S
        while time.monotonic() < deadline:
            ran = {r.tick for r in self.runs()}
            if decided <= ran and self.outbox_left() == 0:
                break
            time.sleep(0.25)
        self.report.drain_s = time.monotonic() - began
        self.terminate(("drain",))

    # -- what happened ------------------------------------------------------------------

    def _query(self, sql: str) -> list[tuple[Any, ...]]:
        return query(self.store_url, sql)

    def tick_rows(self) -> list[tuple[int, str, str | None, float]]:
        """(tick, outcome, task id, decided_at) of every decided tick, as many as there are."""
        found = self._query(f"SELECT tick_at, outcome, task_id, decided_at FROM {TICKS} "
                            f"WHERE schedule = '{SCHEDULE}'")
        return [(int(t), str(o), None if i is None else str(i), float(d))
                for t, o, i, d in found]

    def outbox_left(self) -> int:
        return int(self._query(f"SELECT COUNT(*) FROM {OUTBOX}")[0][0])

    def writes(self) -> dict[str, list[float]]:
        """The times (database clock) each task id was written into the outbox."""
        found: dict[str, list[float]] = defaultdict(list)
        for task_id, at in self._query(f"SELECT task_id, written_at FROM {AUDIT}"):
            found[str(task_id)].append(float(at))
        return found

    def runs(self) -> list[Run]:
        out = []
        for line in self.ledger.read_text().splitlines():
            parts = line.split()
            if len(parts) != 8:
                continue  # a line still being written
            tick, task_id, pid, pool, wall, mono, redelivered, count = parts
            out.append(Run(int(tick), task_id, int(pid), pool, float(wall),
                           float(mono) + self.mono_offset,
                           redelivered == "1" or int(count) > 0))
        return out

    def logged(self, event: str) -> list[dict[str, Any]]:
        """The ``event`` lines of every pool log of this run, each with its ``pool``."""
        out = []
        for log in sorted(self.workdir.glob("pool-*.log")):
            pool = log.stem.split("-")[1]
            for line in log.read_text(errors="replace").splitlines():
                if f'"{event}"' in line:
                    with contextlib.suppress(ValueError):
                        out.append({**json.loads(line), "pool": pool})
        return out

    def judge(self) -> Report:
        """Join the tick table, the outbox writes and the ledger into the report."""
        r = self.report
        rows = self.tick_rows()
        decisions = Counter(t for t, _, _, _ in rows)
        decided_at = {t: d for t, _, _, d in rows}
        writes = self.writes()
        runs_of: dict[int, list[Run]] = defaultdict(list)
        all_runs = self.runs()
        for run in all_runs:
            runs_of[run.tick].append(run)
        enqueued = self.logged("schedule.enqueued")
        logged = Counter(int(datetime.fromisoformat(e["tick"]).timestamp()) for e in enqueued)
        r.decided_by_pool = dict(sorted(Counter(e["pool"] for e in enqueued).items()))
        stop_tick = math.floor(self.stopped_at) - 1
        first = min(decisions, default=stop_tick)
        last = max([stop_tick, *decisions])
        expected = range(first, last + 1)
        r.first_tick, r.last_tick = first, last
        r.ticks_expected = len(expected)
        r.decided = sum(decisions.values())
        r.jobs_written = sum(len(w) for w in writes.values())
        r.runs = len(all_runs)
        r.wrong_ids = sum(1 for run in all_runs if run.tick not in expected
                          or run.task_id != tick_task_id(SCHEDULE, run.tick))
        late = self._tally(expected, decisions, writes, runs_of, logged)
        if late:
            r.max_late_s = max(late)
            r.p50_late_s = sorted(late)[len(late) // 2]
            r.max_early_s = max(0.0, -min(late))
            r.early_runs = sum(1 for x in late if x < 0)
        if self.outage is not None:
            down, up = self.outage
            ticks = [t for t in expected if down < t <= up]
            r.outage_ticks = len(ticks)
            r.outage_caught_up = sum(1 for t in ticks if runs_of.get(t)
                                     and decided_at.get(t, 0.0) >= up - 1.0)
        r.missed_logged = sum(int(e.get("ticks", 0)) for e in self.logged("schedule.missed"))
        r.runs_by_pool = dict(sorted(Counter(run.pool for run in all_runs).items()))
        shifts = sorted(run.wall - run.real for run in all_runs if run.pool == "c")
        r.shift_seen_s = shifts[len(shifts) // 2] if shifts else None
        r.outbox_left = self.outbox_left()
        return r

    def _tally(self, expected: range, decisions: Counter[int], writes: dict[str, list[float]],
               runs_of: dict[int, list[Run]], logged: Counter[int]) -> list[float]:
        """Judge each expected tick into the report; the lateness of each tick that ran."""
        r = self.report
        late: list[float] = []
        for tick in expected:
            task_id = tick_task_id(SCHEDULE, tick)
            runs = sorted(runs_of.get(tick, []), key=lambda run: run.real)
            if (decisions[tick] > 1 or len(writes.get(task_id, [])) > 1 or logged[tick] > 1
                    or len({run.task_id for run in runs}) > 1):
                r.duplicated.append(tick)
            if logged[tick] > 1:
                r.logged_twice.append(tick)
            if decisions[tick] == 0:
                r.undecided.append(tick)
            if writes.get(task_id) and self.dialect != "sqlite":
                r.max_early_decided_s = max(r.max_early_decided_s,
                                            tick - min(writes[task_id]))
            if not runs:
                r.missed.append(tick)
                continue
            r.ran += 1
            r.ran_redelivered += runs[0].redelivered
            r.redelivered_runs += sum(1 for run in runs[1:] if run.redelivered)
            r.republished_runs += sum(1 for run in runs[1:] if not run.redelivered)
            late.append(runs[0].real - tick)
        return late

    def as_json(self) -> dict[str, Any]:
        return asdict(self.report)
