"""Brokers move bytes between queues; they know queues and headers, never tasks."""

from __future__ import annotations

from taskwarren.brokers.base import (
    Ack,
    Action,
    Broker,
    Consumer,
    Delivery,
    QueueStats,
    Republish,
    Requeue,
)
from taskwarren.errors import ConfigurationError
from taskwarren.settings import Settings

__all__ = ["Ack", "Action", "Broker", "Consumer", "Delivery", "QueueStats", "Republish", "Requeue",
           "make_broker"]


def make_broker(settings: Settings) -> Broker:
    """The broker for ``settings.url``: RabbitMQ, embedded SQLite, or in-memory.

    Raises:
        ConfigurationError: an unsupported URL scheme.
    """
    scheme = settings.scheme
    if scheme in ("amqp", "amqps"):
        from taskwarren.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(settings)
    if scheme == "sqlite":
        from taskwarren.brokers.sqlite import SQLiteBroker

        return SQLiteBroker.from_url(settings.url, delivery_limit=settings.delivery_limit)
    if scheme == "memory":
        from taskwarren.brokers.memory import MemoryBroker

        return MemoryBroker(delivery_limit=settings.delivery_limit)
    raise ConfigurationError(
        f"unsupported broker URL scheme {scheme!r}: use amqp://, amqps://, sqlite:/// or memory://"
    )

