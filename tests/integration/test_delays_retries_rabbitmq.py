"""Delays, retries, dead letters you can replay, and time limits on the real RabbitMQ."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskwarren.message import H_ATTEMPT, H_ERROR_TYPE, H_REASON
from tests.integration import twtasks
from tests.support.rabbit import consumer_count, current_release, get_all, queue_counts
from tests.support.workers import ROOT, Ledger, Pool, wait_until

pytestmark = pytest.mark.rabbitmq
MODULE = "tests.integration.twtasks"


def cli(*args: str, url: str) -> str:
    out = subprocess.run([sys.executable, "-m", "taskwarren", "--log-format", "json", *args,
                          "--url", url], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def pool(queue: str, rabbit_url: str, tmp_path: Path) -> Iterator[Pool]:
    p = Pool(MODULE, [queue], rabbit_url, concurrency=2, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: consumer_count(queue) == 2, 20, what="two consumers")
        yield p
    finally:
        p.kill()


def test_delayed_tasks_run_no_earlier_than_their_delay_and_within_a_second_after(
    queue: str, ledger: Ledger, pool: Pool
) -> None:
    sent = {}
    for n, delay in enumerate([1, 2, 3, 1, 2]):
        sent[n] = (time.time(), delay)
        twtasks.work.options(queue=queue, delay=delay).send(n, str(ledger))
    wait_until(lambda: len(ledger.count("end")) == 5, 20, what="5 delayed tasks")
    for n, (sent_at, delay) in sent.items():
        lateness = ledger.times("start", n)[0] - (sent_at + delay)
        assert -0.05 <= lateness < 1.0, f"task {n} (delay {delay}s) lateness {lateness:.3f}s"


def test_a_long_delay_never_blocks_a_short_one_or_an_undelayed_one(
    queue: str, ledger: Ledger, pool: Pool
) -> None:
    twtasks.work.options(queue=queue, delay=3600).send(1, str(ledger))
    twtasks.work.options(queue=queue, delay=1).send(2, str(ledger))
    t0 = time.time()
    twtasks.work.options(queue=queue).send(3, str(ledger))
    wait_until(lambda: ledger.count("end")[2] == 1, 10, what="the short delay")
    assert ledger.times("start", 3)[0] - t0 < 0.5, "the undelayed task ran at once"
    assert ledger.count("start")[1] == 0, "the hour-long one still waits, on the broker"
    # Ready: none (the hour-long one waits in a delay level); consumers: the pool's two.
    # Waited for, not read once: a child that restarts its consumer with a new prefetch
    # is briefly counted twice (seen once on 4.0 as 3 consumers).
    wait_until(lambda: queue_counts(queue) == (0, 2), 5,
               what="nothing waiting in the queue, and the pool's two consumers")


def test_retries_go_through_the_delay_path_again_and_again_until_the_task_succeeds(
    queue: str, ledger: Ledger, pool: Pool
) -> None:
    task_id = twtasks.flaky.options(queue=queue).send(1, str(ledger), fail_times=3)
    wait_until(lambda: ledger.count("end")[1] == 1, 30, what="success on the 4th attempt")
    times = ledger.times("start", 1)
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.95 <= g < 2.5 for g in gaps), gaps
    assert queue_counts(queue + ".dead")[0] == 0
    assert task_id


def test_after_the_last_retry_the_task_is_dead_lettered_with_its_error(
    queue: str, ledger: Ledger, pool: Pool, rabbit_url: str
) -> None:
    task_id = twtasks.always_fails.options(queue=queue).send(7, str(ledger))
    wait_until(lambda: queue_counts(queue + ".dead")[0] == 1, 30, what="the dead letter")
    assert ledger.count("start")[7] == 3, "first attempt and two retries"
    listing = cli("dlq", "list", queue, url=rabbit_url)
    assert task_id in listing and "RuntimeError" in listing and "attempt failed" in listing
    assert queue_counts(queue + ".dead")[0] == 1, "listing consumed nothing"
    (dead,) = get_all(queue + ".dead", ack=False)
    headers = dead.properties["application_headers"]
    assert headers[H_ERROR_TYPE] == "RuntimeError"
    assert headers[H_ATTEMPT] == 2
    assert headers[H_REASON] == "retries exhausted"
    assert not any(k.startswith("x-death") or k.startswith("x-first-death") for k in headers)


def test_replay_sends_dead_letters_back_with_the_same_id_and_attempts_reset(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    ids = twtasks.work.options(queue=queue).send_many(
        [{"n": i, "ledger": str(ledger), "mode": "raise"} for i in range(3)])
    p = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "a.log")
    try:
        wait_until(lambda: queue_counts(queue + ".dead")[0] == 3, 30, what="3 dead letters")
        assert p.stop() == 0
    finally:
        p.kill()
    shown = cli("dlq", "show", queue, ids[0], url=rabbit_url)
    assert "Traceback" in shown and '"mode": "raise"' in shown
    assert cli("dlq", "replay", queue, "--id", ids[0], url=rabbit_url).strip() == "replayed 1"
    assert queue_counts(queue + ".dead")[0] == 2
    (replayed,) = get_all(queue, ack=False)
    assert replayed.properties["message_id"] == ids[0]
    assert replayed.properties["application_headers"][H_ATTEMPT] == 0
    assert H_ERROR_TYPE not in replayed.properties["application_headers"]
    assert cli("dlq", "purge", queue, "--id", ids[1], "--yes", url=rabbit_url).strip() == (
        "purged 1")
    assert queue_counts(queue + ".dead")[0] == 1
    assert queue_counts(queue)[0] == 1


def test_dlq_list_returns_ten_thousand_dead_letters_and_leaves_them_there(
    queue: str, rabbit_url: str
) -> None:
    from taskwarren import Warren
    from taskwarren.message import encode

    app = Warren(url=rabbit_url)
    app.declare([queue])
    envelopes = [encode("some.task", queue, b'{"n": %d}' % i) for i in range(10_000)]
    app.broker._publish(queue, envelopes, 0.0, dead=True)  # type: ignore[attr-defined]
    app.close()
    listing = cli("dlq", "list", queue, url=rabbit_url)
    assert len(listing.splitlines()) == 10_000
    assert queue_counts(queue + ".dead")[0] == 10_000


def test_a_task_over_its_hard_time_limit_is_dead_lettered_and_its_process_replaced(
    queue: str, ledger: Ledger, pool: Pool
) -> None:
    before = set(pool.children())
    task_id = twtasks.overruns.options(queue=queue).send(1, str(ledger), sleep_s=30)
    wait_until(lambda: queue_counts(queue + ".dead")[0] == 1, 20, what="the dead letter")
    (dead,) = get_all(queue + ".dead", ack=False)
    assert dead.properties["message_id"] == task_id
    assert dead.properties["application_headers"][H_ERROR_TYPE] == "TimeLimitExceeded"
    wait_until(lambda: len(pool.children()) == 2 and set(pool.children()) != before, 20,
               what="a replacement child: the pool keeps its size")
    twtasks.overruns.options(queue=queue).send(2, str(ledger), sleep_s=0)
    wait_until(lambda: ledger.count("end")[2] == 1, 20, what="the pool to keep working")
    assert ledger.count("end")[1] == 0


def test_a_task_can_catch_its_soft_time_limit(queue: str, ledger: Ledger, pool: Pool) -> None:
    twtasks.catches_soft_limit.options(queue=queue).send(1, str(ledger))
    wait_until(lambda: ledger.count("end")[1] == 1, 20, what="the task to finish")
    assert ledger.count("soft")[1] == 1
    soft_after = ledger.times("soft", 1)[0] - ledger.times("start", 1)[0]
    assert 0.4 < soft_after < 1.6


def test_time_limits_beyond_the_consumer_timeout_warn_and_ask_for_a_longer_one(
    queue: str, rabbit_url: str, tmp_path: Path
) -> None:
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log",
                env={"TASKWARREN_CONSUMER_TIMEOUT_S": "10"})
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        listing = current_release().ctl("list_consumers", "-q", "queue_name", "arguments")
        (line,) = [row for row in listing.splitlines() if row.startswith(queue + "\t")]
        # The longest hard limit among the tasks (10 s) plus a 60 s margin.
        assert "x-consumer-timeout" in line and "70000" in line
        assert pool.stop() == 0
    finally:
        pool.kill()
    assert "time_limit_above_consumer_timeout" in pool.log_text()
