"""Broker restarts, cut links and resource alarms, on a private RabbitMQ node."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.errors import PublishTimeoutError
from tests.integration import twtasks
from tests.support.proxy import FaultyProxy
from tests.support.rabbit import (
    PrivateRabbit,
    consumer_count,
    queue_counts,
    unique_queue,
)
from tests.support.workers import Ledger, Pool, wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]
MODULE = "tests.integration.twtasks"



def app_for(url: str, **overrides: object) -> Warren:
    return Warren(url=url, **overrides)


def send(app: Warren, queue: str, ledger: Ledger, n: int, **kw: object) -> str:
    task = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    return task.send(n, str(ledger), **kw)  # type: ignore[arg-type]


def test_tasks_and_delayed_tasks_survive_a_broker_restart(
    node: PrivateRabbit, ledger: Ledger, tmp_path: Path
) -> None:
    queue = unique_queue()
    app = app_for(node.url)
    task = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    task.send_many([{"n": i, "ledger": str(ledger)} for i in range(100)])
    sent_at = time.time()  # the broker starts the delay before our confirm arrives
    # Long enough that a slow restart (a busy machine) ends before it is due.
    task.options(delay=20).send(1000, str(ledger))
    app.close()
    node.restart_app()
    assert queue_counts(queue, node.url)[0] == 100
    pool = Pool(MODULE, [queue], node.url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: len(ledger.count("end")) == 101, 60, what="all 101 tasks")
        assert pool.stop() == 0
    finally:
        pool.kill()
    ends = ledger.count("end")
    assert set(ends) == set(range(100)) | {1000}
    # The undelayed ones waited in their queue through the restart: each ran once. The
    # delayed one hops between delay levels, which dead-letter at-least-once: a hop whose
    # confirm was late after the restart is sent again, so it may run twice, never zero.
    assert {ends[n] for n in range(100)} == {1}
    assert ends[1000] >= 1
    assert ledger.times("start", 1000)[0] >= sent_at + 20


def test_workers_and_producers_carry_on_across_a_broker_restart(
    node: PrivateRabbit, ledger: Ledger, tmp_path: Path
) -> None:
    queue = unique_queue()
    app = app_for(node.url, publish_timeout_s=60)
    task = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    task.send(0, str(ledger))
    pool = Pool(MODULE, [queue], node.url, concurrency=2, log_path=tmp_path / "w.log")
    confirmed: list[int] = []
    stop = threading.Event()

    def produce() -> None:
        n = 1
        while not stop.is_set() and n <= 400:
            task.send(n, str(ledger))  # retries through the outage until confirmed
            confirmed.append(n)
            n += 1
            time.sleep(0.01)

    producer = threading.Thread(target=produce)
    try:
        wait_until(lambda: ledger.count("end")[0] == 1, 30, what="the pool running")
        producer.start()
        wait_until(lambda: len(confirmed) >= 100, 30, what="100 confirmed sends")
        node.restart_app()
        producer.join(120)
        assert not producer.is_alive()
        wait_until(lambda: set(confirmed) <= set(ledger.count("end")), 60,
                   what="every confirmed task to run")
        assert pool.stop() == 0
    finally:
        stop.set()
        pool.kill()
        app.close()
    assert len(confirmed) == 400
    assert "link_lost" in pool.log_text() or "reconnecting" in pool.log_text()


def test_a_cut_connection_loses_nothing(
    node: PrivateRabbit, ledger: Ledger, tmp_path: Path
) -> None:
    queue = unique_queue()
    port = int(node.url.rsplit(":", 1)[1].split("/")[0])
    proxy = FaultyProxy(port)
    app = app_for(proxy.url(), publish_timeout_s=60)
    task = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    pool = Pool(MODULE, [queue], proxy.url(), concurrency=2, log_path=tmp_path / "w.log")
    sent: list[str] = []
    try:
        for batch in range(5):
            sent += task.send_many([{"n": batch * 1000 + i, "ledger": str(ledger),
                                     "sleep_s": 0.002} for i in range(200)])
            assert proxy.cut_all() >= 1
        wait_until(lambda: len(ledger.count("end")) == 1000, 90, what="all 1000 tasks")
        assert pool.stop() == 0
    finally:
        pool.kill()
        app.close()
        proxy.close()
    assert len(set(sent)) == 1000
    assert consumer_count(queue, node.url) == 0


def test_a_send_to_a_blocked_broker_fails_after_its_deadline_saying_why(
    node: PrivateRabbit, ledger: Ledger
) -> None:
    queue = unique_queue()
    app = app_for(node.url, publish_timeout_s=2)
    send(app, queue, ledger, 1)
    node.ctl("set_vm_memory_high_watermark", "0.0000001")
    try:
        # The node raises its memory alarm on its next check: on a loaded machine a send
        # right after the command could still go through.
        wait_until(lambda: "memory" in node.ctl("eval", "rabbit_alarm:get_alarms()."), 20,
                   interval=0.2, what="the memory alarm")
        started = time.monotonic()
        with pytest.raises(PublishTimeoutError, match="blocks publishers"):
            send(app, queue, ledger, 2)
        assert time.monotonic() - started < 10
    finally:
        node.ctl("set_vm_memory_high_watermark", "0.4")
    wait_until(lambda: _sends(app, queue, ledger), 20, interval=0.5, what="sending again")
    app.close()


def _sends(app: Warren, queue: str, ledger: Ledger) -> bool:
    try:
        send(app, queue, ledger, 3)
        return True
    except PublishTimeoutError:
        return False


def test_messages_waiting_in_any_delay_level_survive_a_broker_restart(
    node: PrivateRabbit, ledger: Ledger, tmp_path: Path
) -> None:
    # Regression: classic delay levels dead-letter at most once, and a restarting broker
    # expired a level's messages before their next queue was back: all were dropped.
    queue = unique_queue()
    app = app_for(node.url)
    task = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    for delay in (1, 2, 3, 4, 5):
        task.options(delay=delay).send_many(
            [{"n": delay * 100 + i, "ledger": str(ledger)} for i in range(20)])
    app.close()
    node.restart_app()
    pool = Pool(MODULE, [queue], node.url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: len(ledger.count("end")) == 100, 40, what="all 100 delayed tasks")
        assert pool.stop() == 0
    finally:
        pool.kill()
    # None lost. Duplicates are allowed: the levels dead-letter at-least-once, and the test
    # node re-sends a hop whose confirm took over 2 s after the restart (seen in CI on a
    # loaded machine: one task ran twice). The restart regression lost whole levels.
    ends = ledger.count("end")
    assert set(ends) == {d * 100 + i for d in (1, 2, 3, 4, 5) for i in range(20)}
    assert min(ends.values()) >= 1
