"""Odd tasks and hostile messages must never cost a message or a worker (issue 10)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import amqp
import pytest

from taskwarren.message import H_ERROR_TYPE, H_REASON
from taskwarren.topology import MAX_DELAY_S
from tests.integration import twworker
from tests.support.rabbit import connection, consumer_count, get_all, queue_counts
from tests.support.workers import Ledger, Pool, free_port, scrape, wait_until

pytestmark = pytest.mark.rabbitmq
MODULE = "tests.integration.twworker"


def publish_raw(url: str, queue: str, messages: list[tuple[str, bytes, dict[str, Any]]]) -> None:
    """Publish (message id, body, headers) to ``queue`` as a hostile client would."""
    with connection(url) as conn:
        ch = conn.channel()
        for message_id, body, headers in messages:
            # Confirmed one by one: closing right after unconfirmed publishes may drop some.
            ch.basic_publish_confirm(amqp.Message(body, content_type="application/json",
                                                  message_id=message_id,
                                                  application_headers=headers, delivery_mode=2),
                                     exchange="taskwarren", routing_key=queue)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_task_past_its_soft_time_limit_leaves_the_child_idle_not_spinning(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        twworker.outlives_soft_limit.options(queue=queue).send(1, str(ledger), run_s=2.0)
        wait_until(lambda: ledger.count("soft")[1] == 1, 20, what="the soft limit")
        (child,) = {pid for e, _, pid in ledger.events() if e == "soft"}
        before = cpu_seconds(child)
        wait_until(lambda: ledger.count("end")[1] == 1, 20, what="the task to end")
        used = cpu_seconds(child) - before
        # Two seconds of a task that sleeps in 10 ms steps; a spinning I/O loop burns
        # (nearly) all of them.
        assert used < 0.5, f"the child used {used:.2f}s of CPU in 2s of a sleeping task"
        assert pool.stop() == 0
    finally:
        pool.kill()


def test_a_retry_delay_out_of_range_is_dead_lettered_with_the_reason_and_the_child_lives(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    bad = {1: str(MAX_DELAY_S + 3600), 2: "nan", 3: "inf", 4: "-5"}
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        (child,) = pool.children()
        ids = {n: twworker.retries_after.options(queue=queue).send(n, str(ledger), delay)
               for n, delay in bad.items()}
        wait_until(lambda: queue_counts(queue + ".dead")[0] == len(bad), 20,
                   what="every bad retry dead-lettered")
        twworker.retries_after.options(queue=queue).send(9, str(ledger), "0")
        wait_until(lambda: ledger.count("end")[9] == 1, 20, what="a good retry after them")
        assert pool.children() == [child], "the child never died"
        assert pool.stop() == 0
    finally:
        pool.kill()
    dead = {m.properties["message_id"]: m.properties["application_headers"]
            for m in get_all(queue + ".dead")}
    assert set(dead) == set(ids.values())
    for n in bad:
        headers = dead[ids[n]]
        assert headers[H_ERROR_TYPE] == "InvalidRetryDelay"
        assert "retry delay" in headers[H_REASON]
    assert str(MAX_DELAY_S) in dead[ids[1]][H_REASON]
    assert all(ledger.count("start")[n] == 1 for n in bad), "none was run again"


def test_metrics_label_only_registered_tasks_and_count_the_rest_as_unknown(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    port = free_port()
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log",
                extra=["--metrics-port", str(port)])
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        names = [f"random-{uuid.uuid4().hex}" for _ in range(20)]
        publish_raw(rabbit_url, queue, [(f"m{i}", b"{}", {"tw-task": name, "tw-attempt": 0})
                                        for i, name in enumerate(names)])
        twworker.retries_after.options(queue=queue).send(1, str(ledger), "0")
        wait_until(lambda: queue_counts(queue + ".dead")[0] == 20, 30, what="20 rejected")
        wait_until(lambda: ledger.count("end")[1] == 1, 30, what="the registered task")
        known = "tests.integration.twworker.retries_after"
        unknown = f'taskwarren_dead_lettered_total{{queue="{queue}",task="unknown"}} 20.0'
        wait_until(lambda: unknown in scrape(port), 20, what="the rejects counted as unknown")
        text = scrape(port)
        assert not [name for name in names if name in text], "no message's name is a label"
        assert f'task="{known}"' in text
        assert pool.stop() == 0
    finally:
        pool.kill()


def test_dead_letters_of_huge_task_names_and_bodies_fit_with_a_bounded_reason(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    known = "tests.integration.twworker.retries_after"
    extra = {f"k{i:05}": i for i in range(20_000)}
    hostile = [
        ("name-66k", b"{}", {"tw-task": "t" * 66_000, "tw-attempt": 0}),
        # As large as the broker takes in: its dead letter must still fit.
        ("name-128k", b"{}", {"tw-task": "u" * 128_000, "tw-attempt": 0}),
        ("keys-20k", json.dumps({"n": 1, "ledger": str(ledger), "delay": "0", **extra}
                                ).encode(), {"tw-task": known, "tw-attempt": 0}),
    ]
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        (child,) = pool.children()
        publish_raw(rabbit_url, queue, hostile)
        twworker.retries_after.options(queue=queue).send(2, str(ledger), "0")
        wait_until(lambda: ledger.count("end")[2] == 1, 30, what="the good task after them")
        wait_until(lambda: queue_counts(queue + ".dead")[0] == 3, 10, what="3 dead letters")
        assert pool.children() == [child], "the child never lost its link or died"
        assert pool.stop() == 0
    finally:
        pool.kill()
    dead = {m.properties["message_id"]: m.properties["application_headers"]
            for m in get_all(queue + ".dead")}
    assert set(dead) == {"name-66k", "name-128k", "keys-20k"}
    for headers in dead.values():
        assert len(headers[H_REASON]) <= 2100
        assert len(headers["tw-error"]) <= 2100
    assert dead["name-66k"][H_REASON].startswith("no task named 'tttt")
    assert dead["name-66k"]["tw-task"] == "t" * 66_000, "a header that fits is kept whole"
    assert "k00000" in dead["keys-20k"][H_REASON]
    assert dead["name-128k"]["tw-clipped"] == "tw-task"
    assert dead["name-128k"]["tw-task"].startswith("uuuu")
    assert "link_lost" not in pool.log_text()
    assert max(len(line) for line in pool.log_text().splitlines()) < 20_000


def test_a_task_raising_systemexit_or_the_like_is_dead_lettered_and_the_thread_goes_on(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log",
                extra=["--threads", "1"])
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        (child,) = pool.children()
        kinds = {1: "exit", 2: "interrupt", 3: "cancelled"}
        ids = {twworker.raises_base.options(queue=queue).send(n, str(ledger), kind): kind
               for n, kind in kinds.items()}
        twworker.retries_after.options(queue=queue).send(9, str(ledger), "0")
        wait_until(lambda: ledger.count("end")[9] == 1, 20, what="the task after them to run")
        wait_until(lambda: queue_counts(queue + ".dead")[0] == 3, 10, what="3 dead letters")
        assert pool.children() == [child]
        assert pool.stop() == 0
    finally:
        pool.kill()
    types = {m.properties["message_id"]: m.properties["application_headers"][H_ERROR_TYPE]
             for m in get_all(queue + ".dead")}
    assert types == {i: {"exit": "SystemExit", "interrupt": "KeyboardInterrupt",
                         "cancelled": "CancelledError"}[kind] for i, kind in ids.items()}
    assert all(ledger.count("start")[n] == 1 for n in kinds), "each ran once"


def test_a_soft_time_limit_landing_after_the_task_returned_costs_nothing(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log",
                extra=["--threads", "1"])
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        (child,) = pool.children()
        twworker.soft_limit_after_return.options(queue=queue).send(1, str(ledger))
        twworker.retries_after.options(queue=queue).send(2, str(ledger), "0")
        wait_until(lambda: ledger.count("end")[2] == 1, 20, what="the next task to run")
        wait_until(lambda: queue_counts(queue) == (0, 1), 10, what="every delivery settled")
        assert pool.children() == [child]
        assert pool.stop() == 0
    finally:
        pool.kill()
    assert ledger.count("start")[1] == 1, "the task that returned is done, not run again"
    assert queue_counts(queue + ".dead")[0] == 0


def test_a_child_whose_executor_thread_dies_is_replaced_and_its_work_goes_on(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    # Two threads: the one that breaks waits on its inbox for its next delivery (with
    # one, it keeps the consumer between tasks, and a failure while it polls is the I/O
    # thread's: tests/unit/worker/test_turns.py).
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log",
                extra=["--threads", "2"])
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        (child,) = pool.children()
        twworker.breaks_its_executor.options(queue=queue).send(1, str(ledger))
        wait_until(lambda: ledger.count("end")[1] == 1, 20, what="the breaking task")
        twworker.retries_after.options(queue=queue).send(2, str(ledger), "0")
        wait_until(lambda: ledger.count("end")[2] == 1, 30, what="the next task to run")
        assert child not in pool.children() and len(pool.children()) == 1, "replaced"
        assert pool.stop() == 0
    finally:
        pool.kill()
    assert "worker.executor_lost" in pool.log_text()
    assert queue_counts(queue + ".dead")[0] == 0


@pytest.mark.parametrize("how", ["io", "exit"])
def test_a_death_the_evidence_does_not_pin_on_a_message_parks_none(
    how: str, queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    """An I/O-thread error (``io``) is no running task's doing; a task that kills its
    child (``exit``) while another task runs beside it leaves no telling which one did.
    Three such deaths (the poison limit) park neither message."""
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log",
                extra=["--threads", "2", "--prefetch", "2"])
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        twworker.naps.options(queue=queue).send(1, str(ledger), sleep_s=1.5)
        twworker.ends_its_child.options(queue=queue).send(2, str(ledger), beside=1, times=3,
                                                          how=how, wait_s=2.0)
        # (At least once: a death just after task 1 ended may take its ack; it reruns.)
        wait_until(lambda: (ledger.count("end")[1] >= 1 and ledger.count("end")[2] == 1)
                   or queue_counts(queue + ".dead")[0], 90, what="both tasks to end")
        assert queue_counts(queue + ".dead")[0] == 0, "neither message parked as poison"
        assert ledger.count("start")[2] == 4, "three deaths, then the fourth run ends"
        assert pool.stop() == 0
    finally:
        pool.kill()


def test_a_killer_that_always_dies_beside_another_task_runs_alone_and_is_parked(
    queue: str, ledger: Ledger, rabbit_url: str, tmp_path: Path
) -> None:
    pool = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log",
                extra=["--threads", "2", "--prefetch", "2"])
    try:
        wait_until(lambda: consumer_count(queue) == 1, 20, what="the consumer")
        twworker.naps.options(queue=queue).send(1, str(ledger), sleep_s=1.5)
        killer = twworker.ends_its_child.options(queue=queue).send(
            2, str(ledger), beside=1, times=1000, how="exit", wait_s=1.0)
        wait_until(lambda: queue_counts(queue + ".dead")[0] >= 1, 90, what="a parked message")
        # At least once: a death right after the innocent task ended may take its ack
        # (acks are sent in batches) and run it again.
        wait_until(lambda: ledger.count("end")[1] >= 1, 20, what="the innocent task to end")
        assert pool.stop() == 0
    finally:
        pool.kill()
    (dead,) = get_all(queue + ".dead")
    assert dead.properties["message_id"] == killer
    assert "killed its worker process 3 times" in dead.properties["application_headers"][
        H_REASON]
    assert ledger.count("start")[2] == 4, "one death beside the other, three alone"
