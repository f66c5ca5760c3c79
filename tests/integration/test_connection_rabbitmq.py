"""The connection layer: bad URLs, URL parameters, refused logins and stalled links."""

from __future__ import annotations

import math
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.brokers.rabbitmq import RECONNECT_MAX_S, RabbitMQBroker, parse_urls
from taskwarren.settings import Settings
from tests.integration import twtasks
from tests.support.proxy import FaultyProxy
from tests.support.rabbit import (
    PrivateRabbit,
    consumer_count,
    delete_queues,
    unique_queue,
)
from tests.support.workers import Ledger, Pool, wait_until

MODULE = "tests.integration.twtasks"
#: Seconds over which reconnect attempts are counted.
WATCH_S = 8.0


@pytest.mark.parametrize("url", [
    "amqp://guest:Zq/9xK@127.0.0.1/%2F",
    "amqp://guest:Zq?9xK@127.0.0.1/%2F",
    "amqp://guest:Zq#9xK@127.0.0.1/%2F",
    "amqp://guest:guest@127.0.0.1/%2F,amqp://guest:Zq/9xK@127.0.0.1/%2F",
    "amqp://guest:Zq9xK@127.0.0.1/%2F?heartbeet=2",
])
def test_a_worker_with_a_bad_url_stops_at_start_with_one_message_and_no_password(
    url: str, tmp_path: Path
) -> None:
    pool = Pool(MODULE, [unique_queue()], url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        code = pool.proc.wait(30)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        pool.kill()
    out = pool.log_text()
    assert code not in (None, 0), f"the worker kept running: {out[-2000:]}"
    assert re.search(r"Zq|9xK", out) is None, out
    assert "Traceback" not in out and "pool_started" not in out
    assert len(out.strip().splitlines()) == 1
    assert "URL" in out


@pytest.mark.rabbitmq
def test_a_worker_with_a_wrong_password_backs_off_and_says_access_was_refused(
    rabbit_url: str, tmp_path: Path
) -> None:
    url = with_password(rabbit_url, "Wr0ngPw")
    pool = Pool(MODULE, [unique_queue()], url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: pool.log_text().lower().count("access refused") >= 2, 30,
                   what="both children to report the refused login")
        started = time.monotonic()
        before = pool.log_text().lower().count("access refused")
        time.sleep(WATCH_S)  # counting attempts over a window: nothing to poll for
        attempts = pool.log_text().lower().count("access refused") - before
        elapsed = time.monotonic() - started
    finally:
        pool.stop()
    out = pool.log_text()
    assert "Wr0ngPw" not in out
    # Backoff grows to RECONNECT_MAX_S: a handful of attempts per child, not hundreds.
    assert attempts <= 2 * (elapsed / RECONNECT_MAX_S + 6), attempts
    refused = [line for line in out.splitlines() if "consumer.access_refused" in line]
    assert refused and "check the user name, password" in refused[-1]


def with_password(url: str, password: str) -> str:
    """``url`` (``amqp://user:pass@...``) with another password."""
    head, rest = url.split("://", 1)
    user = rest.split(":", 1)[0]
    return f"{head}://{user}:{password}@{rest.rsplit('@', 1)[1]}"


#: How long the proxy stalls a link: far beyond every deadline the tests set.
STALL_S = 25.0


@pytest.fixture
def proxy(rabbit_url: str) -> Iterator[FaultyProxy]:
    """A fault-injecting proxy in front of the test broker."""
    ep = parse_urls(rabbit_url)[0]
    p = FaultyProxy(ep.port, ep.host)
    yield p
    p.close()


def timed(fn: Callable[[], object]) -> Callable[[], None]:
    """``fn`` for a thread: records (outcome, seconds) in ``.result``."""
    def run() -> None:
        started = time.monotonic()
        try:
            fn()
            outcome = "ok"
        except Exception as exc:  # the outcome is what the test looks at
            outcome = type(exc).__name__
        run.result = (outcome, time.monotonic() - started)  # type: ignore[attr-defined]
    return run


def run_all(*fns: Callable[[], None]) -> list[tuple[str, float]]:
    threads = [threading.Thread(target=fn, daemon=True) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(STALL_S + 10)
    return [getattr(fn, "result", ("still blocked", math.inf)) for fn in fns]


@pytest.mark.rabbitmq
def test_sends_over_a_stalled_link_fail_by_their_deadline_and_free_the_producer(
    proxy: FaultyProxy, tmp_path: Path
) -> None:
    app = Warren(url=proxy.url(), publish_timeout_s=2)
    known, new = unique_queue(), unique_queue()
    first = app.task(twtasks.work.fn, name=twtasks.work.name, queue=known)
    second = app.task(twtasks.work.fn, name=twtasks.work.name, queue=new)
    ledger = str(tmp_path / "ledger")
    try:
        first.send(1, ledger)  # connected, queue declared
        proxy.stall(STALL_S)
        # A send to a new queue must declare it (a synchronous RPC) while another
        # send waits for the producer lock.
        results = run_all(timed(lambda: second.send(2, ledger)),
                          timed(lambda: first.send(3, ledger)))
    finally:
        proxy.stall(0)
        app.close()
        delete_queues(known, new)
    for outcome, seconds in results:
        assert outcome in ("PublishTimeoutError", "BrokerConnectionError"), results
        assert seconds < 2 * 2 + 3, results


@pytest.mark.rabbitmq
def test_a_consumer_rpc_over_a_stalled_link_ends_by_its_deadline(
    proxy: FaultyProxy,
) -> None:
    known, new = unique_queue(), unique_queue()
    settings = Settings.from_env({}, url=proxy.url(), publish_timeout_s=2)
    consumer = RabbitMQBroker(settings).consumer()
    try:
        consumer.consume(known, 1)
        consumer.poll(0.1)  # connects and starts consuming
        assert consumer_count(known) == 1
        proxy.stall(STALL_S)
        results = run_all(timed(lambda: consumer.consume(new, 1)))  # declare, qos, consume
    finally:
        proxy.stall(0)
        consumer.close()
        delete_queues(known, new)
    assert results[0][1] < 2 + 3, results
    assert consumer.reconnects == 1  # the stalled link was given up


@pytest.mark.rabbitmq
def test_a_consumer_gets_in_to_a_broker_slower_to_answer_than_one_poll_allows(
    proxy: FaultyProxy,
) -> None:
    # The broker answers a new connection after 1.5 s, longer than the poll's own
    # timeout and the one second it allows for reconnecting: the attempt still runs to
    # connect_timeout_s (10 s), not to the poll's deadline.
    queue = unique_queue()
    broker = RabbitMQBroker(Settings.from_env({}, url=proxy.url()))
    consumer = broker.consumer()
    proxy.open_delay_s = 1.5
    try:
        consumer.consume(queue, 1)
        deadline = time.monotonic() + 30
        while consumer_count(queue) != 1:
            assert time.monotonic() < deadline, "the consumer never got in"
            consumer.poll(0.1)
    finally:
        proxy.open_delay_s = 0.0
        consumer.close()
        broker.close()
        delete_queues(queue)


@pytest.mark.rabbitmq
def test_the_heartbeat_of_the_url_query_is_the_one_used(proxy: FaultyProxy) -> None:
    # TASKWARREN_HEARTBEAT_S stays at 30 s; the URL asks for 2 s: a stalled link is
    # then given up after two missed heartbeats, not after a minute.
    queue = unique_queue()
    settings = Settings.from_env({}, url=proxy.url() + "?heartbeat=2")
    assert settings.heartbeat_s == 30
    consumer = RabbitMQBroker(settings).consumer()
    try:
        consumer.consume(queue, 1)
        consumer.poll(0.1)
        assert consumer_count(queue) == 1
        proxy.stall(STALL_S)
        started = time.monotonic()
        while consumer.reconnects == 0 and time.monotonic() - started < 15:
            consumer.poll(0.2)
        assert consumer.reconnects == 1, "the stalled link was never given up"
        assert time.monotonic() - started < 2 * 2 + 3
    finally:
        proxy.stall(0)
        consumer.close()
        delete_queues(queue)



def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user and system) used so far by ``pids``."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def unsettled(node: PrivateRabbit, queue: str) -> int:
    """Messages of ``queue`` the broker still holds (ready or unacked)."""
    out = node.ctl("-q", "list_queues", "name", "messages_ready", "messages_unacknowledged")
    for line in out.splitlines():
        name, *counts = line.split()
        if name == queue:
            return sum(int(c) for c in counts)
    raise AssertionError(f"queue {queue} not listed: {out}")


@pytest.mark.slow
@pytest.mark.rabbitmq
def test_during_a_resource_alarm_workers_still_ack_and_stop_gracefully(
    node: PrivateRabbit, ledger: Ledger, tmp_path: Path
) -> None:
    queue = unique_queue()
    app = Warren(url=node.url)
    task = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    task.send_many([{"n": n, "ledger": str(ledger), "sleep_s": 3.0} for n in range(2)])
    app.close()
    pool = Pool(MODULE, [queue], node.url, concurrency=2, extra=["--grace", "10"],
                log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: len(ledger.count("start")) == 2, 30, what="both tasks running")
        node.ctl("set_vm_memory_high_watermark", "0.0000001")
        # The children announce themselves every second meanwhile; their acks must
        # still reach the broker.
        wait_until(lambda: len(ledger.count("end")) == 2, 30, what="both tasks done")
        wait_until(lambda: unsettled(node, queue) == 0, 15, interval=0.5,
                   what="the broker to see both acks during the alarm")
        started = time.monotonic()
        code = pool.stop(timeout=30)
        assert code == 0
        assert time.monotonic() - started < 10, "the children did not stop gracefully"
    finally:
        pool.kill()
        node.ctl("set_vm_memory_high_watermark", "0.4")
    assert "broker.blocked" in pool.log_text()  # the alarm was seen, and said


@pytest.mark.slow
@pytest.mark.rabbitmq
def test_during_a_resource_alarm_a_dead_letter_waits_while_other_acks_go_through(
    node: PrivateRabbit, ledger: Ledger, tmp_path: Path
) -> None:
    queue = unique_queue()
    app = Warren(url=node.url)
    task = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    task.send(0, str(ledger), sleep_s=3.0, mode="raise")  # dead-lettered: a publish
    task.send(1, str(ledger), sleep_s=3.0)
    app.close()
    pool = Pool(MODULE, [queue], node.url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: len(ledger.count("start")) == 2, 30, what="both tasks running")
        node.ctl("set_vm_memory_high_watermark", "0.0000001")
        try:
            wait_until(lambda: ledger.count("end")[1] == 1, 30, what="task 1 done")
            # rabbitmqctl takes seconds a call on a busy machine: a generous bound.
            wait_until(lambda: unsettled(node, queue) == 1, 30, interval=0.5,
                       what="task 1's ack to reach the broker during the alarm")
            assert unsettled(node, queue + ".dead") == 0  # not published while blocked
            # Waiting for the alarm to end is not busy: the children sleep meanwhile.
            before, started = cpu_s(pool.children()), time.monotonic()
            time.sleep(3.0)  # measuring CPU over a window: nothing to poll for
            assert cpu_s(pool.children()) - before < 0.3 * (time.monotonic() - started)
        finally:
            node.ctl("set_vm_memory_high_watermark", "0.4")
        wait_until(lambda: unsettled(node, queue + ".dead") == 1, 30, interval=0.5,
                   what="the dead letter, once the alarm is over")
        wait_until(lambda: unsettled(node, queue) == 0, 15, interval=0.5,
                   what="task 0's delivery to be acked after its dead letter")
        assert pool.stop() == 0
    finally:
        pool.kill()
