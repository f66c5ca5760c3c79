"""The core promises against the real RabbitMQ: durable, late-acked, shared, graceful."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from taskwarren import Warren
from taskwarren.errors import ArgumentsError, UnroutableError
from taskwarren.message import H_ERROR, H_ERROR_TYPE, H_REASON, H_TRACEBACK
from tests.integration import twtasks
from tests.support.rabbit import (
    connection,
    consumer_count,
    current_release,
    get_all,
    queue_counts,
)
from tests.support.workers import Ledger, Pool, wait_until

pytestmark = pytest.mark.rabbitmq
MODULE = "tests.integration.twtasks"


def send_work(queue: str, ledger: Ledger, n: int, **kw: object) -> str:
    return twtasks.work.options(queue=queue).send(n, str(ledger), **kw)  # type: ignore[arg-type]


def test_send_returns_an_id_after_a_persistent_message_lands_in_a_durable_quorum_queue(
    queue: str, ledger: Ledger, rabbit_url: str
) -> None:
    task_id = send_work(queue, ledger, 1)
    with connection(rabbit_url) as conn:
        ch = conn.channel()
        _, ready, _ = ch.queue_declare(queue, passive=True)
        msg = ch.basic_get(queue)
    assert ready == 1
    assert msg.properties["message_id"] == task_id
    assert msg.properties["delivery_mode"] == 2
    assert msg.properties["content_type"] == "application/json"
    assert msg.properties["application_headers"]["tw-task"] == "tests.integration.twtasks.work"
    listing = current_release().ctl("list_queues", "-q", "name", "durable", "arguments")
    (line,) = [row for row in listing.splitlines() if row.split("\t")[0] == queue]
    assert "true" in line and "quorum" in line and "x-delivery-limit" in line


def test_send_names_the_bad_field_and_publishes_nothing(queue: str, ledger: Ledger) -> None:
    twtasks.work.options(queue=queue).send(0, str(ledger))
    with pytest.raises(ArgumentsError) as err:
        twtasks.work.options(queue=queue).send("not a number", str(ledger))  # type: ignore[arg-type]
    assert err.value.fields == ["n"]
    assert "n:" in str(err.value)
    assert queue_counts(queue)[0] == 1


def test_tasks_sent_while_no_worker_runs_wait_and_then_all_run_once(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    ids = twtasks.work.options(queue=queue).send_many(
        [{"n": i, "ledger": str(ledger)} for i in range(500)])
    assert len(set(ids)) == 500
    assert queue_counts(queue)[0] == 500
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: len(ledger.count("end")) == 500, 60, what="500 tasks done")
        assert pool.stop() == 0
    finally:
        pool.kill()
    assert set(ledger.count("end").values()) == {1}
    assert queue_counts(queue) == (0, 0)


def test_a_child_killed_mid_task_has_its_message_redelivered_and_is_replaced(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: len(pool.children()) == 2, 20, what="two children")
        send_work(queue, ledger, 7, sleep_s=3.0)
        wait_until(lambda: ledger.count("start")[7] == 1, 20, what="task 7 started")
        victim = next(pid for e, n, pid in ledger.events() if e == "start" and n == 7)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: ledger.count("end")[7] == 1, 30, what="task 7 to run again and end")
        starts = [pid for e, n, pid in ledger.events() if e == "start" and n == 7]
        assert len(starts) == 2 and starts[1] != victim
        wait_until(lambda: len(pool.children()) == 2 and victim not in pool.children(), 20,
                   what="a replacement child")
        assert pool.stop() == 0
    finally:
        pool.kill()
    assert queue_counts(queue) == (0, 0)


def test_a_second_worker_gets_a_fair_share_of_long_tasks_at_once(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    twtasks.work.options(queue=queue).send_many(
        [{"n": i, "ledger": str(ledger), "sleep_s": 0.5} for i in range(20)])
    first = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "a.log")
    second = None
    try:
        wait_until(lambda: len(ledger.count("end")) >= 1, 30, what="the first worker busy")
        second = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "b.log")
        wait_until(lambda: consumer_count(queue) == 2, 30, what="the second consumer")
        started_before = len(ledger.count("start"))
        wait_until(lambda: len(ledger.count("end")) == 20, 60, what="all 20 done")
        assert first.stop() == 0 and second.stop() == 0
    finally:
        first.kill()
        if second:
            second.kill()
    later = [pid for e, _, pid in ledger.events() if e == "start"][started_before:]
    shares = Counter(later)
    assert len(shares) == 2, shares
    # Fair: with a prefetch of one per slot, the joiner takes about half of what is left,
    # at once (nothing was hoarded by the first worker).
    assert min(shares.values()) >= len(later) // 2 - 2, shares


def test_sigterm_finishes_running_tasks_hands_back_the_rest_and_exits_zero(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    twtasks.work.options(queue=queue).send_many(
        [{"n": i, "ledger": str(ledger), "sleep_s": 1.0} for i in range(12)])
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=2, extra=["--prefetch", "4"],
                log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: len(ledger.count("start")) >= 2, 30, what="two tasks running")
        pool.signal(signal.SIGTERM)
        assert pool.proc.wait(30) == 0
    finally:
        pool.kill()
    started, ended = ledger.count("start"), ledger.count("end")
    assert started == ended, "every task that started also finished"
    assert set(ended.values()) == {1}
    assert queue_counts(queue)[0] == 12 - len(ended), "the rest was handed back"
    rest = Pool(MODULE, [queue], rabbit_url, concurrency=2, log_path=tmp_path / "r.log")
    try:
        wait_until(lambda: len(ledger.count("end")) == 12, 60, what="the rest done")
        assert rest.stop() == 0
    finally:
        rest.kill()
    assert set(ledger.count("end").values()) == {1}, "no task ran twice"


def test_a_second_sigterm_exits_at_once_and_the_broker_redelivers(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    send_work(queue, ledger, 1, sleep_s=20.0)
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: ledger.count("start")[1] == 1, 30, what="task started")
        pool.signal(signal.SIGTERM)
        time.sleep(0.3)  # let the first signal reach the child before the second
        pool.signal(signal.SIGTERM)
        assert pool.proc.wait(10) != 0
    finally:
        pool.kill()
    wait_until(lambda: queue_counts(queue)[0] == 1, 20, what="the open message back in queue")


def test_heartbeats_flow_while_a_task_runs_for_many_heartbeat_intervals(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    send_work(queue, ledger, 1, sleep_s=8.0)
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log",
                env={"TASKWARREN_HEARTBEAT_S": "2"})
    try:
        wait_until(lambda: ledger.count("end")[1] == 1, 40, what="the long task to end")
        wait_until(lambda: queue_counts(queue) == (0, 1), 10, what="its ack")
        assert pool.stop() == 0
    finally:
        pool.kill()
    assert ledger.count("start")[1] == 1, "the connection never dropped: no redelivery"
    assert "link_lost" not in pool.log_text()


def test_a_failing_task_lands_in_the_dead_letter_queue_with_its_error(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    task_id = send_work(queue, ledger, 3, mode="raise")
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: queue_counts(queue + ".dead")[0] == 1, 30, what="a dead letter")
        assert pool.stop() == 0
    finally:
        pool.kill()
    (dead,) = get_all(queue + ".dead")
    headers = dead.properties["application_headers"]
    assert dead.properties["message_id"] == task_id
    assert headers[H_ERROR_TYPE] == "ValueError"
    assert headers[H_ERROR] == "task 3 failed on purpose"
    assert "Traceback" in headers[H_TRACEBACK]
    assert queue_counts(queue)[0] == 0


def test_bad_messages_go_to_the_dead_letter_queue_with_a_reason_and_the_worker_goes_on(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    import amqp

    name = "tests.integration.twtasks.work"
    good = {"tw-task": name, "tw-attempt": 0}
    bad = {
        "not-json": (b"{nope", "application/json", good),
        "unknown-task": (b"{}", "application/json", {"tw-task": "no.such.task"}),
        "bad-args": (b'{"n": "x", "ledger": "/dev/null"}', "application/json", good),
        "pickle": (b"\x80\x04K\x01.", "application/x-python-serialize", good),
        "oversized": (b'{"n": 1, "ledger": "' + b"x" * 2_000_000 + b'"}',
                      "application/json", good),
    }
    twtasks.work.options(queue=queue).send(0, str(ledger))  # declares the queue
    get_all(queue)
    with connection(rabbit_url) as conn:
        ch = conn.channel()
        for mid, (body, ctype, headers) in bad.items():
            ch.basic_publish_confirm(amqp.Message(body, content_type=ctype, message_id=mid,
                                                  application_headers=headers, delivery_mode=2),
                                     exchange="taskwarren", routing_key=queue)
    send_work(queue, ledger, 99)
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: ledger.count("end")[99] == 1, 30, what="the good task after them")
        wait_until(lambda: queue_counts(queue + ".dead")[0] == 5, 10, what="5 dead letters")
        assert pool.stop() == 0
    finally:
        pool.kill()
    reasons = {m.properties["message_id"]: m.properties["application_headers"][H_REASON]
               for m in get_all(queue + ".dead")}
    assert "JSON" in reasons["not-json"]
    assert "no.such.task" in reasons["unknown-task"]
    assert "n:" in reasons["bad-args"]
    assert "application/x-python-serialize" in reasons["pickle"]
    assert "exceeds the limit" in reasons["oversized"]


def test_a_message_that_kills_its_process_every_time_is_parked_with_a_reason(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    poison = send_work(queue, ledger, 666, mode="exit")
    twtasks.work.options(queue=queue).send_many(
        [{"n": i, "ledger": str(ledger)} for i in range(10)])
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=2, log_path=tmp_path / "w.log",
                extra=["--prefetch", "10"])
    try:
        wait_until(lambda: queue_counts(queue + ".dead")[0] == 1, 60, what="poison parked")
        wait_until(lambda: len(ledger.count("end")) == 10, 30, what="innocent tasks done")
        assert pool.stop() == 0
    finally:
        pool.kill()
    (dead,) = get_all(queue + ".dead")
    assert dead.properties["message_id"] == poison
    assert "killed its worker process 3 times" in dead.properties["application_headers"][H_REASON]
    assert ledger.count("start")[666] == 3


def test_send_is_safe_from_many_threads_and_after_fork(
    queue: str, ledger: Ledger, rabbit_url: str
) -> None:
    ids: list[str] = []
    lock = threading.Lock()

    def sender(base: int) -> None:
        for i in range(50):
            task_id = send_work(queue, ledger, base + i)
            with lock:
                ids.append(task_id)

    threads = [threading.Thread(target=sender, args=(k * 1000,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pid = os.fork()
    if pid == 0:  # a pre-fork server's child: its own connection, never the parent's
        try:
            send_work(queue, ledger, 99_999)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    send_work(queue, ledger, 100_000)  # the parent's connection still works
    assert len(set(ids)) == 400
    assert queue_counts(queue)[0] == 402


def test_an_unroutable_send_is_an_error_not_a_silent_drop(queue: str, rabbit_url: str) -> None:
    app = Warren(url=rabbit_url)

    @app.task(queue=queue)
    def noop(n: int) -> None: ...

    noop.send(1)
    with connection(rabbit_url) as conn:
        conn.channel().queue_delete(queue)
    with pytest.raises(UnroutableError, match="unroutable"):
        noop.send(2)
    app.close()


def test_an_idle_producer_past_the_heartbeat_timeout_still_sends(
    queue: str, rabbit_url: str
) -> None:
    app = Warren(url=rabbit_url, heartbeat_s=1)

    @app.task(queue=queue)
    def noop(n: int) -> None: ...

    noop.send(1)
    time.sleep(4)  # idle on purpose: longer than two heartbeat intervals
    noop.send(2)
    assert queue_counts(queue)[0] == 2
    app.close()


def test_a_sigterm_to_the_whole_process_group_still_lets_running_tasks_finish(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    twtasks.work.options(queue=queue).send_many(
        [{"n": i, "ledger": str(ledger), "sleep_s": 1.5} for i in range(2)])
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: len(ledger.count("start")) == 2, 30, what="both tasks running")
        os.killpg(pool.pid, signal.SIGTERM)  # as systemd's KillMode=control-group does
        assert pool.proc.wait(30) == 0
    finally:
        pool.kill()
    assert ledger.count("end") == {0: 1, 1: 1}
    assert "child_killed_by_message" not in pool.log_text()
    assert queue_counts(queue)[0] == 0


def test_children_stop_when_their_supervisor_is_killed(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: consumer_count(queue) == 2, 30, what="two consumers")
        children = pool.children()
        os.kill(pool.pid, signal.SIGKILL)
        wait_until(lambda: consumer_count(queue) == 0, 20, what="the orphans to stop")
        wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in children), 20,
                   what="the children gone")
    finally:
        pool.kill()


def test_a_channel_error_does_not_leave_the_producer_without_confirms(
    queue: str, rabbit_url: str
) -> None:
    app = Warren(url=rabbit_url, publish_timeout_s=5)

    @app.task(queue=queue)
    def noop(n: int) -> None: ...

    noop.send(1)
    link = app.broker._link  # type: ignore[attr-defined]
    with pytest.raises(Exception):  # noqa: B017 - any channel error will do
        link.channel.queue_declare("no-such-queue-" + queue, passive=True)
    started = time.monotonic()
    noop.send(2)  # on a fresh confirm channel, not the one py-amqp reopened
    assert time.monotonic() - started < 3, "no wait for a confirm that can never come"
    assert queue_counts(queue)[0] == 2
    app.close()
