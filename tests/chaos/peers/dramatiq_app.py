"""The Dramatiq actor the comparison runs: RabbitMQ broker with publisher confirms.

``dramatiq tests.chaos.peers.dramatiq_app -p 2 -t 1`` with ``PEER_URL`` set.
"""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from tests.chaos.peers.ledger import record as _record

QUEUE = "chaos_peer_dramatiq"

broker = RabbitmqBroker(url=os.environ.get("PEER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
                        confirm_delivery=True)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def record(n: int, ledger: str, sleep_s: float = 0.0) -> None:
    _record(n, ledger, sleep_s)
