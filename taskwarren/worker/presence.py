"""A worker child's presence: about once a second it says it is alive (``taskwarren workers``)."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Sequence

import structlog

from taskwarren.brokers.base import Consumer
from taskwarren.brokers.capabilities import Announcer, require
from taskwarren.errors import NotSupportedError, TaskwarrenError
from taskwarren.message import MAX_ECHO_CHARS, clip

log = structlog.get_logger("taskwarren.worker")

#: Seconds between two presence announcements of a child.
ANNOUNCE_INTERVAL_S = 1.0


class Presence:
    """Announces one child through its consumer, when the broker can.

    Args:
        index: the child's slot in the pool.
        queues: the queues it consumes.
        threads: its executor threads.
        in_flight: how many deliveries it is running now.
        async_concurrency: how many async tasks it runs at once (0: none).
    """

    def __init__(self, index: int, queues: Sequence[str], threads: int,
                 in_flight: Callable[[], int], async_concurrency: int = 0) -> None:
        self.index = index
        self.queues = list(queues)
        self.threads = threads
        self.in_flight = in_flight
        self.async_concurrency = async_concurrency
        self._next = 0.0
        self._failing = False
        self._started_at = time.time()

    def announce(self, consumer: Consumer) -> None:
        """Say that this child is alive, if a second has passed since it last did."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + ANNOUNCE_INTERVAL_S
        info = {
            "host": socket.gethostname(), "pool_pid": os.getppid(), "pid": os.getpid(),
            "child": self.index, "queues": self.queues, "in_flight": self.in_flight(),
            "started_at": self._started_at, "threads": self.threads,
            "async_concurrency": self.async_concurrency,
        }
        try:
            require(consumer, Announcer, "presence").announce(info)
        except NotSupportedError as exc:
            log.info("worker.presence_unsupported", error=clip(str(exc), MAX_ECHO_CHARS))
            self._next = math.inf  # this broker never will: stop asking
        except TaskwarrenError as exc:
            # Transient (a lost link, a blocked broker): try again next interval, and say
            # so once per outage rather than once a second.
            if not self._failing:
                log.warning("worker.presence_failed", error=clip(str(exc), MAX_ECHO_CHARS),
                            error_type=type(exc).__name__)
            self._failing = True
        else:
            self._failing = False
