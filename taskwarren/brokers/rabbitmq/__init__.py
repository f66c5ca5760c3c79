"""RabbitMQ through py-amqp; the only package that imports ``amqp``.

One concept per module, imported in this order (each only from those above it):

- :mod:`.errors`: py-amqp's errors mapped to ours, the one place that names them.
- :mod:`.frames`: corked writes and the frame handler that survives bad headers.
- :mod:`.link`: one connection and confirm channel, every wait bounded.
- :mod:`.topology`: declaring (and checking) exchanges, queues and bindings.
- :mod:`.publisher`: pipelined confirmed publishing on a link.
- :mod:`.dead_letters`: browsing, replaying and purging dead letters.
- :mod:`.verdicts`: deliveries the consumer dead-letters itself (unreadable, overdue).
- :mod:`.outbound`: a consumer's publishing connection.
- :mod:`.consumer`: :class:`RabbitMQConsumer`.
- :mod:`.broker`: :class:`RabbitMQBroker`.
"""

from __future__ import annotations

from taskwarren.brokers.rabbitmq.broker import RabbitMQBroker
from taskwarren.brokers.rabbitmq.consumer import RabbitMQConsumer
from taskwarren.brokers.rabbitmq.frames import H_UNREADABLE, corked, tolerant_frames
from taskwarren.brokers.rabbitmq.link import RECONNECT_MAX_S
from taskwarren.urls import parse_urls

__all__ = [
    "H_UNREADABLE", "RECONNECT_MAX_S", "RabbitMQBroker", "RabbitMQConsumer", "corked",
    "parse_urls", "tolerant_frames",
]
