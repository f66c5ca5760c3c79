"""Poison messages: a message that killed too many worker processes is dead-lettered.

The supervisor counts deaths against the message that was running (see
:mod:`taskwarren.worker.shared`, memory shared with the children); the child asks
:func:`poison_action` about each redelivered message before it runs it.
"""

from __future__ import annotations

import structlog

from taskwarren.brokers.base import Action, Delivery
from taskwarren.message import MAX_ECHO_CHARS, clip
from taskwarren.middleware.retries import dead_letter

log = structlog.get_logger("taskwarren.worker")


def poison_action(delivery: Delivery, kills: int, limit: int) -> Action | None:
    """Dead-letter ``delivery`` if it killed ``limit`` processes or more, else ``None``."""
    if kills < limit:
        return None
    reason = f"delivery limit: killed its worker process {kills} times (limit {limit})"
    log.error("message.poison", task_id=clip(delivery.envelope.message_id, MAX_ECHO_CHARS),
              task=clip(delivery.envelope.task, MAX_ECHO_CHARS), kills=kills)
    return dead_letter(delivery, "PoisonMessage", reason, reason=reason)
