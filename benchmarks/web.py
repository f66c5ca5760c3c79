#!/usr/bin/env python
"""The dashboard's jobs page (issue 15) on a million jobs: p50/p95 against the raw SQL.

For each database (PostgreSQL, MariaDB, SQLite), in a database of its own (created and
dropped by ``tests.support.databases.fresh_database``):

1. ``taskwarren store init``'s tables, then ``--rows`` (1,000,000) rows in
   ``taskwarren_jobs`` by the fastest bulk path of each (PostgreSQL ``COPY``, MariaDB
   multi-row ``INSERT`` of 5,000 rows, its secondary indexes dropped for the fill and
   built again after it as they were, since row by row it takes minutes; SQLite
   ``executemany`` in one transaction), with a realistic mix: 24 tasks and 8 queues (one
   task and one queue rare, 0.1 %), seven states (80 % succeeded, 5 % dead with a 1 kB
   traceback, ...), created over 7 days in random order, ~120-byte arguments. Then the
   databases' statistics are refreshed.
2. ``--n`` (50) timed requests per query, after 5 to warm up, interleaved: the dashboard
   (``GET`` through Starlette's ``TestClient``, the whole stack: routing, the store
   query, Jinja rendering) and, right after each, the same SQL run directly on a driver
   connection of its own (the database's own limit, fetching the same 51 rows).

Queries: the first page of ``/jobs`` (50 newest), a page filtered by state (``dead``),
by a common task, by a rare task, by a rare queue, a deep keyset page (the cursor of
the 500,000th newest job), and ``/api/jobs/<id>`` (a random job each time; raw: the
same ``SELECT ... WHERE task_id = ?``). Also ``/api/overview`` (jobs per state over the
whole table; the page caches it 2 s, not here) against its ``GROUP BY``.

Usage: ``python benchmarks/web.py [--dbs postgresql,mysql,sqlite] [--rows 1000000]
[--n 50] [--out benchmarks/results/<date>/web.md]``. Prints and writes a Markdown table
(p50, p95 per query and database; web/raw ratios) and the query plans.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from starlette.testclient import TestClient

from taskwarren import Warren
from taskwarren.store import open_store
from taskwarren.web import app as web_app
from tests.support.databases import fresh_database

COLUMNS = ("task_id", "task", "queue", "state", "attempt", "version", "args", "error",
           "traceback", "worker", "created_at", "scheduled_at", "started_at", "finished_at",
           "duration_s", "updated_at")
SELECT = ("task_id, task, queue, state, attempt, created_at, scheduled_at, started_at, "
          "finished_at, duration_s, worker, error, traceback, args, unique_key, updated_at")
STATES = [("succeeded", 80), ("dead", 5), ("queued", 5), ("scheduled", 3), ("cancelled", 3),
          ("running", 2), ("retrying", 2)]
TASKS = [f"shop.task_{i:02d}" for i in range(23)]
QUEUES = [f"queue-{i}" for i in range(7)]
RARE_TASK, RARE_QUEUE = "shop.rare_report", "queue-rare"
PAGE = 50
TRACEBACK = ("Traceback (most recent call last):\n" + "  File \"/app/shop/tasks.py\", "
             "line 42, in ship\n    carrier.book(order)\n" * 12 + "RuntimeError: carrier down")


def rows(n: int, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """``n`` job rows (in :data:`COLUMNS` order), created over the last 7 days."""
    rng = random.Random(seed)
    now = time.time()
    states = [s for s, weight in STATES for _ in range(weight)]
    for i in range(n):
        state = rng.choice(states)
        rare = rng.random() < 0.001
        task = RARE_TASK if rare else rng.choice(TASKS)
        queue = RARE_QUEUE if rng.random() < 0.001 else rng.choice(QUEUES)
        created = now - rng.random() * 7 * 86400
        started = created + rng.random() * 5 if state not in ("queued", "scheduled") else None
        final = state in ("succeeded", "dead", "cancelled")
        finished = (started or created) + rng.random() if final else None
        dead = state in ("dead", "retrying")
        yield (f"{rng.getrandbits(128):032x}-{i}", task, queue, state, int(dead), 3,
               json.dumps({"order_id": i, "customer": f"c-{rng.randrange(10**6)}",
                           "lines": [rng.randrange(100) for _ in range(8)]}),
               "RuntimeError: carrier down" if dead else None, TRACEBACK if dead else None,
               f"worker-{rng.randrange(20)}:{rng.randrange(1000, 99999)}", created,
               created + 60 if state == "scheduled" else None, started, finished,
               (finished - started) if finished and started else None, finished or created)


def fill(url: str, dialect: str, n: int) -> float:
    """Create the tables and insert ``n`` rows; seconds it took."""
    store = open_store(url)
    store.init()
    store.close()
    started = time.perf_counter()
    conn = connect(url, dialect)
    cols = ", ".join(COLUMNS)
    if dialect == "postgresql":
        with conn.cursor() as cur, cur.copy(f"COPY taskwarren_jobs ({cols}) FROM STDIN") as cp:
            for row in rows(n):
                cp.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE taskwarren_jobs")  # statistics, as autovacuum makes
    elif dialect == "mysql":
        marks = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
        with conn.cursor() as cur:
            # InnoDB maintains seven secondary indexes row by row far slower than it
            # builds them sorted: take them off for the fill, put the same ones back.
            indexes = secondary_indexes(cur)
            cur.execute("ALTER TABLE taskwarren_jobs " + ", ".join(
                f"DROP INDEX {name}" for name in indexes))
            batch: list[tuple[Any, ...]] = []
            for row in rows(n):
                batch.append(row)
                if len(batch) == 5000:
                    cur.executemany(f"INSERT INTO taskwarren_jobs ({cols}) VALUES {marks}", batch)
                    conn.commit()
                    batch = []
            if batch:
                cur.executemany(f"INSERT INTO taskwarren_jobs ({cols}) VALUES {marks}", batch)
            conn.commit()
            cur.execute("ALTER TABLE taskwarren_jobs " + ", ".join(
                f"ADD {'' if non_unique else 'UNIQUE '}INDEX {name} ({', '.join(columns)})"
                for name, (non_unique, columns) in indexes.items()))
            cur.execute("ANALYZE TABLE taskwarren_jobs")
            cur.fetchall()
    else:
        conn.execute("PRAGMA synchronous = OFF")
        marks = ", ".join(["?"] * len(COLUMNS))
        conn.executemany(f"INSERT INTO taskwarren_jobs ({cols}) VALUES ({marks})", rows(n))
        conn.commit()
        conn.execute("ANALYZE")
        conn.commit()
    conn.close()
    return time.perf_counter() - started


def secondary_indexes(cur: Any) -> dict[str, tuple[bool, list[str]]]:
    """The secondary indexes of ``taskwarren_jobs`` (MySQL): name -> (non-unique, columns)."""
    cur.execute("SHOW INDEX FROM taskwarren_jobs")
    names = [d[0] for d in cur.description]
    found: dict[str, tuple[bool, list[str]]] = {}
    for row in sorted((dict(zip(names, r, strict=True)) for r in cur.fetchall()),
                      key=lambda r: (r["Key_name"], r["Seq_in_index"])):
        if row["Key_name"] != "PRIMARY":
            entry = found.setdefault(row["Key_name"], (bool(row["Non_unique"]), []))
            entry[1].append(row["Column_name"])
    return found


def connect(url: str, dialect: str) -> Any:
    """A driver connection of the benchmark's own to ``url``."""
    if dialect == "postgresql":
        import psycopg

        return psycopg.connect(url)
    if dialect == "mysql":
        import pymysql

        rest = url.split("://", 1)[1]
        user, _, hostpart = rest.rpartition("@")
        host_port, _, database = hostpart.partition("/")
        host, _, port = host_port.partition(":")
        return pymysql.connect(host=host, port=int(port or 3306), user=user or "root",
                               database=database, autocommit=False)
    return sqlite3.connect(url.removeprefix("sqlite:///"))


def list_sql(dialect: str, where: dict[str, Any], before: tuple[float, str] | None
             ) -> tuple[str, list[Any]]:
    """The SQL ``JobTable.list`` runs for these filters, with its parameters."""
    p = "?" if dialect == "sqlite" else "%s"
    clauses, params = [], []
    for column, value in where.items():
        clauses.append(f"{column} = {p}")
        params.append(value)
    if before is not None:
        clauses.append(f"created_at <= {p} AND (created_at < {p} OR task_id < {p})")
        params += [before[0], before[0], before[1]]
    clause = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return (f"SELECT {SELECT} FROM taskwarren_jobs{clause} ORDER BY created_at DESC, "
            f"task_id DESC LIMIT {p}", [*params, PAGE + 1])


def plan(conn: Any, dialect: str, sql: str, params: list[Any]) -> str:
    """How the database runs ``sql``, in a line or two."""
    cur = conn.cursor()
    if dialect == "postgresql":
        cur.execute("EXPLAIN " + sql, params)
        lines = [r[0].strip() for r in cur.fetchall()]
        return " / ".join(line for line in lines if "->" in line or line == lines[0])[:300]
    if dialect == "mysql":
        cur.execute("EXPLAIN " + sql, params)
        names = [d[0] for d in cur.description]
        r = dict(zip(names, cur.fetchone(), strict=True))
        return f"key={r.get('key')} rows={r.get('rows')} extra={r.get('Extra')}"
    found = cur.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return " / ".join(str(r[-1]) for r in found)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def measure(url: str, dialect: str, n: int, total: int) -> tuple[dict[str, dict[str, list[float]]],
                                                     dict[str, str]]:
    """Web and raw milliseconds per query, and each query's plan."""
    raw = connect(url, dialect)
    cur = raw.cursor()
    cur.execute(f"SELECT created_at, task_id FROM taskwarren_jobs ORDER BY created_at DESC, "
                f"task_id DESC LIMIT 1 OFFSET {min(500_000, total // 2)}")
    deep = tuple(cur.fetchone())
    cur.execute("SELECT task_id FROM taskwarren_jobs LIMIT 2000")
    ids = [r[0] for r in cur.fetchall()]
    raw.commit()
    app = Warren(url="memory://", store_url=url)
    client = TestClient(web_app(app, cache_s=0))
    from taskwarren.store.jobs import Job
    from taskwarren.web.paging import encode_cursor

    cursor = encode_cursor(Job(str(deep[1]), "", "", "", 0, float(deep[0]), None, None, None,
                               None, None, None, None, None, None, 0.0))
    queries: dict[str, tuple[str, dict[str, Any], tuple[float, str] | None]] = {
        "first page": ("/jobs", {}, None),
        "state=dead": ("/jobs?state=dead", {"state": "dead"}, None),
        "task (common)": (f"/jobs?task={TASKS[3]}", {"task": TASKS[3]}, None),
        "task (rare, 0.1 %)": (f"/jobs?task={RARE_TASK}", {"task": RARE_TASK}, None),
        "queue (rare, 0.1 %)": (f"/jobs?queue={RARE_QUEUE}", {"queue": RARE_QUEUE}, None),
        "deep keyset page (500,000th)": (f"/jobs?before={cursor}", {},
                                         (float(deep[0]), str(deep[1]))),
    }
    p = "?" if dialect == "sqlite" else "%s"
    results: dict[str, dict[str, list[float]]] = {}
    plans: dict[str, str] = {}
    rng = random.Random(3)

    def run_raw(sql: str, params: list[Any]) -> None:
        c = raw.cursor()
        c.execute(sql, params)
        c.fetchall()
        raw.commit()

    for name, (path, where, before) in queries.items():
        sql, params = list_sql(dialect, where, before)
        plans[name] = plan(raw, dialect, sql, params)
        raw.commit()
        web, direct = [], []
        for i in range(n + 5):
            w = timed(lambda: _ok(client.get(path)))  # noqa: B023
            r = timed(lambda: run_raw(sql, params))  # noqa: B023
            if i >= 5:
                web.append(w)
                direct.append(r)
        results[name] = {"web": web, "raw": direct}
    detail_sql = f"SELECT {SELECT} FROM taskwarren_jobs WHERE task_id = {p}"
    web, direct = [], []
    for i in range(n + 5):
        task_id = rng.choice(ids)
        w = timed(lambda: _ok(client.get(f"/api/jobs/{task_id}")))  # noqa: B023
        r = timed(lambda: run_raw(detail_sql, [task_id]))  # noqa: B023
        if i >= 5:
            web.append(w)
            direct.append(r)
    results["/api/jobs/<id>"] = {"web": web, "raw": direct}
    counts_sql = "SELECT state, COUNT(*) FROM taskwarren_jobs GROUP BY state"
    plans["/api/overview (counts)"] = plan(raw, dialect, counts_sql, [])
    raw.commit()
    web, direct = [], []
    for i in range(min(n, 20) + 2):
        w = timed(lambda: _ok(client.get("/api/overview")))
        r = timed(lambda: run_raw(counts_sql, []))
        if i >= 2:
            web.append(w)
            direct.append(r)
    results["/api/overview (counts)"] = {"web": web, "raw": direct}
    client.close()
    app.close()
    raw.close()
    return results, plans


def _ok(answer: Any) -> None:
    assert answer.status_code == 200, answer.text[:300]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dbs", default="postgresql,mysql,sqlite")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = Path(args.out or Path(__file__).parent / "results" / time.strftime("%Y-%m-%d") /
               "web.md")
    report: dict[str, Any] = {}
    for dialect in args.dbs.split(","):
        with tempfile.TemporaryDirectory() as tmp, fresh_database(dialect, Path(tmp)) as url:
            fill_s = fill(url, dialect, args.rows)
            print(f"{dialect}: {args.rows:,} rows in {fill_s:.1f} s", flush=True)
            results, plans = measure(url, dialect, args.n, args.rows)
            report[dialect] = {"fill_s": fill_s, "results": results, "plans": plans}
            for name, r in results.items():
                print(f"  {name:32} web p50 {pct(r['web'], .5):7.1f} p95 {pct(r['web'], .95):7.1f}"
                      f" | raw p50 {pct(r['raw'], .5):7.1f} p95 {pct(r['raw'], .95):7.1f} ms",
                      flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(report, args))
    out.with_suffix(".jsonl").write_text("\n".join(
        json.dumps({"db": db, "query": q, **r}) for db, d in report.items()
        for q, r in d["results"].items()) + "\n")
    print(f"wrote {out}")


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    """The results as the Markdown file."""
    dbs = list(report)
    lines = [f"# Dashboard jobs page on {args.rows:,} jobs ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/web.py --rows {args.rows} --n {args.n}`: {args.n} requests "
             "per query and database after 5 to warm up, each followed by the same SQL run "
             "directly on a driver connection (the database's own limit). Milliseconds; "
             "web = the whole request through Starlette's TestClient (routing, store query, "
             "Jinja rendering of 50 rows). Target: web p95 < 300 ms.", "",
             "Fill (rows inserted with every index; MariaDB's secondary indexes built "
             "after): " + ", ".join(f"{db} {report[db]['fill_s']:.0f} s" for db in dbs) + ".",
             ""]
    head = "| query | " + " | ".join(
        f"{db} web p50 | p95 | raw p50 | p95 | p95 ratio" for db in dbs) + " |"
    lines += [head, "|" + "---|" * (1 + 5 * len(dbs))]
    for name in report[dbs[0]]["results"]:
        cells = []
        for db in dbs:
            r = report[db]["results"][name]
            w50, w95, r50, r95 = (pct(r["web"], .5), pct(r["web"], .95), pct(r["raw"], .5),
                                  pct(r["raw"], .95))
            cells.append(f"{w50:.1f} | {w95:.1f} | {r50:.1f} | {r95:.1f} | "
                         f"{w95 / r95 if r95 else float('nan'):.1f}x")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Query plans", ""]
    for db in dbs:
        lines.append(f"**{db}**")
        lines.append("")
        for name, text in report[db]["plans"].items():
            lines.append(f"- {name}: `{text}`")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
