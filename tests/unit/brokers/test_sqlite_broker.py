"""What only the SQLite broker promises: URLs, durability settings, leases, processes, sleep."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sqlite3
import stat
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from taskwarren.brokers.base import ACK, Republish
from taskwarren.brokers.sqlite import HOUSEKEEPING_S, LEASE_S, SQLiteBroker, wake_dir
from taskwarren.errors import BrokerError, ConfigurationError, PublishError
from taskwarren.message import H_ERROR_TYPE, H_REASON, Envelope, encode
from tests.contract.support import collect, quiet
from tests.contract.support import settle as settle_all

QUEUE = "jobs"
fork = multiprocessing.get_context("fork")


def message(n: int = 0) -> Envelope:
    return encode("unit.task", QUEUE, f'{{"n": {n}}}'.encode())


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "tw.db")


def test_a_relative_url_is_a_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker = SQLiteBroker.from_url("sqlite:///taskwarren.db")
    broker.close()

    assert (tmp_path / "taskwarren.db").exists()
    assert broker.location == f"sqlite:///{tmp_path}/taskwarren.db"


def test_an_absolute_url_has_four_slashes(db: str) -> None:
    broker = SQLiteBroker.from_url(f"sqlite:///{db}")
    broker.close()

    assert broker.path == db
    assert Path(db).exists()


@pytest.mark.parametrize("url", ["sqlite://host/x.db", "sqlite:///:memory:", "sqlite:///",
                                 "sqlite:///x.db?lease=3", "postgres:///x"])
def test_a_url_that_is_not_a_database_file_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SQLiteBroker.from_url(url)


def test_the_database_is_in_wal_mode_and_every_commit_is_fsynced(db: str) -> None:
    broker = SQLiteBroker(db)
    consumer = broker.consumer()
    try:
        # closed: Python 3.13 warns of a connection left to the garbage collector
        with contextlib.closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        for conn in (broker._connection(), consumer._db()):
            assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    finally:
        consumer.close()
        broker.close()


def test_a_published_message_is_still_there_for_a_broker_opened_later(db: str) -> None:
    first = SQLiteBroker(db)
    first.publish(QUEUE, [message(1)])
    first.close()

    second = SQLiteBroker(db)
    consumer = second.consumer()
    consumer.consume(QUEUE, 1)
    try:
        (got,) = collect(consumer, 1)
        assert got.envelope.body == b'{"n": 1}'
    finally:
        consumer.close()
        second.close()


def test_a_missing_directory_is_a_broker_error(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="cannot open"):
        SQLiteBroker(tmp_path / "missing" / "tw.db")


def test_a_failed_publish_is_a_publish_error(db: str) -> None:
    broker = SQLiteBroker(db)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("DROP TABLE messages")

    with pytest.raises(PublishError, match="no such table"):
        broker.publish(QUEUE, [message()])
    broker.close()


def test_an_expired_lease_gives_the_message_to_another_consumer_and_a_late_ack_is_ignored(
    db: str,
) -> None:
    # The consumer that watches decides when a lease has run out, by its own lease length.
    stalled_broker, broker = SQLiteBroker(db, lease_s=0.5), SQLiteBroker(db, lease_s=0.5)
    broker.publish(QUEUE, [message()])
    stalled = stalled_broker.consumer()
    stalled.consume(QUEUE, 1)
    (first,) = collect(stalled, 1)
    other = broker.consumer()
    other.consume(QUEUE, 1)
    try:
        # ``stalled`` stops polling, as a process stuck without its I/O thread would.
        (second,) = collect(other, 1, timeout_s=HOUSEKEEPING_S + 2)
        assert second.envelope.message_id == first.envelope.message_id
        assert (second.redelivered, second.delivery_count) == (True, 1)

        settle_all(stalled, [(first, ACK)])
        assert broker.stats(QUEUE).unacked == 1  # still held by ``other``

        settle_all(stalled, [(first, Republish(QUEUE, first.envelope, dead=True))])
        assert broker.dead_letters(QUEUE) == []  # a stale republish would double it

        settle_all(other, [(second, ACK)])
        stats = broker.stats(QUEUE)
        assert (stats.ready, stats.unacked, stats.dead) == (0, 0, 0)
    finally:
        for c in (stalled, other):
            c.close()
        stalled_broker.close()
        broker.close()


def test_a_consumer_that_keeps_polling_keeps_its_lease(db: str) -> None:
    broker = SQLiteBroker(db, lease_s=0.6)
    broker.publish(QUEUE, [message()])
    holder, other = broker.consumer(), broker.consumer()
    holder.consume(QUEUE, 1)
    other.consume(QUEUE, 1)
    try:
        assert len(collect(holder, 1)) == 1
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert holder.poll(0.05) == []
            assert other.poll(0.05) == []
        assert broker.stats(QUEUE).unacked == 1
    finally:
        holder.close()
        other.close()
        broker.close()


def _hold(db: str, report: Connection) -> None:
    consumer = SQLiteBroker(db, lease_s=60).consumer()
    consumer.consume(QUEUE, 5)
    got: list[object] = []
    while not got:
        got = list(consumer.poll(0.2))
    report.send(len(got))
    while True:
        consumer.poll(0.2)


def test_a_killed_consumer_process_is_noticed_long_before_its_lease_runs_out(db: str) -> None:
    broker = SQLiteBroker(db)
    broker.publish(QUEUE, [message(1), message(2)])
    receive, report = fork.Pipe(duplex=False)
    child = fork.Process(target=_hold, args=(db, report), daemon=True)
    child.start()
    assert receive.poll(10) and receive.recv() == 2
    assert broker.stats(QUEUE).consumers == 1
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    consumer = broker.consumer()
    consumer.consume(QUEUE, 5)
    started = time.monotonic()
    try:
        got = collect(consumer, 2, timeout_s=10)

        assert [d.envelope.body for d in got] == [b'{"n": 1}', b'{"n": 2}']
        assert all(d.redelivered for d in got)
        assert time.monotonic() - started < HOUSEKEEPING_S + 1  # the lease was 60 s
        assert broker.stats(QUEUE).consumers == 1
    finally:
        consumer.close()
        broker.close()


def _publish_at_once(db: str, start: Event, index: int) -> None:
    start.wait()
    broker = SQLiteBroker(db)
    for n in range(25):
        broker.publish(QUEUE, [message(index * 100 + n), message(index * 100 + n + 50)])
    broker.close()


def test_eight_processes_can_create_and_share_a_new_database(db: str) -> None:
    start = fork.Event()
    children = [fork.Process(target=_publish_at_once, args=(db, start, i)) for i in range(8)]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(30)

    assert [c.exitcode for c in children] == [0] * 8
    broker = SQLiteBroker(db)
    assert broker.stats(QUEUE).ready == 400
    broker.close()


def _publish_from_inherited(broker: SQLiteBroker) -> None:
    broker.publish(QUEUE, [message(2)])
    broker.close()


def test_a_forked_child_never_uses_its_parents_connection(db: str) -> None:
    broker = SQLiteBroker(db)
    broker.publish(QUEUE, [message(1)])
    parent_conn = broker._connection()

    child = fork.Process(target=_publish_from_inherited, args=(broker,))
    child.start()
    child.join(10)

    assert child.exitcode == 0
    assert broker._connection() is parent_conn
    broker.publish(QUEUE, [message(3)])
    assert broker.stats(QUEUE).ready == 3
    broker.close()


def test_an_idle_consumer_sleeps_without_burning_cpu(db: str) -> None:
    broker = SQLiteBroker(db)
    consumer = broker.consumer()
    consumer.consume(QUEUE, 10)
    try:
        cpu = time.process_time()
        assert quiet(consumer, 3.0) == []
        assert time.process_time() - cpu < 0.1
    finally:
        consumer.close()
        broker.close()


def test_the_socket_of_a_consumer_that_died_is_removed_by_the_next_publish(db: str) -> None:
    broker = SQLiteBroker(db)
    directory = broker.waker.directory
    os.makedirs(directory, exist_ok=True)
    stale = os.path.join(directory, "gone.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(stale)  # closed without unlinking, as after kill -9

    broker.publish(QUEUE, [message()])

    assert not os.path.exists(stale)
    broker.close()


def test_wake_up_sockets_go_to_tmp_when_the_database_path_is_too_long() -> None:
    short, long = "/var/lib/app/tw.db", "/srv/" + "deep/" * 30 + "tw.db"

    assert wake_dir(short) == "/var/lib/app/tw.db.wake"
    assert wake_dir(long).startswith(f"/tmp/taskwarren-{os.getuid()}/")
    assert wake_dir(long) == wake_dir(long)
    assert len(wake_dir(long)) + 41 <= 104


def test_a_message_past_the_delivery_limit_is_dead_lettered_saying_why(db: str) -> None:
    broker = SQLiteBroker(db, delivery_limit=2)
    broker.publish(QUEUE, [message()])
    for _ in range(3):
        consumer = broker.consumer()
        consumer.consume(QUEUE, 1)
        assert len(collect(consumer, 1)) == 1
        consumer.close()  # as if its process died: the message goes back

    (letter,) = broker.dead_letters(QUEUE)
    assert letter.headers[H_ERROR_TYPE] == "DeliveryLimitExceeded"
    assert letter.headers[H_REASON] == "delivery limit of 2 exceeded"
    assert broker.stats(QUEUE).ready == 0
    broker.close()


def test_a_wall_clock_step_does_not_hand_a_leased_message_to_a_second_consumer(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = SQLiteBroker(db, lease_s=5.0)
    broker.publish(QUEUE, [message()])
    holder, other = broker.consumer(), broker.consumer()
    holder.consume(QUEUE, 1)
    other.consume(QUEUE, 1)
    try:
        (first,) = collect(holder, 1)
        assert other.poll(0.05) == []
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # NTP steps an hour on

        # Two rounds of housekeeping, both well within the holder's 5 s lease.
        assert quiet(other, HOUSEKEEPING_S + 0.5) == []

        settle_all(holder, [(first, ACK)])
        stats = broker.stats(QUEUE)
        assert (stats.ready, stats.unacked) == (0, 0)
    finally:
        holder.close()
        other.close()
        broker.close()


def test_a_long_writer_does_not_hand_a_leased_message_to_a_second_consumer(db: str) -> None:
    lease_s = 2.0
    broker = SQLiteBroker(db, lease_s=lease_s)
    broker.publish(QUEUE, [message()])
    holder, other = broker.consumer(), broker.consumer()
    holder.consume(QUEUE, 1)
    other.consume(QUEUE, 1)
    writer = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        (first,) = collect(holder, 1)
        assert other.poll(0.05) == []
        # Another process holds the write lock for three leases (a long migration, a
        # huge replay): nobody, the holder included, can renew or settle meanwhile.
        writer.execute("BEGIN IMMEDIATE")
        done = threading.Timer(3 * lease_s, writer.execute, ["COMMIT"])
        done.start()
        got = quiet(other, 3 * lease_s + lease_s / 2)
        done.join()

        assert got == []
        settle_all(holder, [(first, ACK)])
        stats = broker.stats(QUEUE)
        assert (stats.ready, stats.unacked) == (0, 0)
    finally:
        writer.close()
        holder.close()
        other.close()
        broker.close()


def test_a_consumer_blocked_by_another_writer_gives_up_well_within_its_lease(db: str) -> None:
    broker = SQLiteBroker(db)
    broker.publish(QUEUE, [message()])
    consumer = broker.consumer()
    consumer.consume(QUEUE, 1)
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        (first,) = collect(consumer, 1)
        consumer.settle(first, ACK)
        writer.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        consumer.poll(0)  # must not sit in SQLite's busy handler for longer than a lease

        assert time.monotonic() - started < LEASE_S / 3
        writer.execute("COMMIT")
        settle_all(consumer, [])
        assert broker.stats(QUEUE).unacked == 0
    finally:
        writer.close()
        consumer.close()
        broker.close()


def test_registering_waits_out_a_long_writer_and_an_announcement_skips_it(db: str) -> None:
    broker = SQLiteBroker(db)
    consumer = broker.consumer()
    writer = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        writer.execute("BEGIN IMMEDIATE")
        done = threading.Timer(LEASE_S / 3 + 1, writer.execute, ["COMMIT"])
        done.start()
        consumer.announce({"pid": os.getpid()})  # best effort: skipped, not an error
        consumer.consume(QUEUE, 1)  # longer than a round may wait, as long as a publisher
        done.join()

        assert broker.stats(QUEUE).consumers == 1
    finally:
        writer.close()
        consumer.close()
        broker.close()


def test_a_database_lying_in_tmp_itself_leaves_tmps_mode_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A database at /tmp/x.db once made the broker chmod /tmp itself to 0700, which
    # broke every other user of /tmp (MariaDB's temporary tables among them).
    from taskwarren.brokers.sqlite import wakeup

    fake_tmp = tmp_path / "tmp"
    fake_tmp.mkdir()
    fake_tmp.chmod(0o1777)
    monkeypatch.setattr(wakeup, "_TMP", str(fake_tmp))

    wakeup._make_wake_dir(str(fake_tmp / "x.db.wake"))
    private = fake_tmp / f"taskwarren-{os.getuid()}"
    private.mkdir(mode=0o755)
    wakeup._make_wake_dir(str(private / "digest"))

    assert stat.S_IMODE(fake_tmp.stat().st_mode) == 0o1777
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
