"""A stopping pool stops its tasks first and its sidecars after them: the projector
applies the events of the tasks' last moments before the pool exits.

On the embedded broker (SQLite): no RabbitMQ needed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.store import open_store
from tests.integration import twtasks
from tests.support.workers import Ledger, Pool, wait_until

MODULE = "tests.integration.twtasks"


@pytest.mark.parametrize("how", ["sigterm-to-the-supervisor", "ctrl-c-to-the-group",
                                 "sigterm-to-the-group"])
def test_a_job_that_ends_during_the_stop_shows_succeeded_once_the_pool_has_exited(
        tmp_path: Path, ledger: Ledger, how: str) -> None:
    broker_url = f"sqlite:///{tmp_path / 'broker.db'}"
    jobs_db = tmp_path / "jobs.db"
    store_url = f"sqlite:///{jobs_db}"
    store = open_store(store_url)
    store.init()
    store.close()
    queue = "twtest-stop"
    app = Warren(url=broker_url, store_url=store_url, jobs=True)
    work = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    pool = Pool(MODULE, [queue], broker_url, concurrency=1, log_path=tmp_path / "w.log",
                env={"TASKWARREN_STORE_URL": store_url, "TASKWARREN_JOBS": "1"})
    try:
        task_id = work.send(1, str(ledger), 2.0)
        wait_until(lambda: ledger.count("start")[1] == 1, 30, what="the task running")
        # The stop arrives while the task runs: it ends, and says so, after the signal.
        if how == "sigterm-to-the-supervisor":  # as `docker stop` and Kubernetes do
            pool.signal(signal.SIGTERM)
        elif how == "ctrl-c-to-the-group":  # a terminal's reaches every process of it
            os.killpg(pool.pid, signal.SIGINT)
        else:  # as systemd's default KillMode=control-group does
            os.killpg(pool.pid, signal.SIGTERM)
        assert pool.proc.wait(60) == 0
    finally:
        pool.kill()
        app.close()
    assert ledger.count("end") == {1: 1}
    with contextlib.closing(sqlite3.connect(jobs_db)) as conn:
        rows = conn.execute("SELECT state FROM taskwarren_jobs WHERE task_id = ?",
                            (task_id,)).fetchall()
    assert rows == [("succeeded",)], pool.log_text()[-3000:]
