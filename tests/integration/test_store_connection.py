"""The relay's store connection outlives the server ending its session.

A server restart, a failover or a DBA's ``KILL`` ends the relay's session; no driver
reconnects by itself. Before the fix in ``Store._cursor`` PostgreSQL's relay died of a
raw ``psycopg.OperationalError`` and MariaDB's kept failing with its dead connection;
the legacy relay (``taskwarren relay --legacy``) had the same two faults of its own.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.errors import StoreError
from taskwarren.relays import legacy_relay_for
from taskwarren.store import open_store
from tests.chaos.chaostasks import record
from tests.integration.test_legacy_jobs_table import JOBS, Jobs
from tests.support.databases import connect, fresh_database, kill_store_sessions
from tests.support.workers import wait_until


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_a_store_whose_session_the_server_ended_fails_once_then_reconnects(
        dialect: str, tmp_path: Path) -> None:
    with fresh_database(dialect, tmp_path) as url:
        store = open_store(url)
        try:
            store.init()
            assert kill_store_sessions(url) >= 1  # a session just closed may linger in the list
            with pytest.raises(StoreError):
                store.claim(10, 5.0)  # the statement in flight is lost with the session
            app = connect(url)
            task_id = record.options(db=app).send(1, str(tmp_path / "ledger"))
            app.commit()
            app.close()
            assert [row.task_id for row in store.claim(10, 5.0)] == [task_id]
            assert store.counts() == (1, 0)
        finally:
            store.close()


def welcome(user_id: int) -> None:
    """A task that does nothing."""


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_a_legacy_relay_whose_session_the_server_ended_reconnects_and_relays_on(
        dialect: str, tmp_path: Path) -> None:
    with fresh_database(dialect, tmp_path) as url, contextlib.ExitStack() as cleanup:
        Jobs(url).conn.close()  # the application's table, made
        warren = Warren(url="memory://", store_url=url)
        cleanup.callback(warren.close)
        warren.task(name="send_welcome_email", queue="emails")(welcome)
        relay = legacy_relay_for(warren, JOBS, open_store(url))
        cleanup.callback(relay.store.close)
        relay.poll_s = 0.05  # waits out the outage in 0.2 s
        assert kill_store_sessions(url) >= 1  # a session just closed may linger in the list
        jobs = Jobs(url, create=False)
        cleanup.callback(jobs.conn.close)
        row = jobs.insert("welcome_email", '{"user_id": 1}')
        stop, died = threading.Event(), []

        def run() -> None:
            try:
                relay.run(stop)
            except BaseException as exc:
                died.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        try:
            # The first pass fails with the dead session; the next ones reconnect.
            wait_until(lambda: died or jobs.statuses()[row][0] == "queued", 20,
                       what="the row relayed")
        finally:
            stop.set()
            thread.join(10)
        assert died == []
        assert jobs.statuses()[row] == ("queued", None)
        assert relay.relayed == 1
