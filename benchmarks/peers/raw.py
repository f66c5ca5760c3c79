"""Raw py-amqp: the floor a Python AMQP client sets on this broker.

Worker: ``python raw.py PROCS PREFETCH`` forks PROCS consumers, each with its own
connection, ``basic_qos(prefetch)`` and late acks sent with ``multiple=True`` every
:data:`ACK_EVERY` deliveries or as soon as the socket goes quiet. The body is JSON
``{"sent": float}``, the same as the task argument the other systems carry.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
import marks

#: Deliveries acknowledged by one ``multiple=True`` ack at most.
ACK_EVERY = 16
#: Confirms in flight at most in :meth:`Producer.send_many`.
WINDOW = 1000


def connect(url: str) -> amqp.Connection:
    """An open py-amqp connection to ``url``."""
    parts = urlsplit(url)
    conn = amqp.Connection(host=f"{parts.hostname}:{parts.port or 5672}",
                           userid=unquote(parts.username or "guest"),
                           password=unquote(parts.password or "guest"),
                           virtual_host=unquote(parts.path[1:] or "/"), heartbeat=0)
    conn.connect()
    return conn


def declare(channel: Any, queue: str, qtype: str) -> None:
    """Declare the benchmark queue, durable, of type ``qtype``."""
    channel.queue_declare(queue, durable=True, auto_delete=False,
                          arguments={"x-queue-type": qtype})


class Producer:
    """Publishes persistent messages to the default exchange, with confirms."""

    def __init__(self) -> None:
        self.queue = queue = marks.queue_name("twbench_raw_classic")
        self.conn = connect(marks.url())
        self.ch = self.conn.channel()
        declare(self.ch, queue, marks.queue_type())
        self.ch.confirm_select()
        # One channel, one queue: the broker confirms in publishing order, so the
        # highest tag confirmed says how many are.
        self.published = self.confirmed = 0
        self.ch.events["basic_ack"].add(self._acked)

    def _acked(self, tag: int, multiple: bool) -> None:
        self.confirmed = max(self.confirmed, tag)

    def _publish(self, sent: float) -> None:
        msg = amqp.Message(json.dumps({"sent": sent}), delivery_mode=2,
                           content_type="application/json")
        self.ch.basic_publish(msg, exchange="", routing_key=self.queue)
        self.published += 1

    def _wait(self, below: int) -> None:
        while self.published - self.confirmed > below:
            self.conn.drain_events(timeout=10)

    def send(self, sent: float) -> None:
        """Publish one message and wait for its confirm."""
        self._publish(sent)
        self._wait(0)

    def send_many(self, n: int) -> None:
        """Publish ``n`` messages with a sliding window of confirms."""
        for _ in range(n):
            self._publish(0.0)
            if self.published - self.confirmed >= WINDOW:
                self._wait(WINDOW // 2)
        self._wait(0)

    fill = send_many

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def consume(queue: str, prefetch: int, url: str) -> None:
    """One consumer process: run the body, ack late, until SIGTERM."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    conn = connect(url)
    ch = conn.channel()
    ch.basic_qos(0, prefetch, False)
    pending = [0]  # delivery tag of the last unacked delivery, 0 if none
    count = [0]

    def on_message(message: amqp.Message) -> None:
        marks.started(json.loads(message.body)["sent"])
        pending[0] = message.delivery_tag
        count[0] += 1
        if count[0] % ACK_EVERY == 0:
            ch.basic_ack(pending[0], multiple=True)
            pending[0] = 0

    ch.basic_consume(queue, callback=on_message)
    while not stop:
        try:
            conn.drain_events(timeout=0.01 if pending[0] else 0.5)
        except TimeoutError:
            if pending[0]:
                ch.basic_ack(pending[0], multiple=True)
                pending[0] = 0
        except InterruptedError:
            continue


def main() -> None:
    """``raw.py PROCS PREFETCH``: fork the consumers and wait for them."""
    procs, prefetch = int(sys.argv[1]), int(sys.argv[2])
    queue, url = marks.queue_name("twbench_raw_classic"), marks.url()
    children = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                consume(queue, prefetch, url)
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    for child in children:
        while True:
            try:
                os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break


if __name__ == "__main__":
    main()
