#!/usr/bin/env python
"""The job store (issue 13) measured: projection lag, and what recording jobs costs.

On MariaDB, PostgreSQL and SQLite (a file), against RabbitMQ, with real
``taskwarren worker jobs -c 2`` pools (subprocesses, the projector as their sidecar)
and no-op tasks. Each repetition runs every section on every database before the
next repetition starts (interleaved), and the "off" figures (``TASKWARREN_JOBS=0``,
the same store URL, so the outbox relay still runs) come from the same run as the
"on" ones:

* ``lag``: a producer process sends at ``--rate`` (1,000) jobs/s for ``--pool-seconds``
  (5) with ``send_many`` every 10 ms, to a pool with its projector. The lag of a job
  is the time its row turned ``succeeded`` minus its ``finished_at`` (the worker's
  time of the terminal event, taken just before it publishes the event). The time the
  row turned ``succeeded`` is written by a trigger the benchmark adds to its own copy
  of the table (``projected_at``: ``SYSDATE(6)`` / ``clock_timestamp()`` / SQLite's
  ``julianday('now')``, millisecond precision there): the statement's time, which
  precedes the projector's commit by at most one batch's transaction. Reports p50, p95,
  p99 and max lag (the first second apart: the projector opens its store connection at
  its first batch), the send rate achieved, the rate the rows reached ``succeeded``
  (the pool's real rate) and send -> ``succeeded`` (the queue's wait included).
* ``projector``: the same lag with the projector alone at the target: a process
  publishes what a busy pool would, one ``succeeded`` event per message (confirms
  pipelined), at ``--rate`` (1,000) events/s for ``--seconds`` (20), to the projector
  sidecar of an idle pool; the jobs' rows exist, ``queued``, beforehand.
* ``drain``: ``--n`` (5,000) no-op jobs sent beforehand (``send_many``; with the store
  on, their ``queued`` rows projected before the pool starts), drained by ``-c 2``;
  rate = jobs / (first task start -> last task start), store on and off. With the
  store on, also the time from the last task start until every row is ``succeeded``.
* ``send``: ``task.send()`` one at a time (``--send-n``, 1,000) and ``send_many`` in
  calls of 1,000 (``--n``), store on and off; beside them raw py-amqp publishing the
  same number of persistent messages (confirm each; a sliding window of 1,000).
* ``db``: the databases' own limits, no broker: a bare single-row upsert + commit loop
  (2,000 new rows), the worker's start statement (``JobTable.start``, one commit each,
  on 2,000 queued rows) and the projector's (``JobTable.apply``, 1,000 ``succeeded``
  events per transaction, 10,000 events).

Usage: ``python benchmarks/jobs.py [--reps 1] [--only lag,projector,drain,send,db]
[--dbs mysql,postgresql,sqlite] [--threads 1]``. Writes JSON lines to ``--out`` and prints medians
[min-max] and the on/off ratios. Needs RabbitMQ 3.10 on 127.0.0.1:5672, where it makes
a vhost of its own (``tw-bench-jobs``, with ``rabbitmqctl``; the shared broker's
``taskwarren.jobs`` queue has other consumers), and PostgreSQL and MariaDB as given by
``TW_BENCH_PG`` / ``TW_BENCH_MY`` (databases ``tw_bench_jobs_pg`` and
``tw_bench_jobs_my`` are created and dropped; SQLite in ``/tmp/tw-bench-jobs``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
import psycopg
import pymysql

# This checkout's taskwarren, not whichever one the venv has installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import taskwarren
from taskwarren import Warren
from taskwarren.store import open_store
from taskwarren.store.job_table import JobTable
from taskwarren.store.jobs import JOB_EVENTS_QUEUE, JobEvent, encode_events
from taskwarren.store.projector import Projector
from taskwarren.store.schema import JOBS, OUTBOX

VHOST = os.environ.get("TW_BENCH_VHOST", "tw-bench-jobs")
URL = os.environ.get("TASKWARREN_BENCH_URL", f"amqp://guest:guest@127.0.0.1:5672/{VHOST}")
PG = os.environ.get("TW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
MY = os.environ.get("TW_BENCH_MY", "mysql://root@127.0.0.1:3306")
WORK = Path(os.environ.get("TW_BENCH_DIR", "/tmp/tw-bench-jobs"))
QUEUE = "bench_jobs"
LEDGER = os.environ.get("TW_BENCH_LEDGER", "")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Calls per ``send_many`` when filling and timing it.
CHUNK = 1000

STORE_URLS = {
    "mysql": f"{MY}/tw_bench_jobs_my",
    "postgresql": f"{PG}/tw_bench_jobs_pg",
    "sqlite": f"sqlite:///{WORK}/jobs.db",
}

# The store, and whether jobs are recorded, come from the environment
# (TASKWARREN_STORE_URL, TASKWARREN_JOBS): the worker and each child set them.
app = Warren(url=URL)


@app.task(queue=QUEUE, name="bench.jobs_noop")
def noop(n: int) -> None:
    if LEDGER:
        fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{n} {time.time():.6f}\n".encode())
        os.close(fd)


# --------------------------------------------------------------------------
# databases and the broker's vhost
# --------------------------------------------------------------------------
def connect(db: str) -> Any:
    if db == "mysql":
        return pymysql.connect(host="127.0.0.1", port=3306, user="root",
                               database="tw_bench_jobs_my", autocommit=False)
    if db == "postgresql":
        return psycopg.connect(STORE_URLS["postgresql"])
    conn = sqlite3.connect(str(WORK / "jobs.db"), timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def execute(conn: Any, sql: str, params: Any = ()) -> list[Any]:
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []
    finally:
        cur.close()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


def create(dbs: list[str]) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    vhosts = subprocess.run(["rabbitmqctl", "-q", "list_vhosts"], capture_output=True,
                            text=True, timeout=60).stdout.split()
    if VHOST not in vhosts:
        rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    drop()
    if "mysql" in dbs:
        server = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        execute(server, "CREATE DATABASE tw_bench_jobs_my")
        server.close()
    if "postgresql" in dbs:
        with psycopg.connect(f"{PG}/test", autocommit=True) as server:
            server.execute("CREATE DATABASE tw_bench_jobs_pg")
    for db in dbs:
        store = open_store(STORE_URLS[db])
        store.init()
        store.close()
        conn = connect(db)
        execute(conn, f"ALTER TABLE {JOBS} ADD COLUMN projected_at "
                      f"{'DOUBLE PRECISION' if db == 'postgresql' else 'DOUBLE'}")
        execute(conn, "CREATE TABLE bench_kv (id BIGINT PRIMARY KEY, v DOUBLE PRECISION)")
        conn.commit()
        conn.close()


def drop() -> None:
    with contextlib.suppress(Exception):
        server = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        execute(server, "DROP DATABASE IF EXISTS tw_bench_jobs_my")
        server.close()
    with contextlib.suppress(Exception), psycopg.connect(f"{PG}/test", autocommit=True) as server:
        server.execute("DROP DATABASE IF EXISTS tw_bench_jobs_pg")
    for p in WORK.glob("jobs.db*"):
        p.unlink()


#: The trigger that stamps the moment a row turns ``succeeded`` (lag section only).
TRIGGERS = {
    "mysql": [
        f"CREATE TRIGGER bench_projected_u BEFORE UPDATE ON {JOBS} FOR EACH ROW "
        "SET NEW.projected_at = IF(NEW.state = 'succeeded' AND OLD.state <> 'succeeded', "
        "UNIX_TIMESTAMP(SYSDATE(6)), NEW.projected_at)",
        f"CREATE TRIGGER bench_projected_i BEFORE INSERT ON {JOBS} FOR EACH ROW "
        "SET NEW.projected_at = IF(NEW.state = 'succeeded', UNIX_TIMESTAMP(SYSDATE(6)), NULL)",
    ],
    "postgresql": [
        "CREATE FUNCTION bench_projected() RETURNS trigger AS $$ BEGIN "
        "IF NEW.state = 'succeeded' AND (TG_OP = 'INSERT' OR OLD.state <> 'succeeded') THEN "
        "NEW.projected_at := extract(epoch from clock_timestamp()); END IF; RETURN NEW; END "
        "$$ LANGUAGE plpgsql",
        f"CREATE TRIGGER bench_projected BEFORE INSERT OR UPDATE ON {JOBS} FOR EACH ROW "
        "EXECUTE FUNCTION bench_projected()",
    ],
    "sqlite": [
        f"CREATE TRIGGER bench_projected_u AFTER UPDATE OF state ON {JOBS} "
        "WHEN NEW.state = 'succeeded' AND OLD.state <> 'succeeded' BEGIN "
        f"UPDATE {JOBS} SET projected_at = (julianday('now') - 2440587.5) * 86400.0 "
        "WHERE task_id = NEW.task_id; END",
        f"CREATE TRIGGER bench_projected_i AFTER INSERT ON {JOBS} "
        "WHEN NEW.state = 'succeeded' BEGIN "
        f"UPDATE {JOBS} SET projected_at = (julianday('now') - 2440587.5) * 86400.0 "
        "WHERE task_id = NEW.task_id; END",
    ],
}
UNTRIGGER = {
    "mysql": ["DROP TRIGGER bench_projected_u", "DROP TRIGGER bench_projected_i"],
    "postgresql": [f"DROP TRIGGER bench_projected ON {JOBS}", "DROP FUNCTION bench_projected()"],
    "sqlite": ["DROP TRIGGER bench_projected_u", "DROP TRIGGER bench_projected_i"],
}


def run_sql(db: str, statements: list[str], check: bool = True) -> None:
    conn = connect(db)
    for sql in statements:
        try:
            execute(conn, sql)
            conn.commit()
        except Exception:
            conn.rollback()
            if check:
                raise
    conn.close()


def empty(db: str) -> None:
    run_sql(db, [f"DELETE FROM {JOBS}", f"DELETE FROM {OUTBOX}", "DELETE FROM bench_kv"])
    app.declare([QUEUE])
    app.broker.purge(QUEUE)
    with contextlib.suppress(Exception):
        app.broker.purge(JOB_EVENTS_QUEUE)  # our vhost's, never the shared one


def succeeded(db: str) -> int:
    conn = connect(db)
    n = int(execute(conn, f"SELECT COUNT(*) FROM {JOBS} WHERE state = 'succeeded'")[0][0])
    conn.close()
    return n


def wait_succeeded(db: str, n: int, timeout_s: float) -> float:
    """Poll until ``n`` rows are ``succeeded``; the time it happened (or raise)."""
    deadline = time.time() + timeout_s
    while (got := succeeded(db)) < n:
        if time.time() > deadline:
            raise SystemExit(f"{db}: only {got} of {n} rows succeeded after {timeout_s} s")
        time.sleep(0.02)
    return time.time()


# --------------------------------------------------------------------------
# child processes: producers, the projector, the pool
# --------------------------------------------------------------------------
def env(db: str, on: bool, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{HERE}:{REPO}", "TASKWARREN_STORE_URL": STORE_URLS[db],
            "TASKWARREN_JOBS": "1" if on else "0", "TASKWARREN_URL": URL,
            # One events queue whatever the store (each run has the vhost to itself).
            "TASKWARREN_JOBS_QUEUE": JOB_EVENTS_QUEUE,
            "PYTHONDONTWRITEBYTECODE": "1", **extra}


def child(db: str, on: bool, *args: str, timeout_s: float = 300) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], env=env(db, on),
                         capture_output=True, text=True, timeout=timeout_s)
    if out.returncode:
        raise SystemExit(f"child {args} failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def do_paced(rate: float, seconds: float, base: int) -> dict[str, Any]:
    """``send_many`` every 10 ms of the jobs due by then; start, end and count."""
    n_total = int(rate * seconds)
    sent = 0
    t0 = time.time()
    while sent < n_total:
        tick = time.time()
        due = min(n_total, int((tick - t0) * rate) + 1)
        if due > sent:
            noop.send_many([{"n": base + i} for i in range(sent, due)])
            sent = due
        time.sleep(max(0.0, 0.01 - (time.time() - tick)))
    return {"start": t0, "end": time.time(), "n": sent}


def do_events(rate: float, seconds: float) -> dict[str, Any]:
    """What a busy pool publishes: one ``succeeded`` event per message, at ``rate``/s.

    Every 10 ms the events due by then are published (one message each, confirms
    pipelined); each event's time is taken just before its publish, as the worker does.
    """
    n_total = int(rate * seconds)
    app.declare([JOB_EVENTS_QUEUE])
    sent = 0
    t0 = time.time()
    while sent < n_total:
        tick = time.time()
        due = min(n_total, int((tick - t0) * rate) + 1)
        if due > sent:
            now = time.time()
            app.broker.publish(JOB_EVENTS_QUEUE, [encode_events([JobEvent(
                f"ev-{i:07d}", "succeeded", now, task="bench.jobs_noop", queue=QUEUE,
                attempt=0, created_at=now, started_at=now, worker="bench:1",
                duration_s=0.0001)]) for i in range(sent, due)])
            sent = due
        time.sleep(max(0.0, 0.01 - (time.time() - tick)))
    return {"start": t0, "end": time.time(), "n": sent}


def do_fill(n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    for i in range(0, n, CHUNK):
        noop.send_many([{"n": j} for j in range(i, min(n, i + CHUNK))])
    return {"n": n, "rate": n / (time.perf_counter() - t0)}


def do_sends(n_single: int, n_many: int) -> dict[str, Any]:
    noop.send(-1)  # connected and declared, not timed
    t0 = time.perf_counter()
    for i in range(n_single):
        noop.send(i)
    single = n_single / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(0, n_many, CHUNK):
        noop.send_many([{"n": j} for j in range(i, min(n_many, i + CHUNK))])
    return {"send": single, "send_many": n_many / (time.perf_counter() - t0)}


def do_project() -> dict[str, Any]:
    url = app.settings.effective_store_url
    assert url is not None
    projector = Projector(app.broker, lambda: JobTable(open_store(url)), 0)
    return {"applied": projector.drain(1.0)}


def start_pool(db: str, on: bool, ledger: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskwarren", "--log-format", "json", "worker", "jobs", "-c", "2",
         "--threads", os.environ.get("TW_BENCH_THREADS", "1")],
        env=env(db, on, TW_BENCH_LEDGER=ledger), stderr=subprocess.DEVNULL,
        start_new_session=True)


def stop_pool(pool: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pool.pid, signal.SIGTERM)
    pool.wait(60)


def read_ledger(path: str) -> dict[int, float]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return {}
    return {int(k): float(t) for k, t in (line.split() for line in lines if " " in line)}


def wait_ledger(path: str, n: int, timeout_s: float) -> dict[int, float]:
    deadline = time.time() + timeout_s
    while len(got := read_ledger(path)) < n:
        if time.time() > deadline:
            raise SystemExit(f"only {len(got)} of {n} tasks ran after {timeout_s} s")
        time.sleep(0.05)
    return got


def lag_figures(rows: list[tuple[float, float]], start: float) -> dict[str, Any]:
    """p50/p95/p99/max of (projected - finished) in ms, for events after the first second
    (the projector opens its store connection at its first batch), and that second's max."""
    steady = sorted((p - f) * 1000 for f, p in rows if f >= start + 1.0)
    first = [(p - f) * 1000 for f, p in rows if f < start + 1.0]
    return {"lag_p50_ms": pct(steady, 50), "lag_p95_ms": pct(steady, 95),
            "lag_p99_ms": pct(steady, 99), "lag_max_ms": steady[-1] if steady else None,
            "first_second_max_ms": max(first, default=None)}


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


# --------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------
def lag(db: str, rate: float, seconds: float) -> dict[str, Any]:
    empty(db)
    run_sql(db, UNTRIGGER[db], check=False)  # left by a failed measurement
    run_sql(db, TRIGGERS[db])
    ledger = str(WORK / "ledger-lag")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ledger)
    pool = start_pool(db, True, ledger)
    try:
        child(db, True, "--paced", "0.5", "--rate", "100", "--base", "0")  # 50 jobs, warm-up
        wait_succeeded(db, 50, 60)
        run_sql(db, [f"DELETE FROM {JOBS}"])
        sent = child(db, True, "--paced", str(seconds), "--rate", str(rate),
                     "--base", "1000000", timeout_s=seconds + 120)
        wait_succeeded(db, sent["n"], 120)
    finally:
        stop_pool(pool)
    conn = connect(db)
    rows = execute(conn, f"SELECT finished_at, projected_at, created_at FROM {JOBS} "
                         "WHERE state = 'succeeded' AND projected_at IS NOT NULL")
    conn.close()
    run_sql(db, UNTRIGGER[db])
    done = sorted(float(p) for _, p, _ in rows)
    e2e = sorted((float(p) - float(c)) * 1000 for _, p, c in rows)
    return {"jobs": sent["n"], "rows": len(rows), "send_rate": sent["n"] / (sent["end"] -
                                                                          sent["start"]),
            "projected_rate": len(done) / (done[-1] - done[0]),
            **lag_figures([(float(f), float(p)) for f, p, _ in rows], sent["start"]),
            "sent_to_projected_p50_ms": pct(e2e, 50), "sent_to_projected_p99_ms": pct(e2e, 99)}


def projector_lag(db: str, rate: float, seconds: float) -> dict[str, Any]:
    """The projector alone at ``rate`` terminal events/s (a pool's sidecar, no tasks)."""
    empty(db)
    n = int(rate * seconds)
    table = JobTable(open_store(STORE_URLS[db]))
    now = time.time()
    for i in range(0, n, 1000):  # the rows exist, queued, as after a send
        table.apply([JobEvent(f"ev-{j:07d}", "queued", now, task="bench.jobs_noop",
                              queue=QUEUE, created_at=now, args='{"n": 0}')
                     for j in range(i, min(n, i + 1000))])
    table.store.close()
    run_sql(db, UNTRIGGER[db], check=False)  # left by a failed measurement
    run_sql(db, TRIGGERS[db])
    pool = start_pool(db, True, "")
    try:
        time.sleep(3.0)  # the pool and its projector up; not measured
        sent = child(db, True, "--events", str(seconds), "--rate", str(rate),
                     timeout_s=seconds + 120)
        wait_succeeded(db, n, 120)
    finally:
        stop_pool(pool)
    conn = connect(db)
    rows = execute(conn, f"SELECT finished_at, projected_at FROM {JOBS} "
                         "WHERE state = 'succeeded' AND projected_at IS NOT NULL")
    conn.close()
    run_sql(db, UNTRIGGER[db])
    done = sorted(float(p) for _, p in rows)
    return {"events": sent["n"], "rows": len(rows),
            "event_rate": sent["n"] / (sent["end"] - sent["start"]),
            "projected_rate": len(done) / (done[-1] - done[0]),
            **lag_figures([(float(f), float(p)) for f, p in rows], sent["start"])}


def drain(db: str, on: bool, n: int) -> dict[str, Any]:
    empty(db)
    fill = child(db, on, "--fill", str(n))
    if on:
        child(db, on, "--project")
    ledger = str(WORK / "ledger-drain")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ledger)
    pool = start_pool(db, on, ledger)
    try:
        started = wait_ledger(ledger, n, 120)
        last = max(started.values())
        tail = wait_succeeded(db, n, 120) - last if on else None
    finally:
        stop_pool(pool)
    first = min(started.values())
    return {"rate": (n - 1) / (last - first), "fill_rate": fill["rate"], "jobs": n,
            "projection_tail_s": tail}


def sends(db: str, on: bool, n_single: int, n_many: int) -> dict[str, Any]:
    empty(db)
    result = child(db, on, "--sends", str(n_single), "--n", str(n_many))
    empty(db)
    return result


def raw_publish(n: int, window: int) -> float:
    """Raw py-amqp: ``n`` persistent messages of a no-op's size, ``window`` unconfirmed."""
    conn = amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest",
                           virtual_host=VHOST, confirm_publish=False)
    conn.connect()
    ch = conn.channel()
    ch.queue_declare("bench_jobs_raw", durable=True, auto_delete=False,
                     arguments={"x-queue-type": app.settings.queue_type})
    ch.confirm_select()
    body = json.dumps({"args": [], "kwargs": {"n": 123456}}).encode()
    confirmed = [0]

    def settle(tag: int, multiple: bool) -> None:
        confirmed[0] = max(confirmed[0], tag)  # a channel's confirms come in order

    ch.events["basic_ack"].add(settle)
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        ch.basic_publish(amqp.Message(body, delivery_mode=2), exchange="",
                         routing_key="bench_jobs_raw")
        while i - confirmed[0] >= window:
            conn.drain_events(timeout=5)
    while confirmed[0] < n:
        conn.drain_events(timeout=5)
    rate = n / (time.perf_counter() - t0)
    ch.queue_purge("bench_jobs_raw")
    conn.close()
    return rate


def db_limits(db: str) -> dict[str, Any]:
    empty(db)
    conn = connect(db)
    p = "?" if db == "sqlite" else "%s"
    upsert = (f"INSERT INTO bench_kv (id, v) VALUES ({p}, {p}) ON DUPLICATE KEY UPDATE v = "
              "VALUES(v)" if db == "mysql" else
              f"INSERT INTO bench_kv (id, v) VALUES ({p}, {p}) ON CONFLICT (id) DO UPDATE SET "
              "v = excluded.v")
    m = 2000
    t0 = time.perf_counter()
    for i in range(m):
        execute(conn, upsert, (i, time.time()))
        conn.commit()
    bare = m / (time.perf_counter() - t0)
    conn.close()
    table = JobTable(open_store(STORE_URLS[db]))
    now = time.time()
    table.apply([JobEvent(f"bench-{i:06d}", "queued", now, task="bench.jobs_noop", queue=QUEUE,
                          created_at=now, args='{"n": 0}') for i in range(m)])
    t0 = time.perf_counter()
    for i in range(m):
        table.start(f"bench-{i:06d}", "bench.jobs_noop", QUEUE, 0, 0, "bench:1", now)
    start = m / (time.perf_counter() - t0)
    k = 10_000
    events = [JobEvent(f"bench-{i:06d}", "succeeded", time.time(), task="bench.jobs_noop",
                       queue=QUEUE, attempt=0, created_at=now, started_at=now,
                       worker="bench:1", duration_s=0.0) for i in range(k)]
    t0 = time.perf_counter()
    for i in range(0, k, 1000):
        table.apply(events[i:i + 1000])
    applied = k / (time.perf_counter() - t0)
    table.store.close()
    empty(db)
    return {"bare_upsert_commit": bare, "start_commit": start, "apply_1000": applied}


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------
def summarise(rows: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    for r in rows:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in (
                    "rep", "load", "seconds", "threads"):
                groups[(r["section"], r.get("db", "-"), k)].append(float(v))
    print("\n| section | db | figure | median | min-max | reps |\n|---|---|---|---|---|---|")
    for (section, db, k), vs in sorted(groups.items()):
        digits = 2 if max(vs) < 100 else 0
        print(f"| {section} | {db} | {k} | {statistics.median(vs):.{digits}f} | "
              f"{min(vs):.{digits}f}-{max(vs):.{digits}f} | {len(vs)} |")

    def med(section: str, db: str, key: str) -> float | None:
        vs = groups.get((section, db, key))
        return statistics.median(vs) if vs else None

    print("\n| ratio (of medians) | db | value |\n|---|---|---|")
    dbs = sorted({db for (_, db, _) in groups if db != "-"})
    for label, s1, k1, s2, k2 in [
            ("drain on / off", "drain_on", "rate", "drain_off", "rate"),
            ("send on / off", "send_on", "send", "send_off", "send"),
            ("send_many on / off", "send_on", "send_many", "send_off", "send_many"),
            ("send off / raw confirm-each", "send_off", "send", "-raw", "confirm_each"),
            ("send on / raw confirm-each", "send_on", "send", "-raw", "confirm_each"),
            ("send_many off / raw window1000", "send_off", "send_many", "-raw", "window1000"),
            ("send_many on / raw window1000", "send_on", "send_many", "-raw", "window1000"),
            ("drain on / start statement alone", "drain_on", "rate", "db", "start_commit"),
            ("drain off / bare upsert+commit", "drain_off", "rate", "db", "bare_upsert_commit")]:
        for db in dbs:
            b = med(s2[1:], "-", k2) if s2.startswith("-") else med(s2, db, k2)
            a = med(s1, db, k1)
            if a is not None and b:
                print(f"| {label} | {db} | {a / b:.2f} |")
    for r in rows:
        if "error" in r:
            print(f"failed: {r['section']} {r['db']} rep {r['rep']}: {r['error']}")
    loads = [r["load"] for r in rows]
    print(f"\nload average (1 min) during the run: {min(loads):.2f}-{max(loads):.2f}")


def run(args: argparse.Namespace, dbs: list[str], only: set[str]) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out or WORK / f"jobs-{stamp}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    rows: list[dict[str, Any]] = []

    def record(section: str, rep: int, fn: Callable[[], dict[str, Any]], db: str = "-") -> None:
        before = os.getloadavg()[0]
        t0 = time.perf_counter()
        try:
            result = fn()
        except (Exception, SystemExit) as exc:  # one failed measurement, not the run
            result = {"error": f"{type(exc).__name__}: {str(exc)[-300:]}"}
        row = {"section": section, "db": db, "rep": rep, "threads": args.threads,
               "load": max(before, os.getloadavg()[0]),
               "commit": commit, "taskwarren": str(Path(taskwarren.__file__).parent), **result}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        brief = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()
                 if k not in ("commit", "taskwarren")}
        print(json.dumps(brief), file=sys.stderr, flush=True)

    for rep in range(args.reps):
        for db in dbs:
            if "lag" in only:
                record("lag", rep, lambda db=db: lag(db, args.rate, args.pool_seconds), db)
            if "projector" in only:
                record("projector", rep,
                       lambda db=db: projector_lag(db, args.rate, args.seconds), db)
            if "drain" in only:
                for on in (False, True):
                    record(f"drain_{'on' if on else 'off'}", rep,
                           lambda db=db, on=on: drain(db, on, args.n), db)
            if "send" in only:  # raw py-amqp beside each database's sends
                record("raw", rep, lambda: {"confirm_each": raw_publish(args.send_n, 1),
                                            "window1000": raw_publish(args.n, 1000)})
                for on in (False, True):
                    record(f"send_{'on' if on else 'off'}", rep,
                           lambda db=db, on=on: sends(db, on, args.send_n, args.n), db)
            if "db" in only:
                record("db", rep, lambda db=db: db_limits(db), db)
    print(f"results: {out}")
    summarise(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--dbs", default="mysql,postgresql,sqlite")
    parser.add_argument("--only", default="lag,projector,drain,send,db")
    parser.add_argument("--rate", type=float, default=1000.0, help="lag: jobs/s sent")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="projector: seconds of events")
    parser.add_argument("--pool-seconds", type=float, default=5.0,
                        help="lag: seconds of sending to the pool")
    parser.add_argument("--n", type=int, default=5000, help="drain and send_many: jobs")
    parser.add_argument("--send-n", type=int, default=1000, help="single sends timed")
    parser.add_argument("--threads", type=int, default=1, help="executor threads per child")
    parser.add_argument("--out", default=None, help="JSON lines file")
    parser.add_argument("--keep", action="store_true", help="leave the databases in place")
    # Internal: the child processes.
    parser.add_argument("--paced", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--fill", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sends", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--project", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paced:
        print(json.dumps(do_paced(args.rate, args.paced, args.base)))
    elif args.fill:
        print(json.dumps(do_fill(args.fill)))
    elif args.sends:
        print(json.dumps(do_sends(args.sends, args.n)))
    elif args.events:
        print(json.dumps(do_events(args.rate, args.events)))
    elif args.project:
        print(json.dumps(do_project()))
    else:
        dbs = [d for d in args.dbs.split(",") if d]
        os.environ["TW_BENCH_THREADS"] = str(args.threads)
        create(dbs)
        try:
            run(args, dbs, set(args.only.split(",")))
        finally:
            app.close()
            if not args.keep:
                drop()
                with contextlib.suppress(Exception):
                    rabbitmqctl("delete_vhost", VHOST)
        return
    app.close()


if __name__ == "__main__":
    main()
