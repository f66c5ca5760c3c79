"""The outbox end to end: the application's transaction, ``taskwarren worker`` with its
relay, RabbitMQ, the task. On PostgreSQL, MariaDB and the embedded SQLite store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.store import open_store
from tests.integration import twtasks
from tests.support.databases import connect
from tests.support.rabbit import queue_counts
from tests.support.workers import ROOT, Ledger, Pool, wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
MODULE = "tests.integration.twtasks"


def test_committed_sends_run_through_the_workers_relay_and_rolled_back_ones_never(
    store_url: str, rabbit_url: str, queue: str, ledger: Ledger, tmp_path: Path
) -> None:
    store = open_store(store_url)
    store.init()
    app = Warren(url=rabbit_url)
    work = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    conn = connect(store_url)
    work.options(db=conn).send_many([{"n": i, "ledger": str(ledger)} for i in range(50)])
    conn.commit()
    work.options(db=conn).send_many([{"n": i, "ledger": str(ledger)} for i in range(50, 60)])
    conn.rollback()
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log",
                env={"TASKWARREN_STORE_URL": store_url})
    try:
        wait_until(lambda: len(ledger.count("end")) >= 50, 30, what="50 committed tasks")
        # Sent while the pool runs: the relay beside it picks them up.
        work.options(db=conn).send(60, str(ledger))
        conn.commit()
        wait_until(lambda: 60 in ledger.count("end"), 30, what="the task sent later")
        assert pool.stop() == 0
    finally:
        pool.kill()
        conn.close()
        app.close()
    assert set(ledger.count("end")) == {*range(50), 60}
    assert store.counts() == (0, 0)
    assert queue_counts(queue, rabbit_url)[0] == 0
    store.close()


def test_taskwarren_relay_on_its_own_publishes_what_was_committed(
    store_url: str, rabbit_url: str, queue: str, ledger: Ledger
) -> None:
    store = open_store(store_url)
    store.init()
    app = Warren(url=rabbit_url)
    work = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    app.declare([queue])  # so that its depth can be read before the relay has published
    conn = connect(store_url)
    work.options(db=conn).send_many([{"n": i, "ledger": str(ledger)} for i in range(20)])
    conn.commit()
    conn.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKWARREN_")}
    relay = subprocess.Popen(
        [sys.executable, "-m", "taskwarren", "relay", "--url", rabbit_url, "--store-url",
         store_url], env={**env, "PYTHONPATH": str(ROOT)}, cwd=str(ROOT),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: queue_counts(queue, rabbit_url)[0] == 20, 30,
                   what="20 messages on the queue")
        wait_until(lambda: store.counts() == (0, 0), 10, what="an empty outbox")
    finally:
        relay.terminate()
        _, err = relay.communicate(timeout=30)
        app.close()
        store.close()
    assert relay.returncode == 0, err.decode()[-2000:]
