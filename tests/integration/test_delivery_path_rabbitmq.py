"""The consumer's delivery path on the real RabbitMQ: odd headers, cut links, long tasks."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest

from taskwarren import Warren
from taskwarren.brokers.rabbitmq import H_UNREADABLE, parse_urls
from taskwarren.message import H_ERROR_TYPE, H_REASON
from taskwarren.topology import DEAD_LETTER_EXCHANGE, EXCHANGE
from tests.integration import twtasks
from tests.support.proxy import FaultyProxy
from tests.support.rabbit import (
    PrivateRabbit,
    Release,
    connection,
    consumer_count,
    get_all,
    queue_counts,
    unique_queue,
)
from tests.support.workers import ROOT, Ledger, Pool, wait_until

pytestmark = pytest.mark.rabbitmq
MODULE = "tests.integration.twtasks"


def cli(*args: str, url: str) -> str:
    out = subprocess.run([sys.executable, "-m", "taskwarren", "--log-format", "json", *args,
                          "--url", url], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _short(text: str) -> bytes:
    data = text.encode()
    return bytes([len(data)]) + data


def _long(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


class _RawProperties(amqp.Message):  # type: ignore[misc]
    """A message whose property bytes are given as they go on the wire."""

    def __init__(self, body: bytes, raw: bytes) -> None:
        super().__init__(body)
        self._raw = raw

    def _serialize_properties(self) -> bytes:
        return self._raw


def publish_unreadable(url: str, exchange: str, routing_key: str, queue: str,
                       ledger: Ledger) -> str:
    """Publish a ``work`` call whose headers hold a timestamp 2**40 s out (year 36812).

    py-amqp cannot turn that into a ``datetime``; nothing stops a publisher sending it.
    """
    message_id = str(uuid.uuid4())
    table = (_short("tw-task") + b"S" + _long(twtasks.work.name.encode())
             + _short("tw-queue") + b"S" + _long(queue.encode())
             + _short("sent-at") + b"T" + struct.pack(">Q", 2**40))
    flags = 0x8000 | 0x2000 | 0x1000 | 0x0080  # content type, headers, mode, message id
    raw = (struct.pack(">H", flags) + _short("application/json") + _long(table)
           + bytes([2]) + _short(message_id))
    body = json.dumps({"n": 1, "ledger": str(ledger)}).encode()
    with connection(url) as conn:
        ch = conn.channel()
        ch.basic_publish_confirm(_RawProperties(body, raw), exchange=exchange,
                                 routing_key=routing_key)
    return message_id


@pytest.fixture
def pool(queue: str, rabbit_url: str, tmp_path: Path) -> Iterator[Pool]:
    p = Pool(MODULE, [queue], rabbit_url, concurrency=1, log_path=tmp_path / "w.log")
    try:
        wait_until(lambda: consumer_count(queue, rabbit_url) == 1, 20, what="the consumer")
        yield p
    finally:
        p.kill()


def test_a_message_with_undecodable_headers_is_dead_lettered_and_the_worker_lives_on(
    queue: str, rabbit_url: str, ledger: Ledger, pool: Pool
) -> None:
    children = pool.children()
    bad = publish_unreadable(rabbit_url, EXCHANGE, queue, queue, ledger)
    twtasks.work.options(queue=queue).send(2, str(ledger))

    wait_until(lambda: queue_counts(queue + ".dead", rabbit_url)[0] == 1, 20,
               what="the unreadable message in the dead-letter queue")
    wait_until(lambda: ledger.count("end")[2] == 1, 20, what="the next task to run")
    assert pool.children() == children, "no child died"
    assert ledger.count("start")[1] == 0, "the unreadable message never ran"
    (dead,) = get_all(queue + ".dead", rabbit_url, ack=False)
    assert dead.properties["message_id"] == bad
    headers = dead.properties["application_headers"]
    assert headers[H_ERROR_TYPE] == "UnreadableHeaders"
    assert "could not be decoded" in headers[H_REASON] and "year" in headers[H_REASON]
    assert pool.stop() == 0


def test_a_message_whose_producer_set_the_unreadable_header_itself_runs_as_any_other(
    queue: str, rabbit_url: str, ledger: Ledger, pool: Pool
) -> None:
    # Only a decode failure the client saw marks a delivery unreadable: a header of
    # that name from a producer must not get a message dead-lettered without running.
    headers = {"tw-task": twtasks.work.name, "tw-queue": queue, "tw-attempt": 0,
               H_UNREADABLE: "forged " + "x" * 10_000}
    body = json.dumps({"n": 1, "ledger": str(ledger)}).encode()
    with connection(rabbit_url) as conn:
        ch = conn.channel()
        ch.basic_publish_confirm(amqp.Message(body, content_type="application/json",
                                              message_id=str(uuid.uuid4()), delivery_mode=2,
                                              application_headers=headers),
                                 exchange=EXCHANGE, routing_key=queue)

    wait_until(lambda: ledger.count("end")[1] == 1, 20, what="the message to run")
    assert queue_counts(queue + ".dead", rabbit_url)[0] == 0
    assert pool.stop() == 0


def test_dlq_list_shows_a_dead_letter_whose_headers_cannot_be_decoded(
    queue: str, rabbit_url: str, ledger: Ledger
) -> None:
    cli("topology", "apply", MODULE, "-Q", queue, url=rabbit_url)
    bad = publish_unreadable(rabbit_url, DEAD_LETTER_EXCHANGE, queue, queue, ledger)

    listing = cli("dlq", "list", queue, url=rabbit_url)

    assert bad in listing
    assert queue_counts(queue + ".dead", rabbit_url)[0] == 1


def test_deliveries_prefetched_before_a_cut_link_do_not_run_after_the_reconnect(
    queue: str, rabbit_url: str, ledger: Ledger, tmp_path: Path
) -> None:
    # Queued before the pool starts, the six arrive in one burst: the child has the
    # five quick ones in hand (prefetched, not started) while the slow one runs.
    task = twtasks.work.options(queue=queue)
    task.send(0, str(ledger), sleep_s=3)
    for n in range(1, 6):
        task.send(n, str(ledger))
    proxy = FaultyProxy(parse_urls(rabbit_url)[0].port)
    p = Pool(MODULE, [queue], proxy.url(), concurrency=1, log_path=tmp_path / "w.log",
             extra=["--threads", "1", "--prefetch", "10"])
    try:
        wait_until(lambda: ledger.count("start")[0] == 1, 20, what="the slow task to start")
        children = p.children()
        assert proxy.cut_all() >= 1
        # The broker takes all six back and gives them to the child's new connection.
        wait_until(lambda: proxy.accepted >= 2, 20, what="the reconnect")
        task.send(99, str(ledger))
        wait_until(lambda: ledger.count("end")[99] == 1, 30, what="the last task")
        assert p.children() == children, "the child reconnected; it did not die"
        assert p.stop() == 0
    finally:
        p.kill()
        proxy.close()
    ends = ledger.count("end")
    assert [ends[n] for n in range(1, 6)] == [1] * 5, "each prefetched task ran once"
    assert ends[0] == 2, "the slow task was running at the cut: it ran to its end, and again"


@pytest.fixture
def impatient_node(rabbit_release: Release, rabbit_url: str) -> Iterator[PrivateRabbit]:
    """A private node whose consumer timeout is 2 s, checked every second."""
    node = PrivateRabbit(release=rabbit_release)
    node.configure("consumer_timeout = 2000\n", channel_tick_interval=1000)
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.mark.slow
def test_a_task_that_outlives_the_consumer_timeout_is_dead_lettered_instead_of_looping(
    impatient_node: PrivateRabbit, ledger: Ledger, tmp_path: Path
) -> None:
    url = impatient_node.url
    queue = unique_queue()
    app = Warren(url=url)
    task = app.task(twtasks.work.fn, name=twtasks.work.name, queue=queue)
    task_id = task.send(1, str(ledger), sleep_s=5)  # no time limit; 5 s > 2 s
    p = Pool(MODULE, [queue], url, concurrency=1, log_path=tmp_path / "w.log",
             extra=["--threads", "2"])
    try:
        wait_until(lambda: queue_counts(queue + ".dead", url)[0] == 1, 60,
                   what="the overdue task in the dead-letter queue")
        task.send(2, str(ledger))
        wait_until(lambda: ledger.count("end")[2] == 1, 20, what="the pool to carry on")
        assert p.stop() == 0
    finally:
        p.kill()
        app.close()
    assert ledger.count("start")[1] == 2, "run, timed out, run again, timed out: no more"
    (dead,) = get_all(queue + ".dead", url)
    assert dead.properties["message_id"] == task_id
    headers = dead.properties["application_headers"]
    assert headers[H_ERROR_TYPE] == "ConsumerTimeout"
    assert "consumer timeout 2 times" in headers[H_REASON]
