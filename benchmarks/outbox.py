#!/usr/bin/env python
"""The transactional outbox measured against its databases, raw py-amqp and a jobs table.

Issue 12's performance section, side by side in one interleaved run (each repetition
runs every section on every database before the next repetition starts), on MariaDB,
PostgreSQL and SQLite:

* ``drain``: ``--n`` (20,000) no-op calls written with ``send_many(db=conn)`` (500 per
  transaction, untimed), then ``Relay.relay_once()`` in this process until the outbox
  is empty: every message confirmed by RabbitMQ and its row deleted. Beside it, on the
  same rows and batch sizes, the database's own limits (no broker): the relay's claim +
  delete statements alone, a bare ``executemany`` INSERT of 500 rows per transaction, a
  bare ``DELETE ... WHERE id IN (500 ids)`` per transaction; and the broker's: raw
  py-amqp publishing the same bodies with confirms (batches of 500, all confirms
  awaited per batch, as the relay does; and a sliding window of 1000), and taskwarren's
  own ``send_many`` without ``db``. Also the relay's CPU share (process CPU / wall).
* ``e2e``: ``--producers`` (2) processes, each running ``--e2e-n`` application
  transactions (INSERT a business row, ``send(db=conn)``, COMMIT, one job per
  transaction) while the relay runs as its own process (``relay_for(app)`` and
  ``Relay.run``, as ``taskwarren relay`` does, counting its passes). Rate = jobs / (first
  transaction start -> outbox empty). Beside it the same producers with no relay (the
  database's commit rate), and the relay process's CPU share.
* ``latency``: one transaction per job at ``--lat-rate`` (200/s) for 1 + ``--lat-s`` (15)
  seconds to a real ``taskwarren worker -c 2`` with its relay sidecar; commit returned ->
  task body started, p50 and p99 of all but the first second (after an idle pause a
  polling relay waits up to 0.5 s: reported apart as ``first_second_max_ms``).
* ``purge``: a claim on an empty outbox after ``--n`` rows went through it, with and
  without another connection holding a snapshot open (MariaDB and PostgreSQL).
* ``jobs``: the baseline a team leaves, a Laravel-shaped MariaDB ``jobs`` table polled
  by 2 worker processes with ``SELECT ... FOR UPDATE SKIP LOCKED`` (1 and 10 rows per
  claim; claim, commit, run, DELETE, commit).

Usage: ``python benchmarks/outbox.py [--reps 3] [--only drain,e2e,latency,purge,jobs]
[--dbs mysql,postgresql,sqlite]``; ``--profile DB`` profiles one drain with cProfile
instead. Writes JSON lines to ``--out`` and prints the table (medians [min-max]).
Needs RabbitMQ, and PostgreSQL and MariaDB as given by ``TW_BENCH_PG`` / ``TW_BENCH_MY``
(databases ``tw_bench_pg`` and ``tw_bench_my`` are created and dropped).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import json
import os
import pstats
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
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
from taskwarren.relays import relay_for
from taskwarren.store import open_store
from taskwarren.store.schema import OUTBOX, REJECTED

URL = os.environ.get("TASKWARREN_BENCH_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
PG = os.environ.get("TW_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
MY = os.environ.get("TW_BENCH_MY", "mysql://root@127.0.0.1:3306")
WORK = Path(os.environ.get("TW_BENCH_DIR", "/tmp/tw-bench-outbox"))
QUEUE = "bench_outbox"
RAW_QUEUE = "bench_outbox_raw"
LEDGER = os.environ.get("TW_BENCH_LEDGER", "")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Rows per transaction when filling the outbox, and per raw INSERT/DELETE and raw batch.
CHUNK = 500

STORE_URLS = {
    "mysql": f"{MY}/tw_bench_my",
    "postgresql": f"{PG}/tw_bench_pg",
    "sqlite": f"sqlite:///{WORK}/outbox.db",
}

app = Warren(url=URL)


@app.task(queue=QUEUE, name="bench.outbox_noop")
def noop(n: int) -> None:
    if LEDGER:
        fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{n} {time.time():.6f}\n".encode())
        os.close(fd)


# --------------------------------------------------------------------------
# databases
# --------------------------------------------------------------------------
def connect(db: str) -> Any:
    """An application connection (a transaction opens with the first statement)."""
    if db == "mysql":
        return pymysql.connect(host="127.0.0.1", port=3306, user="root", database="tw_bench_my",
                               autocommit=False)
    if db == "postgresql":
        return psycopg.connect(STORE_URLS["postgresql"])
    conn = sqlite3.connect(str(WORK / "outbox.db"), timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


def mark(db: str) -> str:
    return "?" if db == "sqlite" else "%s"


def execute(conn: Any, sql: str, params: Any = ()) -> list[Any]:
    cur = conn.cursor()
    try:
        cur.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []
    finally:
        cur.close()


def executemany(conn: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
    cur = conn.cursor()
    try:
        cur.executemany(sql, rows)
    finally:
        cur.close()


def create_databases(dbs: list[str]) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    if "mysql" in dbs or "jobs" in dbs:
        server = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        execute(server, "DROP DATABASE IF EXISTS tw_bench_my")
        execute(server, "CREATE DATABASE tw_bench_my")
        server.close()
    if "postgresql" in dbs:
        with psycopg.connect(f"{PG}/test", autocommit=True) as server:
            server.execute("DROP DATABASE IF EXISTS tw_bench_pg")
            server.execute("CREATE DATABASE tw_bench_pg")
    if "sqlite" in dbs:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{WORK}/outbox.db{suffix}")
    for db in dbs:
        if db == "jobs":
            continue
        store = open_store(STORE_URLS[db])
        store.init()
        store.close()
        conn = connect(db)
        key = {"mysql": "BIGINT AUTO_INCREMENT PRIMARY KEY", "postgresql": "BIGSERIAL PRIMARY KEY",
               "sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT"}[db]
        execute(conn, f"CREATE TABLE bench_orders (id {key}, amount INT NOT NULL, "
                      "note VARCHAR(64) NOT NULL)")
        conn.commit()
        conn.close()


def drop_databases() -> None:
    with contextlib.suppress(Exception):
        server = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
        execute(server, "DROP DATABASE IF EXISTS tw_bench_my")
        server.close()
    with contextlib.suppress(Exception), psycopg.connect(f"{PG}/test", autocommit=True) as server:
        server.execute("DROP DATABASE IF EXISTS tw_bench_pg")
    with contextlib.suppress(Exception):
        for p in WORK.glob("outbox.db*"):
            p.unlink()


def delete_queues() -> None:
    """Delete this benchmark's queues (never the shared ``taskwarren.delay.*`` ones)."""
    with contextlib.suppress(Exception):
        conn = amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest")
        conn.connect()
        ch = conn.channel()
        for queue in (QUEUE, f"{QUEUE}.dead", RAW_QUEUE):
            ch.queue_delete(queue)
        conn.close()


def empty(db: str) -> None:
    """Empty the outbox and the business table, and the queue."""
    conn = connect(db)
    for table in (OUTBOX, REJECTED, "bench_orders"):
        execute(conn, f"DELETE FROM {table}")
    conn.commit()
    conn.close()
    app.declare([QUEUE])
    app.broker.purge(QUEUE)


def settle_purge(limit: int = 5000, timeout_s: float = 15.0) -> int:
    """Wait for InnoDB's purge to catch up (the history list below ``limit``); its length
    before. Rows deleted but not yet purged are still scanned by every claim, so a run
    that starts behind a backlog (ours or another user's of the server) measures it."""
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", autocommit=True)
    first = length = -1
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        (_, value), = execute(conn, "SHOW GLOBAL STATUS LIKE 'Innodb_history_list_length'")
        length = int(value)
        first = length if first < 0 else first
        if length < limit:
            break
        time.sleep(0.5)
    conn.close()
    return first


def fill(db: str, n: int) -> float:
    """``n`` outbox rows through ``send_many(db=)``, CHUNK per transaction; the rate."""
    conn = connect(db)
    t0 = time.perf_counter()
    for start in range(0, n, CHUNK):
        noop.options(db=conn).send_many([{"n": i} for i in range(start, min(n, start + CHUNK))])
        conn.commit()
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def outbox_rows(db: str) -> int:
    conn = connect(db)
    (count,), = execute(conn, f"SELECT COUNT(*) FROM {OUTBOX}")
    conn.commit()
    conn.close()
    return int(count)


def ready(expected: int, timeout_s: float = 10.0) -> int:
    """The queue's ready count once it reaches ``expected`` (quorum stats lag a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = app.broker.stats(QUEUE).ready
        if got >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


# --------------------------------------------------------------------------
# drain: the relay, the database alone, the broker alone
# --------------------------------------------------------------------------
def relay_drain(db: str, n: int) -> dict[str, Any]:
    empty(db)
    fill_rate = fill(db, n)
    relay = relay_for(app, open_store(STORE_URLS[db]))
    app.declare([QUEUE])
    w0, c0 = time.perf_counter(), time.process_time()
    passes = 0
    while relay.relay_once():
        passes += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    relay.store.close()
    left, queued = outbox_rows(db), ready(n)
    app.broker.purge(QUEUE)
    return {"rate": n / wall, "cpu_share": cpu / wall, "passes": passes, "relayed": relay.relayed,
            "outbox_left": left, "queued": queued, "fill_send_many_db_rate": fill_rate}


def db_claim_delete(db: str, n: int) -> dict[str, Any]:
    """The relay's own statements (claim 500 + delete them), no broker."""
    empty(db)
    fill(db, n)
    store = open_store(STORE_URLS[db])
    t0 = time.perf_counter()
    while rows := store.claim(CHUNK, 60.0):
        store.delete([r.id for r in rows])
    wall = time.perf_counter() - t0
    store.close()
    return {"rate": n / wall, "outbox_left": outbox_rows(db)}


def db_raw_insert_delete(db: str, n: int) -> dict[str, Any]:
    """Bare executemany INSERT of CHUNK rows per commit; bare DELETE of CHUNK ids per commit."""
    empty(db)
    p = mark(db)
    body = json.dumps({"args": [], "kwargs": {"n": 1}}).encode()
    row = ("01J0000000000000000000000", QUEUE, "bench.outbox_noop",
           '{"tw-task":"bench.outbox_noop"}', body, "application/json", time.time(), time.time())
    sql = (f"INSERT INTO {OUTBOX} (task_id, queue, task, headers, body, content_type, enqueued_at, "
           f"not_before) VALUES ({', '.join([p] * 8)})")
    conn = connect(db)
    t0 = time.perf_counter()
    for _ in range(0, n, CHUNK):
        executemany(conn, sql, [row] * CHUNK)
        conn.commit()
    insert_rate = n / (time.perf_counter() - t0)
    ids = [r[0] for r in execute(conn, f"SELECT id FROM {OUTBOX} ORDER BY id")]
    conn.commit()
    t0 = time.perf_counter()
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start:start + CHUNK]
        execute(conn, f"DELETE FROM {OUTBOX} WHERE id IN ({', '.join([p] * len(chunk))})", chunk)
        conn.commit()
    delete_rate = len(ids) / (time.perf_counter() - t0)
    conn.close()
    return {"insert_rate": insert_rate, "delete_rate": delete_rate}


def raw_publish(n: int, window: int, batch: bool) -> float:
    """py-amqp, persistent, confirmed: batches of ``window`` (all awaited) or a sliding window."""
    body = json.dumps({"args": [], "kwargs": {"n": 1}}).encode()
    conn = amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest")
    conn.connect()
    ch = conn.channel()
    ch.queue_declare(RAW_QUEUE, durable=True, auto_delete=False,
                     arguments={"x-queue-type": app.settings.queue_type})
    ch.queue_purge(RAW_QUEUE)
    ch.confirm_select()
    outstanding: collections.deque[int] = collections.deque()
    singles: set[int] = set()

    def settle(tag: int, multiple: bool) -> None:
        if multiple:
            while outstanding and outstanding[0] <= tag:
                singles.discard(outstanding.popleft())
        else:
            singles.add(tag)
            while outstanding and outstanding[0] in singles:
                singles.discard(outstanding.popleft())

    ch.events["basic_ack"].add(settle)
    t0 = time.perf_counter()
    for tag in range(1, n + 1):
        msg = amqp.Message(body, delivery_mode=2, content_type="application/json",
                           message_id=f"m{tag}")
        ch.basic_publish(msg, exchange="", routing_key=RAW_QUEUE)
        outstanding.append(tag)
        if (batch and len(outstanding) >= window) or (not batch and len(outstanding) > window):
            while len(outstanding) > (0 if batch else window - 1):
                conn.drain_events(timeout=30)
    while outstanding:
        conn.drain_events(timeout=30)
    rate = n / (time.perf_counter() - t0)
    ch.queue_purge(RAW_QUEUE)
    conn.close()
    return rate


def broker_limits(n: int) -> dict[str, Any]:
    app.declare([QUEUE])
    app.broker.purge(QUEUE)
    t0 = time.perf_counter()
    for start in range(0, n, CHUNK):
        noop.send_many([{"n": i} for i in range(start, min(n, start + CHUNK))])
    send_many_rate = n / (time.perf_counter() - t0)
    app.broker.purge(QUEUE)
    return {"raw_batch500": raw_publish(n, CHUNK, batch=True),
            "raw_window1000": raw_publish(n, 1000, batch=False),
            "tw_send_many_500": send_many_rate}


# --------------------------------------------------------------------------
# end to end: producer processes and the relay process
# --------------------------------------------------------------------------
def produce(db: str, n: int, start_at: float, rate: float = 0.0) -> dict[str, Any]:
    """``n`` transactions (business row + send(db=) + commit); at ``rate``/s if given.

    Returns the start and end times, and (paced) each job's commit time.
    """
    conn = connect(db)
    p = mark(db)
    insert = f"INSERT INTO bench_orders (amount, note) VALUES ({p}, {p})"
    base = os.getpid() * 1_000_000
    committed: dict[int, float] = {}
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.time()
    for i in range(n):
        if rate:
            due = t0 + i / rate
            while (left := due - time.time()) > 0:
                time.sleep(left)
        execute(conn, insert, (i, "order"))
        noop.options(db=conn).send(base + i)
        conn.commit()
        if rate:
            committed[base + i] = time.time()
    end = time.time()
    conn.close()
    return {"start": t0, "end": end, "n": n, "committed": committed}


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants that are alive."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(proc.name) == pid or int(stat[1]) == pid:
                total += cpu_of(int(proc.name))
    return total


def env(db: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{HERE}:{REPO}", "TASKWARREN_STORE_URL": STORE_URLS[db],
            "TASKWARREN_URL": URL, "PYTHONDONTWRITEBYTECODE": "1", **extra}


def run_producers(db: str, producers: int, n: int,
                  rate: float = 0.0) -> list[subprocess.Popen[str]]:
    start_at = time.time() + 1.0
    return [subprocess.Popen([sys.executable, __file__, "--producer", db, "--e2e-n", str(n),
                              "--start-at", str(start_at), "--lat-rate", str(rate)],
                             env=env(db), stdout=subprocess.PIPE, text=True)
            for _ in range(producers)]


def collect(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    out = []
    for proc in procs:
        stdout, _ = proc.communicate(timeout=600)
        if proc.returncode:
            raise SystemExit(f"a producer failed ({proc.returncode})")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def counted_relay(db: str) -> dict[str, Any]:
    """What ``taskwarren relay`` runs (``relay_for(app)``, ``Relay.run``), counting passes."""
    relay = relay_for(app)
    passes = [0, 0]  # with rows, without
    once = relay.relay_once

    def counting() -> int:
        moved = once()
        passes[0 if moved else 1] += 1
        return moved

    relay.relay_once = counting  # type: ignore[method-assign]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    c0, w0 = time.process_time(), time.perf_counter()
    relay.run(stop)
    relay.store.close()
    return {"passes": passes[0], "empty_passes": passes[1], "relayed": relay.relayed,
            "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0}


def end_to_end(db: str, producers: int, n: int) -> dict[str, Any]:
    total = producers * n
    empty(db)
    alone = collect(run_producers(db, producers, n))
    alone_rate = total / (max(r["end"] for r in alone) - min(r["start"] for r in alone))
    empty(db)
    relay = subprocess.Popen([sys.executable, __file__, "--relay", db], env=env(db),
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        time.sleep(1.5)  # connected and polling; not measured
        cpu0 = cpu_of(relay.pid)
        procs = run_producers(db, producers, n)
        results = collect(procs)
        store = open_store(STORE_URLS[db])
        while store.counts()[0]:
            time.sleep(0.005)
        done = time.time()
        store.close()
        start = min(r["start"] for r in results)
        relay_cpu = cpu_of(relay.pid) - cpu0
    finally:
        os.killpg(relay.pid, signal.SIGTERM)
        stdout, _ = relay.communicate(timeout=30)
    counts = json.loads(stdout.strip().splitlines()[-1])
    queued = ready(total)
    app.broker.purge(QUEUE)
    produced = total / (max(r["end"] for r in results) - start)
    return {"rate": total / (done - start), "producers_with_relay_rate": produced,
            "relay_passes": counts["passes"], "relay_rows_per_pass":
            counts["relayed"] / max(1, counts["passes"]), "relay_empty_passes":
            counts["empty_passes"],
            "producers_alone_rate": alone_rate, "relay_lag_after_last_commit_s":
            done - max(r["end"] for r in results),
            "relay_cpu_share": relay_cpu / (done - start), "queued": queued, "jobs": total}


# --------------------------------------------------------------------------
# latency: a real worker with its relay sidecar
# --------------------------------------------------------------------------
def latency(db: str, rate: float, seconds: float) -> dict[str, Any]:
    empty(db)
    ledger = tempfile.mktemp(prefix="tw-outbox-ledger-")
    worker = subprocess.Popen(
        [sys.executable, "-m", "taskwarren", "--log-format", "json", "worker", "outbox", "-c", "2"],
        env=env(db, TW_BENCH_LEDGER=ledger), stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        warm = collect(run_producers(db, 1, 20))[0]  # children and relay up, not measured
        deadline = time.time() + 30
        while len(read_ledger(ledger)) < warm["n"] and time.time() < deadline:
            time.sleep(0.05)
        if len(read_ledger(ledger)) < warm["n"]:
            raise SystemExit("the worker did not start")
        os.unlink(ledger)
        # One more second first: a relay that found nothing for a while polls only every
        # poll_s (0.5 s), so the jobs of the first second after idle are reported apart.
        n = int(rate * (seconds + 1.0))
        cpu0, t0 = children_cpu(worker.pid), time.time()
        result = collect(run_producers(db, 1, n, rate))[0]
        deadline = time.time() + 30
        while len(read_ledger(ledger)) < n and time.time() < deadline:
            time.sleep(0.05)
        pool_cpu = children_cpu(worker.pid) - cpu0
        wall = time.time() - t0
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    started = read_ledger(ledger)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(ledger)
    committed = {int(k): v for k, v in result["committed"].items()}
    steady_from = result["start"] + 1.0
    lat = sorted((started[k] - t) * 1000 for k, t in committed.items()
                 if k in started and t >= steady_from)
    first = [(started[k] - t) * 1000 for k, t in committed.items()
             if k in started and t < steady_from]
    app.broker.purge(QUEUE)
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": lat[-1] if lat else None,
            "first_second_max_ms": max(first, default=None),
            "jobs": n, "started": len(lat) + len(first),
            "achieved_rate": n / (result["end"] - result["start"]),
            "pool_cpu_share": pool_cpu / wall}


def read_ledger(path: str) -> dict[int, float]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return {}
    return {int(k): float(t) for k, t in (line.split() for line in lines)}


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


# --------------------------------------------------------------------------
# purge lag: what one long transaction elsewhere on the server does to a claim
# --------------------------------------------------------------------------
def claim_under_lag(db: str, n: int, hold: bool) -> dict[str, Any]:
    """Median time of a claim on an empty outbox after ``n`` rows went through it (claimed
    and deleted), with (``hold``) or without another connection holding a snapshot open
    meanwhile: InnoDB cannot purge the deleted index entries, PostgreSQL cannot vacuum
    the dead tuples, and every claim walks them."""
    empty(db)
    holder = None
    if hold:
        holder = connect(db)
        if db == "mysql":
            execute(holder, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
        else:
            execute(holder, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        execute(holder, "SELECT COUNT(*) FROM bench_orders")
    try:
        fill(db, n)
        store = open_store(STORE_URLS[db])
        while rows := store.claim(CHUNK, 60.0):
            store.delete([r.id for r in rows])
        if db == "mysql" and not hold:
            settle_purge(1000, 30.0)  # no snapshot: let purge do what it can
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            store.claim(CHUNK, 60.0)
            times.append((time.perf_counter() - t0) * 1000)
        store.close()
    finally:
        if holder is not None:
            holder.rollback()
            holder.close()
    return {"empty_claim_ms": statistics.median(times), "rows_churned": n, "snapshot_held": hold}


# --------------------------------------------------------------------------
# the baseline: a MariaDB jobs table polled with SKIP LOCKED
# --------------------------------------------------------------------------
JOBS_DDL = """CREATE TABLE IF NOT EXISTS bench_jobs (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    queue VARCHAR(64) NOT NULL,
    payload LONGTEXT NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    reserved_at DOUBLE NULL,
    available_at DOUBLE NOT NULL,
    KEY bench_jobs_queue (queue, reserved_at, id)
) ENGINE=InnoDB"""


def jobs_worker(per_claim: int, start_at: float) -> dict[str, Any]:
    """Claim ``per_claim`` rows (locked, skipping locked ones), commit, run, delete, commit."""
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="tw_bench_my",
                           autocommit=False)
    execute(conn, "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    while time.time() < start_at:
        time.sleep(0.001)
    t0, done = time.time(), 0
    while True:
        rows = execute(conn, "SELECT id, payload FROM bench_jobs WHERE queue = %s AND "
                             "reserved_at IS NULL AND available_at <= %s ORDER BY id LIMIT %s "
                             "FOR UPDATE SKIP LOCKED", ("default", time.time(), per_claim))
        if not rows:
            conn.commit()
            break
        ids = [r[0] for r in rows]
        marks = ", ".join(["%s"] * len(ids))
        execute(conn, f"UPDATE bench_jobs SET reserved_at = %s, attempts = attempts + 1 "
                      f"WHERE id IN ({marks})", (time.time(), *ids))
        conn.commit()
        for _, payload in rows:
            json.loads(payload)  # the job itself: a no-op
        execute(conn, f"DELETE FROM bench_jobs WHERE id IN ({marks})", ids)
        conn.commit()
        done += len(ids)
    end = time.time()
    conn.close()
    return {"start": t0, "end": end, "n": done}


def jobs_table(per_claim: int, n: int, workers: int = 2) -> dict[str, Any]:
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", database="tw_bench_my",
                           autocommit=False)
    execute(conn, JOBS_DDL)
    execute(conn, "DELETE FROM bench_jobs")
    payload = json.dumps({"job": "noop", "data": {"n": 1}})
    now = time.time()
    for start in range(0, n, CHUNK):
        executemany(conn, "INSERT INTO bench_jobs (queue, payload, available_at) VALUES "
                          "(%s, %s, %s)", [("default", payload, now)] * min(CHUNK, n - start))
        conn.commit()
    conn.close()
    start_at = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, __file__, "--jobs-worker", str(per_claim),
                               "--start-at", str(start_at)], env=env("mysql"),
                              stdout=subprocess.PIPE, text=True) for _ in range(workers)]
    results = collect(procs)
    done = sum(r["n"] for r in results)
    return {"rate": done / (max(r["end"] for r in results) - min(r["start"] for r in results)),
            "jobs": done, "workers": workers}


# --------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------
def load() -> float:
    return os.getloadavg()[0]


def profile(db: str, n: int) -> None:
    empty(db)
    fill(db, n)
    relay = relay_for(app, open_store(STORE_URLS[db]))
    app.declare([QUEUE])
    prof = cProfile.Profile()
    w0, c0 = time.perf_counter(), time.process_time()
    prof.enable()
    while relay.relay_once():
        pass
    prof.disable()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    relay.store.close()
    app.broker.purge(QUEUE)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    print(f"# profile {db}: {n} rows, {n / wall:.0f}/s under cProfile, wall {wall:.2f} s, "
          f"cpu {cpu:.2f} s ({cpu / wall:.0%})")
    print(out.getvalue())


def summarise(rows: list[dict[str, Any]]) -> None:
    groups: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    for r in rows:
        for k, v in r.items():
            if isinstance(v, (int, float)) and k not in ("rep", "load"):
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
    pairs = [("relay drain / claim+delete alone", "relay_drain", "rate", "db_claim_delete", "rate",
              True),
             ("relay drain / raw py-amqp batch500", "relay_drain", "rate", "broker",
              "raw_batch500", False),
             ("relay drain / raw py-amqp window1000", "relay_drain", "rate", "broker",
              "raw_window1000", False),
             ("relay drain / taskwarren send_many", "relay_drain", "rate", "broker",
              "tw_send_many_500", False),
             ("e2e / producers alone", "e2e", "rate", "e2e", "producers_alone_rate", True)]
    dbs = sorted({db for (_, db, _) in groups if db not in ("-",)})
    for label, s1, k1, s2, k2, same_db in pairs:
        for db in dbs:
            a, b = med(s1, db, k1), med(s2, db if same_db else "-", k2)
            if a is not None and b:
                print(f"| {label} | {db} | {a / b:.2f} |")
    jobs1 = med("jobs_1", "mysql", "rate")
    for db in dbs:
        a = med("e2e", db, "rate")
        if a is not None and jobs1:
            print(f"| e2e / MariaDB jobs table (1 row per claim) | {db} | {a / jobs1:.2f} |")
    loads = [r["load"] for r in rows]
    print(f"\nload average (1 min) during the run: {min(loads):.2f}-{max(loads):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dbs", default="mysql,postgresql,sqlite")
    parser.add_argument("--only", default="drain,e2e,latency,purge,jobs")
    parser.add_argument("--producers", type=int, default=2)
    parser.add_argument("--e2e-n", type=int, default=2000)
    parser.add_argument("--lat-rate", type=float, default=200.0)
    parser.add_argument("--lat-s", type=float, default=15.0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--profile", default=None, metavar="DB")
    parser.add_argument("--keep", action="store_true", help="leave the databases in place")
    # Internal: the child processes.
    parser.add_argument("--producer", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--relay", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--jobs-worker", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.producer:
        print(json.dumps(produce(args.producer, args.e2e_n, args.start_at, args.lat_rate)))
        return
    if args.relay:
        print(json.dumps(counted_relay(args.relay)))
        return
    if args.jobs_worker:
        print(json.dumps(jobs_worker(args.jobs_worker, args.start_at)))
        return
    dbs = [d for d in args.dbs.split(",") if d]
    only = set(args.only.split(","))
    create_databases(dbs + (["jobs"] if "jobs" in only else []))
    try:
        if args.profile:
            profile(args.profile, args.n)
            return
        run(args, dbs, only)
    finally:
        if not args.keep:
            drop_databases()
        app.close()
        if not args.keep:
            delete_queues()


def run(args: argparse.Namespace, dbs: list[str], only: set[str]) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out or WORK / f"outbox-{stamp}.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    rows: list[dict[str, Any]] = []

    def record(section: str, rep: int, fn: Callable[[], dict[str, Any]], db: str = "-") -> None:
        history = settle_purge() if db == "mysql" else None
        before = load()
        t0 = time.perf_counter()
        result = fn()
        if history is not None:
            result["innodb_history_before"] = history
        row = {"section": section, "db": db, "rep": rep, "load": max(before, load()),
               "commit": commit, "taskwarren": str(Path(taskwarren.__file__).parent), **result}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        brief = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()
                 if k not in ("commit", "taskwarren")}
        print(json.dumps(brief), file=sys.stderr, flush=True)

    for rep in range(args.reps):
        if "drain" in only:
            record("broker", rep, lambda: broker_limits(args.n))
            for db in dbs:
                record("relay_drain", rep, lambda db=db: relay_drain(db, args.n), db)
                record("db_claim_delete", rep, lambda db=db: db_claim_delete(db, args.n), db)
                record("db_raw", rep, lambda db=db: db_raw_insert_delete(db, args.n), db)
        if "e2e" in only:
            for db in dbs:
                record("e2e", rep, lambda db=db: end_to_end(db, args.producers, args.e2e_n), db)
        if "latency" in only:
            for db in dbs:
                record("latency", rep, lambda db=db: latency(db, args.lat_rate, args.lat_s), db)
        if "purge" in only:
            for db in [d for d in dbs if d != "sqlite"]:
                for hold in (False, True):
                    record("claim_lag_held" if hold else "claim_lag_none", rep,
                           lambda db=db, hold=hold: claim_under_lag(db, args.n, hold), db)
        if "jobs" in only:
            record("jobs_1", rep, lambda: jobs_table(1, 6000), "mysql")
            record("jobs_10", rep, lambda: jobs_table(10, 20_000), "mysql")
    print(f"results: {out}")
    summarise(rows)


if __name__ == "__main__":
    main()
