"""Job state under faults: every job's row ends in the state its life says, none is lost.

Issue 13's proof, with a job store on PostgreSQL, MariaDB and SQLite. A producer sends
mixed jobs (:mod:`tests.chaos.jobs_harness`): succeed, retry once then succeed, delayed
(a share cancelled with ``app.jobs.cancel_job`` before they are due), dead at once
(``retries=0``), dead after two retries. Two pools of real ``taskwarren worker``
processes record their starts and outcomes, each with the projector beside it, on the
suite's private RabbitMQ 3.10 node. Faults, in a shuffled round while the producer
sends: ``kill -9`` of a task child, of a projector sidecar, of a whole pool
(restarted), and the store taken away:

- PostgreSQL: a private server (``initdb``/``pg_ctl``, :mod:`tests.chaos.pgnode`)
  crashed (``pg_ctl stop -m immediate``) and started again 1.5-3 s later;
- MariaDB: the shared server is never restarted, so every session of the test's
  database is killed, three times 0.5 s apart (``kill_store_sessions``);
- SQLite: another connection holds the write lock (``BEGIN EXCLUSIVE``) for 1.5-3 s.

After the drain and the projector catching up, ``taskwarren_jobs`` must hold exactly
the truth (per-state counts and each row), nothing may be left running or queued, no
job whose cancel returned ``done=True`` may have run while the store was up, and every
job meant to succeed must have run.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.harness import tasks_per_scenario
from tests.chaos.history import Row
from tests.chaos.jobs_harness import JobScenario
from tests.chaos.nodes import RabbitNode
from tests.chaos.pgnode import PrivatePostgres, postgres_bin
from tests.support.databases import fresh_database, kill_store_sessions

pytestmark = [pytest.mark.chaos, pytest.mark.rabbitmq(releases=("3.10",)), pytest.mark.slow,
              pytest.mark.timeout(240)]

#: Jobs each run sends: 600 in the short run, scaled by ``TW_CHAOS_N``.
JOBS = max(200, tasks_per_scenario() * 600 // 2000)
#: Seconds the producer spreads its sends over.
WINDOW_S = max(12.0, JOBS / 50)


class Store:
    """A job store of one dialect, and how to take it away for a while."""

    def __init__(self, url: str, down: Callable[[], str], stays_up: bool) -> None:
        self.url = url
        self.down = down
        #: ``down`` leaves it reachable: a new connection works at once.
        self.stays_up = stays_up


@pytest.fixture(params=["postgresql", "mysql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    dialect = request.param
    if dialect == "postgresql":
        if postgres_bin() is None:
            pytest.skip("no PostgreSQL programs to run a private server")
        server = PrivatePostgres()
        try:
            server.init()

            def restart() -> str:
                down_s = server.restart(1.5 + time.time() % 1.5)
                return f"server crashed, up again after {down_s:.1f}s"

            yield Store(server.url, restart, stays_up=False)
        finally:
            server.destroy()
        return
    with fresh_database(dialect, tmp_path) as url:
        if dialect == "mysql":
            def kill_sessions() -> str:
                killed = []
                for _ in range(3):
                    killed.append(kill_store_sessions(url))
                    time.sleep(0.5)
                return f"sessions killed {killed}"

            yield Store(url, kill_sessions, stays_up=True)
        else:
            def lock() -> str:
                hold_s = 1.5 + time.time() % 1.5
                conn = sqlite3.connect(url[len("sqlite:///"):], timeout=30,
                                       isolation_level=None)
                try:
                    conn.execute("BEGIN EXCLUSIVE")
                    time.sleep(hold_s)
                    conn.execute("COMMIT")
                finally:
                    conn.close()
                return f"write lock held {hold_s:.1f}s"

            yield Store(url, lock, stays_up=True)


def test_job_rows_tell_the_truth_after_worker_projector_and_store_faults(
        private_node: RabbitNode, store: Store, tmp_path: Path,
        chaos_results: list[Row]) -> None:
    dialect = store.url.split(":", 1)[0]
    with JobScenario(f"J job state: kills, projector kill, store away [{dialect}]",
                     private_node.url, private_node.url, tmp_path, chaos_results,
                     store.url, JOBS, store.down, store.stays_up) as s:
        s.start_pool("a")
        s.start_pool("b")
        s.wait_consuming(4)
        kinds: list[Callable[[], None]] = [
            s.kill_task_child, s.kill_projector, s.take_store_away,
            lambda: s.kill_pool(s.rng.choice("ab"), down_s=s.rng.uniform(0.2, 1.0))]
        round_: list[Callable[[], None]] = []

        def next_fault() -> None:
            if not round_:
                round_.extend(s.rng.sample(kinds, len(kinds)))
            round_.pop()()

        s.start_producer(window_s=WINDOW_S)
        s.inject_until_produced(next_fault, every_s=(0.6, 1.5), min_faults=2 * len(kinds))
        s.drain()
        s.settle_rows()
        s.quiesce()
        if s.events_waiting():
            s.history.note(f"{s.events_waiting()} job event(s) waiting after the pools "
                           "stopped: a pool started to project them")
            s.start_pool("projector", concurrency=1)
            s.settle_rows()
            s._stop_pool("projector", s.pools.pop("projector"), "after projecting")
        s.judge(s.rows())
