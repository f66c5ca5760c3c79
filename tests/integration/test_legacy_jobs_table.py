"""Relaying a team's own jobs table: rows their code INSERTs become taskwarren tasks.

The table is a typical MySQL ``jobs`` table (id, type, JSON payload, status, run_at,
last_error), created and filled by plain SQL on SQLite, PostgreSQL and MariaDB; the relay
publishes to the in-memory broker (and, in the last test, to the real RabbitMQ, with a
real ``taskwarren worker`` running the tasks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskwarren import Warren
from taskwarren.brokers.base import Ack
from taskwarren.errors import ConfigurationError
from taskwarren.message import Envelope
from taskwarren.relays import legacy_relay_for
from taskwarren.store import open_store
from taskwarren.store.legacy import LEASES, LegacySource, LegacyTable
from taskwarren.store.relay import Relay
from taskwarren.testing import join
from tests.support.databases import connect, fresh_database
from tests.support.rabbit import delete_queues, require_rabbitmq, unique_queue
from tests.support.workers import ROOT, Ledger, Pool, wait_until

JOBS_DDL = {
    "mysql": """CREATE TABLE jobs (
        id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
        type VARCHAR(64) NOT NULL,
        payload TEXT NOT NULL,
        status VARCHAR(16) NOT NULL DEFAULT 'pending',
        run_at DATETIME NULL,
        last_error VARCHAR(255) NULL,
        created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        KEY jobs_status (status, run_at)) ENGINE=InnoDB""",
    "postgresql": """CREATE TABLE jobs (
        id BIGSERIAL PRIMARY KEY,
        type VARCHAR(64) NOT NULL,
        payload TEXT NOT NULL,
        status VARCHAR(16) NOT NULL DEFAULT 'pending',
        run_at TIMESTAMP NULL,
        last_error VARCHAR(255) NULL,
        created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)""",
    "sqlite": """CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        type VARCHAR(64) NOT NULL,
        payload TEXT NOT NULL,
        status VARCHAR(16) NOT NULL DEFAULT 'pending',
        run_at TEXT NULL,
        last_error VARCHAR(255) NULL,
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)""",
}

#: SQL for "an hour from now" and "an hour ago", in each database's own clock.
IN_AN_HOUR = {"mysql": "NOW() + INTERVAL 1 HOUR",
              "postgresql": "CURRENT_TIMESTAMP + INTERVAL '1 hour'",
              "sqlite": "datetime('now', '+1 hour')"}
AN_HOUR_AGO = {"mysql": "NOW() - INTERVAL 1 HOUR",
               "postgresql": "CURRENT_TIMESTAMP - INTERVAL '1 hour'",
               "sqlite": "datetime('now', '-1 hour')"}

JOBS = LegacyTable("jobs", task="type", args="payload", done="queued", error="last_error",
                   run_at="run_at", task_names={"welcome_email": "send_welcome_email",
                                                "invoice_pdf": "render_invoice",
                                                "retired_report": "no_such_task"})


def dialect_of(url: str) -> str:
    return url.split(":", 1)[0]


class Jobs:
    """The application's side: plain SQL on its own connection."""

    def __init__(self, url: str, payload_type: str = "TEXT", *, create: bool = True) -> None:
        self.dialect = dialect_of(url)
        self.conn = connect(url)
        self.mark = "?" if self.dialect == "sqlite" else "%s"
        if create:
            try:
                self.sql(JOBS_DDL[self.dialect].replace("payload TEXT",
                                                        f"payload {payload_type}"))
            except BaseException:
                self.conn.close()
                raise

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.cursor()
        try:
            cur.execute(statement, params)
            rows = cur.fetchall() if cur.description else []
        finally:
            cur.close()
        self.conn.commit()
        return [tuple(r) for r in rows]

    def insert(self, kind: str, payload: str, run_at: str | None = None) -> int:
        """``INSERT INTO jobs`` as their code does it; the new row's id."""
        m = self.mark
        when = run_at or "NULL"
        self.sql(f"INSERT INTO jobs (type, payload, status, run_at) "
                 f"VALUES ({m}, {m}, 'pending', {when})", (kind, payload))
        return int(self.sql("SELECT MAX(id) FROM jobs")[0][0])

    def statuses(self) -> dict[int, tuple[str, str | None]]:
        return {int(i): (s, e) for i, s, e in
                self.sql("SELECT id, status, last_error FROM jobs ORDER BY id")}

    def leases(self) -> int:
        return int(self.sql(f"SELECT COUNT(*) FROM {LEASES}")[0][0])

    def expire_leases(self) -> None:
        """Let every lease run out now, as time would (no racing a short lease)."""
        self.sql(f"UPDATE {LEASES} SET claimed_until = {self.mark}", (time.time() - 1,))


@pytest.fixture
def new_jobs(store_url: str) -> Iterator[Callable[..., Jobs]]:
    """Makes the jobs table (payload of the given type); closes its connections after."""
    made: list[Jobs] = []

    def make(payload_type: str = "TEXT") -> Jobs:
        made.append(Jobs(store_url, payload_type))
        return made[-1]

    yield make
    for table in made:
        table.conn.close()


@pytest.fixture
def jobs(new_jobs: Callable[..., Jobs]) -> Jobs:
    return new_jobs()


@pytest.fixture
def app(store_url: str) -> Iterator[tuple[Warren, list[tuple[str, Any]]]]:
    """An app on the in-memory broker whose tasks record their calls."""
    warren = Warren(url="memory://", store_url=store_url)
    calls: list[tuple[str, Any]] = []

    @warren.task(name="send_welcome_email", queue="emails")
    def send_welcome_email(user_id: int) -> None:
        calls.append(("welcome", user_id))

    @warren.task(name="render_invoice", queue="invoices")
    def render_invoice(invoice_id: int, copies: int = 1) -> None:
        calls.append(("invoice", (invoice_id, copies)))

    yield warren, calls
    warren.close()


@pytest.fixture
def relay_of(store_url: str) -> Iterator[Callable[..., Relay]]:
    """Makes legacy relays on their own connections; closes them after the test."""
    made: list[Relay] = []

    def make(warren: Warren, table: LegacyTable = JOBS, **changes: Any) -> Relay:
        relay = legacy_relay_for(warren, table, open_store(store_url))
        made.append(relay)
        for name, value in changes.items():
            setattr(relay, name, value)
        return relay

    yield make
    for relay in made:
        relay.store.close()


def drain(relay: Relay) -> int:
    """Relay passes until one finds nothing to relay or fail; how many rows it relayed."""
    source = relay.store
    assert isinstance(source, LegacySource)
    before = relay.relayed
    while True:
        failed = source.failed
        if not relay.relay_once() and source.failed == failed:
            return relay.relayed - before


def queued(warren: Warren, queue: str) -> list[Envelope]:
    """Take every message waiting in ``queue`` of the in-memory broker."""
    consumer = warren.broker.consumer()
    consumer.consume(queue, 10_000)
    deliveries = consumer.poll(0.0)
    for delivery in deliveries:
        consumer.settle(delivery, Ack())
    consumer.close()
    return [d.envelope for d in deliveries]


def test_pending_rows_inserted_by_plain_sql_run_as_tasks_and_are_marked_queued(
        jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    warren, calls = app
    first = jobs.insert("welcome_email", '{"user_id": 7}')
    second = jobs.insert("invoice_pdf", '{"invoice_id": 12, "copies": 2}')
    third = jobs.insert("welcome_email", '{"user_id": 8}', run_at=AN_HOUR_AGO[jobs.dialect])
    relay = relay_of(warren)

    assert drain(relay) == 3
    join(warren)

    assert sorted(calls, key=str) == [("invoice", (12, 2)), ("welcome", 7), ("welcome", 8)]
    assert jobs.statuses() == {first: ("queued", None), second: ("queued", None),
                               third: ("queued", None)}
    assert jobs.leases() == 0


def test_each_message_id_is_the_table_and_row_id_so_a_duplicate_is_recognisable(
        jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    warren, _ = app
    row = jobs.insert("welcome_email", '{"user_id": 7}')
    relay = relay_of(warren)
    drain(relay)

    [envelope] = queued(warren, "emails")
    assert envelope.message_id == f"jobs:{row}"
    assert envelope.task == "send_welcome_email"
    assert envelope.body == b'{"user_id":7}'


def test_bad_rows_are_marked_failed_with_a_reason_and_the_good_ones_still_go(
        jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    warren, calls = app
    not_json = jobs.insert("welcome_email", "user_id=7")
    a_list = jobs.insert("welcome_email", "[7]")
    unmapped = jobs.insert("resize_avatar", '{"user_id": 7}')
    unregistered = jobs.insert("retired_report", "{}")
    wrong_args = jobs.insert("invoice_pdf", '{"invoice_id": "twelve"}')
    long_type = jobs.insert("x" * 64, "{}")
    good = jobs.insert("welcome_email", '{"user_id": 9}')
    # The reason is cut to the width of their last_error column, here taken as 80.
    relay = relay_of(warren, dataclasses.replace(JOBS, error_max_chars=80))

    assert drain(relay) == 1
    join(warren)

    assert calls == [("welcome", 9)]
    got = jobs.statuses()
    assert got[good] == ("queued", None)
    failed = {row: reason for row, (status, reason) in got.items() if status == "failed"}
    assert set(failed) == {not_json, a_list, unmapped, unregistered, wrong_args, long_type}
    assert failed[not_json] is not None and failed[not_json].startswith("payload is not JSON")
    assert failed[a_list] == "payload is a JSON list, not an object of keyword arguments"
    assert failed[unmapped] == "type 'resize_avatar' is not in the table's task_names"
    assert failed[unregistered] == "no task named 'no_such_task' is registered"
    assert "invoice_id" in str(failed[wrong_args])
    assert str(failed[long_type]).startswith("type 'xxxx")
    assert str(failed[long_type]).endswith("...")
    assert all(len(str(reason)) <= 80 for reason in failed.values())
    assert jobs.leases() == 0


def test_a_json_payload_column_is_read_as_the_driver_returns_it(
        store_url: str, new_jobs: Callable[..., Jobs], app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    # psycopg would hand JSONB over parsed; MariaDB's JSON is text with a CHECK.
    jobs = new_jobs("JSONB" if dialect_of(store_url) == "postgresql" else "JSON")
    warren, calls = app
    good = jobs.insert("welcome_email", '{"user_id": 5}')
    a_list = jobs.insert("welcome_email", "[5]")
    relay = relay_of(warren)

    assert drain(relay) == 1
    join(warren)

    assert calls == [("welcome", 5)]
    assert jobs.statuses() == {
        good: ("queued", None),
        a_list: ("failed", "payload is a JSON list, not an object of keyword arguments")}


def test_a_jsonb_payload_too_deep_for_the_driver_to_parse_fails_only_its_row(
        store_url: str, new_jobs: Callable[..., Jobs], app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    if dialect_of(store_url) != "postgresql":
        pytest.skip("only psycopg parses a JSON column as it fetches it")
    jobs = new_jobs("JSONB")
    warren, calls = app
    # PostgreSQL stores it; Python's json parser gives up past ~1000 levels.
    deep = jobs.insert("welcome_email", '{"user_id": ' + "[" * 3000 + "]" * 3000 + "}")
    good = jobs.insert("welcome_email", '{"user_id": 6}')
    relay = relay_of(warren)

    assert drain(relay) == 1
    join(warren)

    assert calls == [("welcome", 6)]
    status, reason = jobs.statuses()[deep]
    assert (status, str(reason)[:19]) == ("failed", "payload is not JSON")
    assert jobs.statuses()[good] == ("queued", None)


def test_a_row_whose_args_nest_too_deep_to_parse_is_failed_and_the_rows_after_it_go(
        store_url: str, new_jobs: Callable[..., Jobs], app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    # json.loads raises RecursionError here, not ValueError. MariaDB's TEXT holds 64 KiB.
    jobs = new_jobs("MEDIUMTEXT" if dialect_of(store_url) == "mysql" else "TEXT")
    warren, calls = app
    poison = jobs.insert("welcome_email", "[" * 100_000)  # the lowest id: claimed first
    good = [jobs.insert("welcome_email", f'{{"user_id": {n}}}') for n in range(3)]
    relay = relay_of(warren)

    assert drain(relay) == 3
    join(warren)

    assert sorted(calls) == [("welcome", 0), ("welcome", 1), ("welcome", 2)]
    status, reason = jobs.statuses()[poison]
    assert status == "failed"
    assert str(reason).startswith("payload is not JSON: RecursionError")
    assert len(str(reason)) <= JOBS.error_max_chars
    assert all(jobs.statuses()[row] == ("queued", None) for row in good)
    assert jobs.leases() == 0


def test_any_error_a_row_provokes_while_it_becomes_a_task_call_fails_only_that_row(
        store_url: str, jobs: Jobs) -> None:
    def resolve(name: str, body: bytes) -> str:
        if b"13" in body:
            raise RuntimeError("unlucky " + "x" * 1000)
        return "emails"

    published: list[str] = []
    unlucky = jobs.insert("welcome_email", '{"user_id": 13}')
    lucky = jobs.insert("welcome_email", '{"user_id": 7}')
    source = LegacySource(open_store(store_url), JOBS, resolve)
    try:
        source.prepare()
        relay = Relay(source, lambda q, envelopes, _: published.extend(
            e.message_id for e in envelopes), max_bytes=1 << 20)
        assert relay.relay_once() == 1  # and the other row failed, in the claim
    finally:
        source.close()

    assert published == [f"jobs:{lucky}"]
    status, reason = jobs.statuses()[unlucky]
    assert status == "failed"
    assert str(reason).startswith("cannot become a task call: RuntimeError: unlucky xxx")
    assert len(str(reason)) == JOBS.error_max_chars


def test_a_sqlite_row_whose_text_is_not_utf8_is_failed_and_the_others_go(
        store_url: str, jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    if jobs.dialect != "sqlite":
        pytest.skip("PostgreSQL and MariaDB refuse text that is not in the column's charset")
    warren, calls = app
    jobs.sql("INSERT INTO jobs (type, payload) VALUES ('welcome_email', "
             "CAST(x'7b22757365725f6964223a2022ff227d' AS TEXT))")  # {"user_id": "\xff"}
    [(bad,)] = jobs.sql("SELECT MAX(id) FROM jobs")
    good = jobs.insert("welcome_email", '{"user_id": 3}')
    relay = relay_of(warren)

    assert drain(relay) == 1
    join(warren)

    assert calls == [("welcome", 3)]
    assert jobs.statuses()[good] == ("queued", None)
    assert jobs.statuses()[bad][0] == "failed"


def test_a_run_at_in_the_future_waits_until_the_database_clock_reaches_it(
        jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    warren, calls = app
    later = jobs.insert("welcome_email", '{"user_id": 1}', run_at=IN_AN_HOUR[jobs.dialect])
    now = jobs.insert("welcome_email", '{"user_id": 2}')
    relay = relay_of(warren)

    assert drain(relay) == 1
    join(warren)
    assert calls == [("welcome", 2)]
    assert jobs.statuses()[later] == ("pending", None)
    assert jobs.statuses()[now] == ("queued", None)

    jobs.sql(f"UPDATE jobs SET run_at = {AN_HOUR_AGO[jobs.dialect]} WHERE id = {jobs.mark}",
             (later,))
    assert drain(relay) == 1
    join(warren)
    assert calls == [("welcome", 2), ("welcome", 1)]
    assert jobs.statuses()[later] == ("queued", None)


#: SQL for "five minutes ago" written as ISO 8601 text with a 'T' (Python's isoformat).
T_FIVE_MINUTES_AGO = {
    "mysql": "DATE_FORMAT(NOW() - INTERVAL 5 MINUTE, '%%Y-%%m-%%dT%%H:%%i:%%s')",
    "postgresql": "to_char(LOCALTIMESTAMP - INTERVAL '5 minutes', "
                  "'YYYY-MM-DD\"T\"HH24:MI:SS')::timestamp",
    "sqlite": "strftime('%Y-%m-%dT%H:%M:%S', 'now', '-5 minutes')"}


def test_a_run_at_written_with_a_t_five_minutes_ago_is_due_now(
        jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    warren, calls = app
    row = jobs.insert("welcome_email", '{"user_id": 4}', run_at=T_FIVE_MINUTES_AGO[jobs.dialect])
    if jobs.dialect == "sqlite":
        [(stored,)] = jobs.sql("SELECT run_at FROM jobs")
        assert "T" in stored
    relay = relay_of(warren)

    assert drain(relay) == 1
    join(warren)
    assert calls == [("welcome", 4)]
    assert jobs.statuses()[row] == ("queued", None)


def test_a_sqlite_run_at_in_epoch_seconds_is_due_once_reached(
        jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    if jobs.dialect != "sqlite":
        pytest.skip("only SQLite keeps a number in a date column")
    warren, calls = app
    due = jobs.insert("welcome_email", '{"user_id": 5}',
                      run_at="CAST(strftime('%s', 'now', '-5 minutes') AS INTEGER)")
    later = jobs.insert("welcome_email", '{"user_id": 6}',
                        run_at="CAST(strftime('%s', 'now', '+1 hour') AS INTEGER)")
    relay = relay_of(warren)
    assert drain(relay) == 1
    join(warren)
    assert calls == [("welcome", 5)]
    assert jobs.statuses()[due] == ("queued", None)
    assert jobs.statuses()[later] == ("pending", None)


def test_two_relays_claiming_in_turn_take_disjoint_rows(
        jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    warren, _ = app
    rows = [jobs.insert("welcome_email", f'{{"user_id": {n}}}') for n in range(10)]
    one, two = relay_of(warren), relay_of(warren)

    first = {r.id for r in one.store.claim(4, 60.0)}
    second = {r.id for r in two.store.claim(100, 60.0)}

    assert first == set(rows[:4])
    assert second == set(rows[4:])
    assert {s for s, _ in jobs.statuses().values()} == {"relaying"}
    assert two.store.claim(100, 60.0) == []  # all leased, none expired


def ignore(user_id: int) -> None:
    """A task that does nothing."""


@pytest.fixture
def two_apps(store_url: str) -> Iterator[list[Warren]]:
    apps: list[Warren] = []
    try:
        for _ in range(2):
            apps.append(Warren(url="memory://", store_url=store_url))
            apps[-1].task(name="send_welcome_email", queue="emails")(ignore)
        yield apps
    finally:
        for warren in apps:
            warren.close()


def test_two_relays_at_once_publish_every_row_exactly_once(
        jobs: Jobs, two_apps: list[Warren], relay_of: Callable[..., Relay]) -> None:
    rows = {jobs.insert("welcome_email", f'{{"user_id": {n}}}') for n in range(300)}
    apps = two_apps
    relays = [relay_of(warren, batch=10) for warren in apps]
    errors: list[BaseException] = []

    def run(relay: Relay) -> None:
        try:
            drain(relay)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    ids = [[e.message_id for e in queued(warren, "emails")] for warren in apps]
    assert sorted(ids[0] + ids[1]) == sorted(f"jobs:{row}" for row in rows)
    assert not set(ids[0]) & set(ids[1])
    assert {s for s, _ in jobs.statuses().values()} == {"queued"}


def test_rows_of_a_relay_that_died_after_claiming_are_relayed_once_its_lease_runs_out(
        jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    warren, calls = app
    rows = [jobs.insert("welcome_email", f'{{"user_id": {n}}}') for n in range(3)]
    dead = relay_of(warren)
    assert len(dead.store.claim(100, 3600.0)) == 3  # claimed, committed, never published
    dead.store.close()
    survivor = relay_of(warren)

    assert drain(survivor) == 0  # the lease still holds
    assert {s for s, _ in jobs.statuses().values()} == {"relaying"}
    jobs.expire_leases()
    assert drain(survivor) == 3
    join(warren)

    assert sorted(calls) == [("welcome", 0), ("welcome", 1), ("welcome", 2)]
    assert jobs.statuses() == {row: ("queued", None) for row in rows}
    assert jobs.leases() == 0


def test_a_row_the_application_moved_on_while_relaying_is_left_as_it_is(
        jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    warren, calls = app
    row = jobs.insert("welcome_email", '{"user_id": 1}')
    dead = relay_of(warren)
    assert len(dead.store.claim(100, 3600.0)) == 1
    dead.store.close()
    jobs.expire_leases()
    jobs.sql(f"UPDATE jobs SET status = 'cancelled' WHERE id = {jobs.mark}", (row,))
    relay = relay_of(warren)

    assert drain(relay) == 0
    assert jobs.statuses()[row] == ("cancelled", None)
    assert jobs.leases() == 0
    assert calls == []


def open_transactions(url: str, relay: Relay) -> int:
    """Transactions left open on the store's database (MariaDB's ``innodb_trx``, PostgreSQL's
    'idle in transaction' sessions), or whether the relay's SQLite connection is in one."""
    if url.startswith("sqlite"):
        source = relay.store
        assert isinstance(source, LegacySource)
        return int(source.store.conn.raw.in_transaction)
    conn = connect(url)
    try:
        cur = conn.cursor()
        if url.startswith("postgresql"):
            cur.execute("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND pid <> pg_backend_pid() AND state LIKE "
                        "'idle in transaction%%'")
        else:
            cur.execute("SELECT COUNT(*) FROM information_schema.innodb_trx t JOIN "
                        "information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                        "WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()")
        return int(cur.fetchone()[0])
    finally:
        conn.close()


def test_the_relay_keeps_no_transaction_open_between_passes(
        store_url: str, jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]],
        relay_of: Callable[..., Relay]) -> None:
    # One left open would hold back MariaDB's purge and block DROP/ALTER of their table.
    warren, _ = app
    jobs.insert("welcome_email", '{"user_id": 1}')
    jobs.insert("welcome_email", "not json")
    relay = relay_of(warren)
    assert open_transactions(store_url, relay) == 0  # after prepare()

    assert relay.relay_once() == 1  # and the other row failed, in the claim
    assert open_transactions(store_url, relay) == 0
    assert relay.relay_once() == 0  # a pass that finds nothing
    assert open_transactions(store_url, relay) == 0


@pytest.mark.parametrize("spec", [
    {"table": "jobs; DROP TABLE users"},
    {"table": "jobs", "task": "type`"},
    {"table": "jobs", "args": 'payload" OR 1=1 --'},
    {"table": "jobs", "run_at": "1run_at"},
    {"table": "jobs", "done": "pending"},
    {"table": "jobs", "queue": "emails", "queue_column": "queue"},
])
def test_names_that_are_not_plain_sql_names_and_muddled_statuses_are_refused(
        spec: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        LegacyTable(**spec)


def test_a_table_or_column_that_does_not_exist_is_named_when_the_relay_starts(
        store_url: str, jobs: Jobs, app: tuple[Warren, list[tuple[str, Any]]]) -> None:
    warren, _ = app
    wrong = LegacyTable("jobs", task="kind", args="payload")
    with pytest.raises(ConfigurationError, match="cannot read the jobs table") as info:
        legacy_relay_for(warren, wrong, open_store(store_url))
    assert "kind" in str(info.value)


@pytest.mark.rabbitmq
def test_the_relay_command_and_a_real_worker_run_a_mariadb_jobs_table_end_to_end(
        tmp_path: Path, rabbit_url: str) -> None:
    require_rabbitmq()
    queue = unique_queue("twlegacy")
    ledger = Ledger(tmp_path / "ledger.txt")
    with fresh_database("mysql", tmp_path) as url, contextlib.ExitStack() as cleanup:
        cleanup.callback(delete_queues, queue, url=rabbit_url)
        jobs = Jobs(url)
        cleanup.callback(jobs.conn.close)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TWLEGACY_QUEUE": queue,
               "TASKWARREN_STORE_URL": url}
        rows = [jobs.insert("welcome_email", f'{{"user_id": {n}, "ledger": "{ledger}"}}')
                for n in range(20)]
        bad = jobs.insert("welcome_email", '{"user_id": "nobody"}')
        relay = subprocess.Popen(
            [sys.executable, "-m", "taskwarren", "relay", "--url", rabbit_url,
             "--legacy", "tests.integration.twlegacy:JOBS"],
            env=env, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        err = cleanup.enter_context(_stopped(relay))
        pool = Pool("tests.integration.twlegacy", [queue], rabbit_url,
                    env={"TWLEGACY_QUEUE": queue})
        cleanup.callback(pool.stop)
        wait_until(lambda: len(ledger.count("end")) == 20, 60, what="20 welcome emails")
        wait_until(lambda: {s for s, _ in jobs.statuses().values()} == {"queued", "failed"},
                   10, what="the rows marked")
        assert ledger.count("end") == dict.fromkeys(range(20), 1)
        assert all(jobs.statuses()[row] == ("queued", None) for row in rows)
        assert jobs.statuses()[bad][0] == "failed"
        assert "user_id" in str(jobs.statuses()[bad][1])
    assert relay.returncode == 0, bytes(err).decode()


@contextlib.contextmanager
def _stopped(process: subprocess.Popen[bytes]) -> Iterator[bytearray]:
    """Stops ``process`` with SIGTERM on the way out (killed if it hangs); its stderr."""
    err = bytearray()
    try:
        yield err
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            _, out = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, out = process.communicate()
        err.extend(out or b"")
