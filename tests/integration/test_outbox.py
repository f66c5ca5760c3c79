"""The transactional outbox on the real PostgreSQL and MariaDB of this machine, and SQLite.

The relay publishes to the in-memory broker here (``join`` runs what it published), so
each test reads as: the application's transaction did X, the relay ran, these calls ran.
End-to-end runs through RabbitMQ and ``taskwarren worker`` are at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskwarren import Warren
from taskwarren.errors import ArgumentsError, StoreNotInitializedError
from taskwarren.relays import relay_for
from taskwarren.store import Store, open_store
from taskwarren.store.outbox import OUTBOX_DELAY_THRESHOLD_S
from taskwarren.store.schema import OUTBOX, REJECTED
from taskwarren.testing import join
from tests.support.databases import connect, sqlalchemy_url

ROOT = Path(__file__).resolve().parents[2]


class Orders:
    """An application: its tasks on the in-memory broker, and what they ran."""

    def __init__(self, store_url: str) -> None:
        self.ran: list[int] = []
        self.app = Warren(url="memory://", store_url=store_url)

        def analyse(order_id: int) -> None:
            self.ran.append(order_id)

        self.analyse = self.app.task(analyse, name="orders.analyse", queue="orders")

    def relay_and_run(self, store: Store) -> list[int]:
        relay = relay_for(self.app, store)
        while relay.relay_once():
            pass
        join(self.app)
        return sorted(self.ran)


@pytest.fixture
def orders(store_url: str, store: Store) -> Iterator[Orders]:
    orders = Orders(store_url)
    yield orders
    orders.app.close()


def _create_orders_table(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, note VARCHAR(50))")
    conn.commit()


def test_a_committed_send_runs_and_a_rolled_back_one_never_does(
    store_url: str, store: Store, orders: Orders
) -> None:
    conn = connect(store_url)
    _create_orders_table(conn)
    cur = conn.cursor()
    cur.execute("INSERT INTO orders (id, note) VALUES (1, 'kept')")
    orders.analyse.options(db=conn).send(1)
    conn.commit()
    cur = conn.cursor()
    cur.execute("INSERT INTO orders (id, note) VALUES (2, 'dropped')")
    orders.analyse.options(db=conn).send_many([{"order_id": 2}, {"order_id": 3}])
    conn.rollback()
    conn.close()
    assert orders.relay_and_run(store) == [1]
    assert store.counts() == (0, 0)


def test_a_send_is_invisible_to_the_relay_until_its_transaction_commits(
    store_url: str, store: Store, orders: Orders
) -> None:
    conn = connect(store_url)
    orders.analyse.options(db=conn).send(7)
    relay = relay_for(orders.app, store)
    assert relay.relay_once() == 0  # still uncommitted: nothing runs early
    join(orders.app)
    assert orders.ran == []
    conn.commit()
    conn.close()
    assert orders.relay_and_run(store) == [7]


def test_two_transactions_that_commit_out_of_id_order_both_run(
    store_url: str, store: Store, orders: Orders
) -> None:
    if store_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer at a time: ids cannot commit out of order")
    first, second = connect(store_url), connect(store_url)
    orders.analyse.options(db=first).send(1)   # takes the lower id, commits last
    orders.analyse.options(db=second).send(2)
    second.commit()
    assert orders.relay_and_run(store) == [2]
    first.commit()
    assert orders.relay_and_run(store) == [1, 2]
    first.close()
    second.close()


def test_wrong_arguments_fail_at_send_before_anything_is_written(
    store_url: str, store: Store, orders: Orders
) -> None:
    conn = connect(store_url)
    with pytest.raises(ArgumentsError, match="order_id"):
        orders.analyse.options(db=conn).send("not a number")  # type: ignore[arg-type]
    with pytest.raises(ArgumentsError, match="order_id"):
        orders.analyse.options(db=conn).send_many([{"order_id": 1}, {"order_id": "x"}])
    conn.commit()
    conn.close()
    assert store.counts() == (0, 0)


def test_a_db_object_of_an_unsupported_kind_is_a_type_error(orders: Orders) -> None:
    with pytest.raises(TypeError, match="sqlite3, psycopg"):
        orders.analyse.options(db=object()).send(1)
    with pytest.raises(TypeError, match="got dict"):
        orders.analyse.options(db={"host": "db"})


def test_a_missing_outbox_table_names_taskwarren_store_init(store_url: str) -> None:
    app = Orders(store_url)  # no store.init(): the database is empty
    conn = connect(store_url)
    with pytest.raises(StoreNotInitializedError, match="taskwarren store init"):
        app.analyse.options(db=conn).send(1)
    conn.rollback()
    conn.close()
    if not store_url.startswith("sqlite"):  # the embedded SQLite store makes its tables
        with pytest.raises(StoreNotInitializedError, match="taskwarren store init"):
            relay_for(app.app)


def test_a_row_that_does_not_decode_is_moved_aside_and_the_relay_carries_on(
    store_url: str, store: Store, orders: Orders
) -> None:
    conn = connect(store_url)
    orders.analyse.options(db=conn).send_many([{"order_id": 1}, {"order_id": 2}])
    conn.commit()
    cur = conn.cursor()
    mark = "?" if store_url.startswith("sqlite") else "%s"
    cur.execute(f"UPDATE {OUTBOX} SET headers = {mark} WHERE id = (SELECT MIN(id) FROM "
                f"(SELECT id FROM {OUTBOX}) AS x)", ("not json <script>",))
    conn.commit()
    assert orders.relay_and_run(store) == [2]
    assert store.counts() == (0, 1)
    cur = conn.cursor()
    cur.execute(f"SELECT task, reason FROM {REJECTED}")
    [(task, reason)] = cur.fetchall()
    assert task == "orders.analyse"
    assert reason.startswith("headers are not JSON")
    conn.close()


def test_two_relays_claim_disjoint_rows_and_a_dead_relays_claim_runs_out(
    store_url: str, store: Store, orders: Orders
) -> None:
    conn = connect(store_url)
    orders.analyse.options(db=conn).send_many([{"order_id": i} for i in range(10)])
    conn.commit()
    conn.close()
    other = open_store(store_url)
    a = store.claim(4, lease_s=60)
    b = other.claim(4, lease_s=60)
    assert len(a) == len(b) == 4
    assert not {r.task_id for r in a} & {r.task_id for r in b}
    # A relay that claimed and died: its rows come back once the lease has run out.
    dead = other.claim(10, lease_s=0.3)
    assert len(dead) == 2
    assert store.claim(10, lease_s=60) == []
    time.sleep(0.4)
    assert {r.task_id for r in store.claim(10, lease_s=60)} == {r.task_id for r in dead}
    other.close()


def test_a_long_delay_waits_in_the_outbox_and_a_short_one_on_the_broker(
    store_url: str, store: Store, orders: Orders
) -> None:
    conn = connect(store_url)
    orders.analyse.options(db=conn, delay=OUTBOX_DELAY_THRESHOLD_S + 60).send(1)
    orders.analyse.options(db=conn, delay=30).send(2)
    conn.commit()
    conn.close()
    relay = relay_for(orders.app, store)
    assert relay.relay_once() == 1  # only the short one is due
    assert store.counts() == (1, 0)
    stats = orders.app.broker.stats("orders")  # type: ignore[attr-defined]
    assert stats.delayed == 1 and stats.ready == 0


def test_sqlalchemy_sessions_and_connections_enqueue_in_their_transaction(
    store_url: str, store: Store, orders: Orders
) -> None:
    import sqlalchemy
    from sqlalchemy.orm import Session

    engine = sqlalchemy.create_engine(sqlalchemy_url(store_url))
    with Session(engine) as session, session.begin():
        orders.analyse.options(db=session).send(1)
    with Session(engine) as session:
        session.begin()
        orders.analyse.options(db=session).send(2)
        session.rollback()
    with engine.begin() as connection:
        orders.analyse.options(db=connection).send_many([{"order_id": 3}])
    engine.dispose()
    assert orders.relay_and_run(store) == [1, 3]


def test_store_init_is_idempotent_and_prints_its_ddl(store_url: str) -> None:
    env = {"TASKWARREN_STORE_URL": store_url, "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        done = _cli(["store", "init"], env)
        assert done.returncode == 0, done.stderr
        assert "tables are ready" in done.stdout
    printed = _cli(["store", "init", "--sql"], env)
    assert printed.returncode == 0
    assert f"CREATE TABLE IF NOT EXISTS {OUTBOX}" in printed.stdout
    assert "(not_before, id)" in printed.stdout
    status = _cli(["store", "status"], env)
    assert "0 waiting, 0 rejected" in status.stdout


def test_a_worker_whose_store_has_no_tables_stops_at_start_with_one_line(
    store_url: str,
) -> None:
    if store_url.startswith("sqlite"):
        pytest.skip("the embedded store's tables are made by the worker itself")
    env = {"TASKWARREN_STORE_URL": store_url, "TASKWARREN_URL": "memory://",
           "PYTHONPATH": str(ROOT)}
    done = _cli(["worker", "tests.integration.twtasks", "-c", "1"], env)
    assert done.returncode == 1
    assert "taskwarren store init" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_store_url_that_does_not_connect_is_one_clear_line_without_its_password() -> None:
    env = {"TASKWARREN_STORE_URL": "postgresql://app:s3cr%2Ft@127.0.0.1:1/app",
           "PYTHONPATH": str(ROOT)}
    done = _cli(["store", "status"], env)
    assert done.returncode == 1
    assert "cannot connect to the job store at postgresql://app:***@127.0.0.1:1/app" \
        in done.stderr
    assert "s3cr" not in done.stderr + done.stdout
    bad = _cli(["store", "status"], {**env, "TASKWARREN_STORE_URL": "redis://x:pw@h/0"})
    assert bad.returncode == 1
    assert "use postgresql://, mysql://" in bad.stderr
    assert "pw" not in bad.stderr


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("TASKWARREN_")}
    return subprocess.run([sys.executable, "-m", "taskwarren", *args], env={**full, **env},
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT))


def json_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_on_the_embedded_sqlite_broker_the_store_is_its_own_file_and_the_worker_relays(
    tmp_path: Path,
) -> None:
    from tests.integration import twtasks
    from tests.support.workers import Ledger, Pool, wait_until

    path = tmp_path / "app.db"
    url = f"sqlite:///{path}"
    ledger = Ledger(tmp_path / "ledger.txt")
    app = Warren(url=url)
    work = app.task(twtasks.work.fn, name=twtasks.work.name, queue="outbox-embedded")
    pool = Pool("tests.integration.twtasks", ["outbox-embedded"], url, concurrency=1,
                log_path=tmp_path / "w.log")
    try:
        # The worker's relay makes the embedded store's tables: no `store init` needed.
        wait_until(lambda: _has_outbox(path), 20, what="the outbox table")
        conn = connect(url)
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO orders (id) VALUES (1)")
        work.options(db=conn).send(1, str(ledger))
        conn.commit()
        conn.execute("INSERT INTO orders (id) VALUES (2)")
        work.options(db=conn).send(2, str(ledger))
        conn.rollback()
        wait_until(lambda: 1 in ledger.count("end"), 20, what="the committed task")
        assert pool.stop() == 0
    finally:
        pool.kill()
        app.close()
    assert dict(ledger.count("end")) == {1: 1}
    assert conn.execute(f"SELECT COUNT(*) FROM {OUTBOX}").fetchone() == (0,)
    conn.close()


def _has_outbox(path: Path) -> bool:
    import sqlite3

    if not path.exists():
        return False
    conn = sqlite3.connect(path)
    try:
        found = conn.execute("SELECT name FROM sqlite_master WHERE name = ?", (OUTBOX,))
        return found.fetchone() is not None
    finally:
        conn.close()


def test_the_claim_walks_the_due_index_and_never_sorts(
    store_url: str, store: Store, orders: Orders
) -> None:
    # MySQL locks every row a filesort reads (a second relay then gets nothing), and a
    # sort or a full scan per claim makes a large outbox slow to drain.
    conn = connect(store_url)
    orders.analyse.options(db=conn).send_many([{"order_id": i} for i in range(3000)])
    conn.commit()
    cur = conn.cursor()
    now = time.time() + 1
    if store_url.startswith("postgresql"):
        from taskwarren.store.database import PostgresStore

        cur.execute(f"ANALYZE {OUTBOX}")
        cur.execute("EXPLAIN " + PostgresStore.claim_sql(), (now + 60, now, now, 500))
        plan = "\n".join(r[0] for r in cur.fetchall())
        assert f"Index Scan using {OUTBOX}_due" in plan, plan
        assert f"Index Scan using {OUTBOX}_pkey" in plan, plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan
    elif store_url.startswith("mysql"):
        from taskwarren.store.database import MySQLStore

        cur.execute(f"ANALYZE TABLE {OUTBOX}")
        cur.fetchall()
        cur.execute("EXPLAIN " + MySQLStore.claim_select_sql(), (now, now, 500))
        [row] = cur.fetchall()
        assert row[5] == f"{OUTBOX}_due", row
        assert "filesort" not in (row[9] or ""), row
    else:
        from taskwarren.store.database import SQLiteStore

        cur.execute("EXPLAIN QUERY PLAN " + SQLiteStore.claim_select_sql(), (now, now, 500))
        plan = " ".join(str(r[-1]) for r in cur.fetchall())
        assert f"USING INDEX {OUTBOX}_due" in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    conn.close()


def test_a_connection_in_autocommit_mode_outside_a_transaction_is_refused(
    store_url: str, store: Store, orders: Orders
) -> None:
    # Its row would commit on its own at once, whatever became of the application's data.
    if store_url.startswith("sqlite"):
        conn = connect(store_url)
        conn.isolation_level = None
    elif store_url.startswith("postgresql"):
        conn = connect(store_url)
        conn.autocommit = True
    else:
        conn = connect(store_url)
        conn.autocommit(True)
    try:
        with pytest.raises(TypeError, match="autocommit mode with no transaction open"):
            orders.analyse.options(db=conn).send(1)
        cur = conn.cursor()
        cur.execute("BEGIN")  # an explicit transaction: taken
        orders.analyse.options(db=conn).send(2)
        cur.execute("ROLLBACK")
    finally:
        conn.close()
    assert store.counts() == (0, 0)


def test_relays_claiming_at_the_same_moment_take_disjoint_rows(
    store_url: str, store: Store, orders: Orders
) -> None:
    conn = connect(store_url)
    orders.analyse.options(db=conn).send_many([{"order_id": i} for i in range(600)])
    conn.commit()
    conn.close()
    stores = [open_store(store_url) for _ in range(3)]
    taken: list[list[str]] = [[] for _ in stores]
    start = threading.Barrier(len(stores))

    def drain(i: int) -> None:
        start.wait()
        while rows := stores[i].claim(25, lease_s=300):
            taken[i].extend(r.task_id for r in rows)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(stores))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for s in stores:
            s.close()
    every = [task_id for ids in taken for task_id in ids]
    assert len(every) == 600
    assert len(set(every)) == 600  # no row claimed twice under its lease


def test_a_sqlalchemy_engine_in_autocommit_mode_is_refused(
    store_url: str, store: Store, orders: Orders
) -> None:
    import sqlalchemy
    from sqlalchemy.orm import Session

    engine = sqlalchemy.create_engine(sqlalchemy_url(store_url), isolation_level="AUTOCOMMIT")
    try:
        with Session(engine) as session, pytest.raises(TypeError, match="autocommit mode"):
            orders.analyse.options(db=session).send(1)
        with engine.connect() as conn, pytest.raises(TypeError, match="autocommit mode"):
            orders.analyse.options(db=conn).send(2)
    finally:
        engine.dispose()
    assert store.counts() == (0, 0)
