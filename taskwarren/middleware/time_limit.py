"""Time limits: the ``time_limit``/``soft_time_limit`` options and what they ask of the broker.

The worker child enforces them (its I/O thread raises ``SoftTimeLimitExceeded`` in a
task past its soft limit, and settles, then replaces the process, past the hard one:
a thread cannot be killed). Here live the options and the consumer timeout they need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import structlog

from taskwarren.middleware.base import Middleware

if TYPE_CHECKING:
    from taskwarren.app import Warren

log = structlog.get_logger("taskwarren.worker")

#: Extra seconds a delivery may stay unacked beyond the longest hard time limit.
CONSUMER_TIMEOUT_MARGIN_S = 60.0


class TimeLimits(Middleware):
    """Owns ``time_limit`` (hard, seconds) and ``soft_time_limit`` (seconds after which
    ``SoftTimeLimitExceeded`` is raised in the task)."""

    options: ClassVar[frozenset[str]] = frozenset({"time_limit", "soft_time_limit"})


def consumer_timeout_s(app: Warren) -> float | None:
    """The per-consumer delivery timeout to ask for, if the broker's default is too short.

    A task may run up to its hard time limit before its delivery is acked; the broker
    must not give up on the delivery before that. ``None`` keeps the broker's setting.
    """
    limits = [t.task_options.time_limit_s for t in app.tasks.values()]
    longest = max((limit for limit in limits if limit is not None), default=0.0)
    wanted = longest + CONSUMER_TIMEOUT_MARGIN_S
    return wanted if longest and wanted > app.settings.consumer_timeout_s else None


def warn_about_long_tasks(app: Warren) -> None:
    """Warn about tasks that may outlive the broker's consumer timeout."""
    limit = app.settings.consumer_timeout_s
    for task in app.tasks.values():
        time_limit = task.task_options.time_limit_s
        if time_limit is not None and time_limit + CONSUMER_TIMEOUT_MARGIN_S > limit:
            log.warning(
                "task.time_limit_above_consumer_timeout", task=task.name,
                time_limit_s=time_limit, consumer_timeout_s=limit,
                advice="taskwarren asks for a per-consumer x-consumer-timeout (RabbitMQ "
                       "3.12+); on older brokers raise consumer_timeout in rabbitmq.conf "
                       "and set TASKWARREN_CONSUMER_TIMEOUT_S to match",
            )
