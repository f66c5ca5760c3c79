"""Dramatiq: the module its worker loads (``dramatiq dramatiq_app``) and a producer.

Defaults (late acks, its own queue declaration: classic, with ``.DQ``/``.XQ``
companions), retries off so that a failure shows instead of repeating. The producer
waits for each publish's confirm (``confirm_delivery``).
"""

from __future__ import annotations

import dramatiq
import marks
from dramatiq.brokers.rabbitmq import RabbitmqBroker

QUEUE = marks.queue_name("twbench_dramatiq_classic")

broker = RabbitmqBroker(url=marks.url(), confirm_delivery=True)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, actor_name="bench_noop", max_retries=0)
def noop(sent: float = 0.0) -> None:
    """The benchmark body."""
    marks.started(sent)


class Producer:
    """Sends ``bench_noop`` one confirmed publish at a time."""

    send_many = None  # no batched send that waits for confirms

    def send(self, sent: float) -> None:
        """One confirmed publish."""
        noop.send(sent)

    def fill(self, n: int) -> None:
        """Queue ``n`` tasks (untimed)."""
        for _ in range(n):
            noop.send(0.0)

    def close(self) -> None:
        """Close the broker's connections."""
        broker.close()
