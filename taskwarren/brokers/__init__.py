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

__all__ = ["Ack", "Action", "Broker", "Consumer", "Delivery", "QueueStats", "Republish", "Requeue"]
